//! Redaction of secrets written into a shell command line (an SSH exec
//! request) before it is recorded: `PGPASSWORD=...` and other assignments
//! to secret-named variables, `--password=...` and `--token VALUE` options,
//! MySQL's `-pSECRET`, `sshpass -p`, curl's `-u user:pass`, Authorization
//! headers, `password=` in connection strings and URLs with a password. The
//! secret is replaced by [`REDACTED`], as in statements; the rest stays.

use super::redact::REDACTED;

/// Variable names (upper-cased) that hold a secret when assigned.
const SECRET_VARS: &[&str] = &[
    "PASSWORD",
    "PASSWD",
    "PWD",
    "PASSPHRASE",
    "SECRET",
    "TOKEN",
    "API_KEY",
    "APIKEY",
    "ACCESS_KEY",
    "PRIVATE_KEY",
    "CREDENTIAL",
];
/// Option names (lower-cased, without dashes) that take a secret.
const SECRET_OPTIONS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "api-key",
    "api_key",
    "access-key",
    "private-key",
    "credential",
];

/// One word of the command line, by byte offsets into it.
#[derive(Clone, Copy, Debug)]
struct Word {
    start: usize,
    end: usize,
    /// The first word of a simple command (after `;`, `|`, `&`, `(` or a newline).
    first: bool,
}

/// `command` with its secrets replaced, or `None` when it holds none.
pub fn redact_command(command: &str) -> Option<String> {
    let mut spans = Vec::new();
    let words = words(command);
    let mut program = String::new();
    let mut after_assignments = true;
    for (i, w) in words.iter().enumerate() {
        let raw = command.get(w.start..w.end).unwrap_or_default();
        let (body_start, body) = unquoted(raw);
        let at = w.start + body_start;
        let value_end = w.end - closing_quote(raw);
        if w.first {
            program.clear();
            after_assignments = true;
        }
        // Assignments before the program (`PGPASSWORD=x psql`) and anywhere (`export`, `env`).
        if let Some(eq) = body.find('=')
            && is_name(body.get(..eq).unwrap_or_default())
        {
            let name = body.get(..eq).unwrap_or_default().to_ascii_uppercase();
            if SECRET_VARS.iter().any(|s| name.contains(s)) {
                spans.push((at + eq + 1, value_end));
            }
            continue;
        }
        if after_assignments {
            after_assignments = false;
            program = body.rsplit('/').next().unwrap_or_default().to_owned();
            continue;
        }
        let mysql = program.starts_with("mysql") || program.starts_with("mariadb");
        let next = words.get(i + 1).filter(|n| !n.first);
        if let Some(long) = body.strip_prefix("--") {
            let (name, value) = match long.find('=') {
                Some(eq) => (long.get(..eq).unwrap_or_default(), Some(eq)),
                None => (long, None),
            };
            let name = name.to_ascii_lowercase();
            let secret = SECRET_OPTIONS.iter().any(|s| name.contains(s)) || name == "pass";
            match value {
                Some(eq) if secret => spans.push((at + 2 + eq + 1, value_end)),
                Some(eq) if program == "curl" && name == "user" => {
                    user_pass(command, at + 2 + eq + 1, value_end, &mut spans);
                }
                // `psql --password` and `mysql --password` prompt; they take no value.
                None if secret && !(mysql || program == "psql") => push_word(command, next, &mut spans),
                None if program == "curl" && name == "user" => {
                    if let Some(n) = next {
                        user_pass(command, n.start, n.end, &mut spans);
                    }
                }
                _ => {}
            }
        } else if let Some(short) = body.strip_prefix('-') {
            match (program.as_str(), short) {
                (_, s) if mysql && s.len() > 1 && s.starts_with('p') => spans.push((at + 2, value_end)),
                ("sshpass", "p") => push_word(command, next, &mut spans),
                ("sshpass", s) if s.len() > 1 && s.starts_with('p') => spans.push((at + 2, value_end)),
                ("curl", "u") => {
                    if let Some(n) = next {
                        user_pass(command, n.start, n.end, &mut spans);
                    }
                }
                ("curl", s) if s.len() > 1 && s.starts_with('u') => user_pass(command, at + 2, value_end, &mut spans),
                _ => {}
            }
        }
    }
    scan_inline(command, &mut spans);
    if spans.is_empty() {
        return None;
    }
    spans.sort_unstable();
    let mut out = String::with_capacity(command.len());
    let mut at = 0;
    for (start, end) in spans {
        if end <= at || start >= end {
            continue;
        }
        let start = start.max(at);
        out.push_str(command.get(at..start)?);
        out.push_str(REDACTED);
        at = end;
    }
    out.push_str(command.get(at..)?);
    Some(out)
}

/// The word `w` whole (a secret option's value), unless it is another option.
fn push_word(command: &str, w: Option<&Word>, spans: &mut Vec<(usize, usize)>) {
    if let Some(w) = w
        && !command.get(w.start..w.end).unwrap_or_default().starts_with('-')
    {
        spans.push((w.start, w.end));
    }
}

/// The password of `user:password` in `command[start..end]`.
fn user_pass(command: &str, start: usize, end: usize, spans: &mut Vec<(usize, usize)>) {
    if let Some(colon) = command.get(start..end).and_then(|v| v.find(':')) {
        spans.push((start + colon + 1, end));
    }
}

/// Secrets found anywhere, inside quotes too: `password=` in connection
/// strings, `scheme://user:secret@host`, and `Authorization:` header values.
fn scan_inline(command: &str, spans: &mut Vec<(usize, usize)>) {
    let lower = command.to_ascii_lowercase();
    let stop = |from: usize| {
        lower
            .get(from..)
            .and_then(|rest| rest.find(|c: char| c.is_whitespace() || matches!(c, '\'' | '"' | ';' | '&' | '|')))
            .map_or(lower.len(), |i| from + i)
    };
    for (i, w) in lower.match_indices("password") {
        let rest = lower.get(i + w.len()..).unwrap_or_default();
        let trimmed = rest.trim_start_matches(' ');
        if let Some(value) = trimmed.strip_prefix('=') {
            let from = lower.len() - value.trim_start_matches(' ').len();
            spans.push((from, stop(from)));
        } else if rest.starts_with(char::is_whitespace)
            && let Some(quoted) = rest.trim_start().strip_prefix('\'')
        {
            // SQL run through a client: `psql -c "ALTER ROLE bob PASSWORD 'x'"`.
            let from = lower.len() - quoted.len() - 1;
            let end = quoted.find('\'').map_or(lower.len(), |j| from + j + 2);
            spans.push((from, end));
        }
    }
    for (i, w) in lower.match_indices("://") {
        let from = i + w.len();
        let host_end = lower
            .get(from..)
            .and_then(|r| r.find(|c: char| c.is_whitespace() || matches!(c, '/' | '?' | '#' | '\'' | '"')))
            .map_or(lower.len(), |j| from + j);
        let authority = lower.get(from..host_end).unwrap_or_default();
        if let Some(at) = authority.rfind('@')
            && let Some(colon) = authority.get(..at).and_then(|u| u.find(':'))
        {
            spans.push((from + colon + 1, from + at));
        }
    }
    for (i, w) in lower.match_indices("authorization:") {
        let from = i + w.len();
        let end = lower
            .get(from..)
            .and_then(|r| r.find(['\'', '"', '\n']))
            .map_or(lower.len(), |j| from + j);
        spans.push((from, end));
    }
}

/// Whether `s` is a shell variable name.
fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The word without a leading quote, and where that leaves it.
fn unquoted(raw: &str) -> (usize, &str) {
    match raw.strip_prefix(['\'', '"']) {
        Some(rest) => (1, rest),
        None => (0, raw),
    }
}

/// 1 when the word ends with the quote it opened with.
fn closing_quote(raw: &str) -> usize {
    let first = raw.chars().next();
    let last = raw.chars().last();
    usize::from(raw.len() > 1 && matches!(first, Some('\'' | '"')) && first == last)
}

/// The command line's words, the way a shell splits them (quotes and
/// backslashes keep a word together; `;`, `|`, `&`, `(`, `)` and newlines
/// separate commands). Unbalanced quotes run to the end.
fn words(command: &str) -> Vec<Word> {
    let mut out = Vec::new();
    let mut chars = command.char_indices().peekable();
    let mut first = true;
    while let Some(&(i, c)) = chars.peek() {
        if c == '\n' || matches!(c, ';' | '|' | '&' | '(' | ')') {
            first = true;
            chars.next();
            continue;
        }
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let start = i;
        let mut end = command.len();
        let mut quote: Option<char> = None;
        while let Some(&(j, c)) = chars.peek() {
            match quote {
                Some(q) if c == q => quote = None,
                Some('"') if c == '\\' => {
                    chars.next();
                }
                Some(_) => {}
                None if c == '\'' || c == '"' => quote = Some(c),
                None if c == '\\' => {
                    chars.next();
                }
                None if c.is_whitespace() || matches!(c, ';' | '|' | '&' | '(' | ')') => {
                    end = j;
                    break;
                }
                None => {}
            }
            chars.next();
        }
        if end == command.len()
            && let Some(&(j, _)) = chars.peek()
        {
            end = j;
        }
        out.push(Word { start, end, first });
        first = false;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_command_lines_are_redacted() {
        for (cmd, want) in [
            (
                "PGPASSWORD=hunter2 psql -h db -c 'select 1'",
                "PGPASSWORD='[redacted]' psql -h db -c 'select 1'",
            ),
            ("export MYSQL_PWD='a b'; mysql", "export MYSQL_PWD='[redacted]'; mysql"),
            (
                "mysql -uroot -phunter2 -h db orders",
                "mysql -uroot -p'[redacted]' -h db orders",
            ),
            (
                "mysqldump --password=hunter2 db",
                "mysqldump --password='[redacted]' db",
            ),
            (
                "deploy --token abc123 --verbose",
                "deploy --token '[redacted]' --verbose",
            ),
            ("sshpass -p hunter2 ssh x", "sshpass -p '[redacted]' ssh x"),
            ("curl -u bob:hunter2 https://x/", "curl -u bob:'[redacted]' https://x/"),
            (
                "curl -H 'Authorization: Bearer abc' https://x/",
                "curl -H 'Authorization:'[redacted]'' https://x/",
            ),
            (
                "psql 'host=db password=hunter2 user=x'",
                "psql 'host=db password='[redacted]' user=x'",
            ),
            (
                "psql -c \"ALTER ROLE bob PASSWORD  'hunter2'\" orders",
                "psql -c \"ALTER ROLE bob PASSWORD  '[redacted]'\" orders",
            ),
            (
                "echo \"create user x with password\n'hunter2'\" | psql",
                "echo \"create user x with password\n'[redacted]'\" | psql",
            ),
            (
                "git clone https://bob:hunter2@example.com/r.git",
                "git clone https://bob:'[redacted]'@example.com/r.git",
            ),
            (
                "cd /tmp && AWS_SECRET_ACCESS_KEY=k aws s3 ls",
                "cd /tmp && AWS_SECRET_ACCESS_KEY='[redacted]' aws s3 ls",
            ),
        ] {
            let got = redact_command(cmd);
            assert_eq!(got.as_deref(), Some(want), "{cmd}");
            assert!(!got.unwrap_or_default().contains("hunter2"));
        }
    }

    #[test]
    fn ordinary_commands_are_left_alone() {
        for cmd in [
            "echo hello; exit 3",
            "mkdir -p /tmp/x",
            "ssh -p 22 host",
            "psql --password -h db",
            "scp -t /tmp/up.bin",
            "ls https://example.com/x",
            "grep -r password .",
            "",
            "'unbalanced \"quote",
        ] {
            assert_eq!(redact_command(cmd), None, "{cmd}");
        }
    }
}
