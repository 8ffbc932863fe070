//! Passwords written into statements, found and replaced before anything
//! is stored: the string after the PASSWORD keyword (comments in between
//! skipped), the same inside strings that hold statements (a DO block's or
//! a function's body), the value bound to a `$n` written there, and
//! connection strings and URLs with a password. Runs on the audit thread.

use std::borrow::Cow;

use pg_query::protobuf::{ScanToken, Token};

mod unscanned;

use unscanned::every_value_redacted;
pub(crate) use unscanned::without_values;

/// What replaces a secret in a statement.
pub const REDACTED: &str = "'[redacted]'";

/// How deep strings within strings are searched: a DO block in a function
/// body is two. A deeper one that says "password" is replaced whole.
const DEPTH: usize = 4;

/// What a statement holds that must not be stored.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Redaction {
    /// The text with every password replaced by [`REDACTED`], when it held one.
    pub text: Option<String>,
    /// Bound parameters (`$n`, from 1) written where a password goes: their
    /// values are passwords.
    pub params: Vec<usize>,
}

impl Redaction {
    /// Whether anything was found.
    pub fn is_empty(&self) -> bool {
        self.text.is_none() && self.params.is_empty()
    }
}

/// The passwords written into `text`, or bound to it (see the module's
/// doc). Text that mentions a password but cannot be scanned keeps only
/// its names, keywords and comments, or when even that fails to read, is
/// withheld whole.
pub fn redact(text: &str) -> Redaction {
    let mut found = Redaction::default();
    if !mentions_password(text) {
        return found;
    }
    found.text = match redact_in(text, 0, &mut found.params) {
        Ok(scan) => scan.text,
        // Most often strings with backslash escapes, in a session with
        // `standard_conforming_strings` off, which the scanner reads as on.
        Err(Unscannable) => {
            Some(every_value_redacted(text, &mut found.params).unwrap_or_else(|| UNREADABLE.to_owned()))
        }
    };
    found
}

/// `text` with every string in it redacted, its names, keywords and
/// comments kept (withheld whole when it cannot be read): for a text whose
/// values go where a password does, though the text does not say so (an
/// `EXECUTE` of a statement that takes a password).
pub fn every_value(text: &str) -> String {
    every_value_redacted(text, &mut Vec::new()).unwrap_or_else(|| UNREADABLE.to_owned())
}

/// What a text that holds a password is stored as when it cannot be read.
const UNREADABLE: &str = "[redacted: the statement mentions a password and could not be scanned]";

/// The scanner refused the text (an unterminated string or comment).
struct Unscannable;

/// What scanning one text found.
struct Scan {
    /// The text with its secrets replaced (`None`: it holds none).
    text: Option<String>,
    /// It names a password whose value is not in it: the name ends the
    /// text, or a `format` placeholder (`%L`) follows it.
    open: bool,
}

/// Where the scan stands after a word that names a password.
#[derive(Clone, Copy)]
enum After {
    /// No such word just seen.
    Nothing,
    /// One was: its value comes next, maybe after `=`, `:=` or `TO`.
    /// `keyword` for PASSWORD itself, whose value may be written bare.
    Name { keyword: bool },
    /// The value is a call (`crypt('pw', ...)`): each argument may be it.
    Call { depth: usize },
}

fn is(t: &ScanToken, kind: Token) -> bool {
    t.token == kind as i32
}

/// `text` with its secrets replaced, strings in it searched `depth` levels
/// down; the parameters bound where a password goes are added to `params`.
/// A password's name is the PASSWORD keyword or any identifier that says
/// password (`sslpassword`, `"password"`, `app.password`); its value is the
/// string, parameter or bare word after it, or every argument of a call.
/// A string that writes a statement whose password is given elsewhere
/// (`format('... PASSWORD %L', 'app', 'pw')`, `'... PASSWORD ' || 'pw'`)
/// makes every later string and parameter of the text a password.
fn redact_in(text: &str, depth: usize, params: &mut Vec<usize>) -> Result<Scan, Unscannable> {
    let tokens = pg_query::scan_tokens(text).map_err(|_| Unscannable)?;
    let lower = text.to_ascii_lowercase();
    let mut spans: Vec<(usize, usize, Cow<'static, str>)> = Vec::new();
    let mut after = After::Nothing;
    let mut open = false;
    let mut rest_secret = false;
    for (i, t) in tokens.iter().enumerate() {
        // `PASSWORD /* new */ 'x'` is still a password.
        if is(t, Token::SqlComment) || is(t, Token::CComment) {
            continue;
        }
        let (start, end) = (t.start as usize, t.end as usize);
        let literal = is(t, Token::Sconst) || is(t, Token::Usconst);
        let param = || text.get(start + 1..end).and_then(|n| n.parse::<usize>().ok());
        match after {
            After::Name { .. } if is(t, Token::Ascii61) || is(t, Token::ColonEquals) || is(t, Token::To) => continue,
            After::Name { keyword } => {
                after = After::Nothing;
                let bare = [Token::Ident, Token::Iconst, Token::Fconst].iter().any(|k| is(t, *k));
                if is(t, Token::Ident) && tokens.get(i + 1).is_some_and(|n| is(n, Token::Ascii40)) {
                    after = After::Call { depth: 0 };
                    continue;
                } else if literal || (keyword && bare) {
                    // A password typed without quotes: the server refuses it, naming it in its error.
                    spans.push((start, end, Cow::Borrowed(REDACTED)));
                    continue;
                } else if is(t, Token::Param) {
                    params.extend(param());
                    continue;
                } else if is(t, Token::Ascii37) {
                    // `PASSWORD %L` in a format string: the value is an argument.
                    open = true;
                }
            }
            After::Call { depth } => {
                if is(t, Token::Ascii40) {
                    after = After::Call { depth: depth + 1 };
                } else if is(t, Token::Ascii41) {
                    after = if depth <= 1 {
                        After::Nothing
                    } else {
                        After::Call { depth: depth - 1 }
                    };
                } else if literal {
                    spans.push((start, end, Cow::Borrowed(REDACTED)));
                } else if is(t, Token::Param) {
                    params.extend(param());
                }
                continue;
            }
            After::Nothing => {}
        }
        if literal {
            let said = lower.get(start..end).unwrap_or_default();
            if rest_secret || holds_secret(said) {
                spans.push((start, end, Cow::Borrowed(REDACTED)));
            } else if says_password(said.as_bytes()) {
                let inner = nested(text.get(start..end).unwrap_or_default(), depth);
                rest_secret = inner.open;
                if let Some(inner) = inner.text {
                    spans.push((start, end, Cow::Owned(inner)));
                }
            }
        } else if rest_secret && is(t, Token::Param) {
            params.extend(param());
        } else if is(t, Token::Password)
            || (is(t, Token::Ident) && says_password(lower.get(start..end).unwrap_or_default().as_bytes()))
        {
            after = After::Name {
                keyword: is(t, Token::Password),
            };
        }
    }
    let open = open || matches!(after, After::Name { .. });
    if spans.is_empty() {
        return Ok(Scan { text: None, open });
    }
    Ok(Scan {
        text: Some(spliced(text, spans)),
        open,
    })
}

/// `text` with each of `spans` (byte ranges in order, apart) replaced by
/// its text.
fn spliced<S: AsRef<str>>(text: &str, spans: impl IntoIterator<Item = (usize, usize, S)>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (start, end, with) in spans {
        out.push_str(text.get(at..start).unwrap_or_default());
        out.push_str(with.as_ref());
        at = end;
    }
    out.push_str(text.get(at..).unwrap_or_default());
    out
}

/// A string literal that says "password", with what is written in it
/// redacted as statements are. Its body is searched when it is
/// dollar-quoted or a plain `'...'` string; any other kind (`E'...'`,
/// `U&'...'`), one nested too deep or one whose body cannot be scanned is
/// replaced whole, and counts as open (its password may follow it).
fn nested(literal: &str, depth: usize) -> Scan {
    let whole = Scan {
        text: Some(REDACTED.to_owned()),
        open: true,
    };
    if depth + 1 >= DEPTH {
        return whole;
    }
    // The statement's own parameters are not the body's: a body's `$1` is not redacted.
    let mut unused = Vec::new();
    if let Some(rest) = literal.strip_prefix('$') {
        // `$tag$body$tag$`
        let tag = &literal[..rest.find('$').map_or(literal.len(), |i| i + 2)];
        let Some(body) = literal
            .len()
            .checked_sub(tag.len())
            .and_then(|end| literal.get(tag.len()..end))
        else {
            return whole;
        };
        return match redact_in(body, depth + 1, &mut unused) {
            Ok(inner) => Scan {
                text: inner.text.map(|inner| format!("{tag}{inner}{tag}")),
                open: inner.open,
            },
            Err(Unscannable) => whole,
        };
    }
    if literal.starts_with('\'') && literal.len() >= 2 {
        let body = literal[1..literal.len() - 1].replace("''", "'");
        return match redact_in(&body, depth + 1, &mut unused) {
            Ok(inner) => Scan {
                text: inner.text.map(|inner| format!("'{}'", inner.replace('\'', "''"))),
                open: inner.open,
            },
            Err(Unscannable) => whole,
        };
    }
    whole
}

/// Whether `text` may hold a password: it says "password" in any case, or
/// holds a URL. Every statement is checked: most say neither, and are
/// scanned with SIMD and not copied.
fn mentions_password(text: &str) -> bool {
    let b = text.as_bytes();
    memchr::memchr_iter(b':', b).any(|i| b.get(i + 1..i + 3) == Some(b"//")) || says_password(b)
}

/// Whether `b` says "password", in any case.
fn says_password(b: &[u8]) -> bool {
    memchr::memchr2_iter(b'p', b'P', b).any(|i| b.get(i..i + 8).is_some_and(|w| w.eq_ignore_ascii_case(b"password")))
}

/// Whether a value, in any case, is a connection string or URL with a
/// password. Most values (numbers, names) mention neither and are neither
/// copied nor searched further.
pub fn value_holds_secret(value: &str) -> bool {
    mentions_password(value) && holds_secret(&value.to_ascii_lowercase())
}

/// Whether a literal (lowercased) is a connection string or URL with a password.
pub fn holds_secret(literal: &str) -> bool {
    let conninfo = literal
        .match_indices("password")
        .any(|(i, w)| literal[i + w.len()..].trim_start().starts_with('='));
    // `scheme://user:password@host`: libpq takes everything before the `@`
    // as the user's part, `?` and `/` included.
    let url = literal.find("://").is_some_and(|i| {
        let rest = &literal[i + 3..];
        rest.find('@').is_some_and(|at| rest[..at].contains(':'))
    });
    conninfo || url
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The redacted text alone.
    fn text(sql: &str) -> Option<String> {
        redact(sql).text
    }

    #[test]
    fn passwords_are_redacted() {
        for (sql, want) in [
            (
                "ALTER ROLE bob PASSWORD 'hunter2'",
                "ALTER ROLE bob PASSWORD '[redacted]'",
            ),
            (
                "CREATE USER bob WITH LOGIN ENCRYPTED PASSWORD 'hunter2' VALID UNTIL 'infinity'",
                "CREATE USER bob WITH LOGIN ENCRYPTED PASSWORD '[redacted]' VALID UNTIL 'infinity'",
            ),
            (
                "CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'bob', password 'hunter2')",
                "CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'bob', password '[redacted]')",
            ),
            (
                "SELECT dblink_connect('host=db password = hunter2 user=x')",
                "SELECT dblink_connect('[redacted]')",
            ),
            (
                "SELECT dblink('postgresql://bob:hunter2@db/x', 'select 1')",
                "SELECT dblink('[redacted]', 'select 1')",
            ),
            // psql's \password sends the verifier it computed.
            (
                "ALTER USER bob PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$a2V5:c2Vy'",
                "ALTER USER bob PASSWORD '[redacted]'",
            ),
            (
                "CREATE ROLE bob LOGIN PASSWORD E'hunter2'; SELECT 1",
                "CREATE ROLE bob LOGIN PASSWORD '[redacted]'; SELECT 1",
            ),
        ] {
            assert_eq!(text(sql).as_deref(), Some(want), "{sql}");
        }
        assert_eq!(
            text("ALTER ROLE bob PASSWORD hunter2").as_deref(),
            Some("ALTER ROLE bob PASSWORD '[redacted]'")
        );
        assert_eq!(
            text("ALTER ROLE bob PASSWORD 12345").as_deref(),
            Some("ALTER ROLE bob PASSWORD '[redacted]'")
        );
        assert!(redact("ALTER ROLE bob PASSWORD NULL").is_empty());
        assert!(redact("SELECT 'https://example.com/x'").is_empty());
        assert!(redact("SELECT password FROM users").is_empty());
        let withheld = text("ALTER ROLE bob PASSWORD 'hunter2").expect("withheld");
        assert!(!withheld.contains("hunter2"));
    }

    #[test]
    fn a_comment_between_the_keyword_and_the_password_hides_nothing() {
        for sql in [
            "ALTER ROLE bob PASSWORD /* new */ 'hunter2'",
            "ALTER ROLE bob PASSWORD -- new\n 'hunter2'",
            "ALTER ROLE bob PASSWORD /* a */ /* b */ hunter2",
        ] {
            let redacted = text(sql).expect(sql);
            assert!(!redacted.contains("hunter2"), "{sql}: {redacted}");
            assert!(redacted.contains(REDACTED), "{sql}: {redacted}");
        }
    }

    #[test]
    fn a_password_bound_as_a_parameter_names_that_parameter() {
        assert_eq!(
            redact("ALTER ROLE bob PASSWORD $1"),
            Redaction {
                text: None,
                params: vec![1]
            }
        );
        assert_eq!(
            redact("CREATE USER MAPPING FOR bob SERVER s OPTIONS (user $1, password /* x */ $2)").params,
            [2]
        );
        // Compared with a password column: the value is one.
        assert_eq!(redact("SELECT $1 FROM users WHERE password = $2").params, [2]);
        assert!(redact("SELECT $1 FROM users WHERE password IS NULL").is_empty());
    }

    #[test]
    fn a_password_given_apart_from_its_statement_is_redacted() {
        for sql in [
            "DO $$BEGIN EXECUTE format('ALTER ROLE %I PASSWORD %L', 'app', 'hunter2'); END$$",
            "SELECT format('CREATE ROLE app LOGIN PASSWORD %L', 'hunter2')",
            "DO $$BEGIN EXECUTE 'ALTER ROLE app PASSWORD ' || quote_literal('hunter2'); END$$",
            "SELECT set_config('app.password', 'hunter2', false)",
        ] {
            let redacted = text(sql).expect(sql);
            assert!(!redacted.contains("hunter2"), "{sql}: {redacted}");
        }
        assert_eq!(
            redact("SELECT format('ALTER ROLE %I PASSWORD %L', $1, $2)").params,
            [1, 2]
        );
        // The template itself stays readable.
        assert_eq!(
            text("SELECT format('CREATE ROLE app LOGIN PASSWORD %L', 'hunter2')").as_deref(),
            Some("SELECT format('CREATE ROLE app LOGIN PASSWORD %L', '[redacted]')")
        );
    }

    #[test]
    fn any_name_that_says_password_hides_its_value() {
        for (sql, want) in [
            (
                "CREATE USER MAPPING FOR bob SERVER s OPTIONS (\"user\" 'bob', \"password\" 'hunter2')",
                "CREATE USER MAPPING FOR bob SERVER s OPTIONS (\"user\" 'bob', \"password\" '[redacted]')",
            ),
            (
                "ALTER USER MAPPING FOR bob SERVER s OPTIONS (ADD sslpassword 'hunter2')",
                "ALTER USER MAPPING FOR bob SERVER s OPTIONS (ADD sslpassword '[redacted]')",
            ),
            ("SET app.password = 'hunter2'", "SET app.password = '[redacted]'"),
            (
                "ALTER ROLE x SET app.password TO 'hunter2'",
                "ALTER ROLE x SET app.password TO '[redacted]'",
            ),
            (
                "UPDATE users SET password = crypt('hunter2', gen_salt('bf')) WHERE id = 1",
                "UPDATE users SET password = crypt('[redacted]', gen_salt('[redacted]')) WHERE id = 1",
            ),
            (
                "SELECT dblink_connect('postgresql://bob:pa?ss@db/x')",
                "SELECT dblink_connect('[redacted]')",
            ),
        ] {
            assert_eq!(text(sql).as_deref(), Some(want), "{sql}");
        }
        // A column that says password, next to no value, hides nothing.
        assert!(redact("SELECT password_hash, name FROM users WHERE name = 'bob'").is_empty());
    }

    #[test]
    fn statements_written_in_strings_are_searched_too() {
        assert_eq!(
            text("DO $$BEGIN CREATE ROLE app LOGIN PASSWORD 'hunter2'; END$$").as_deref(),
            Some("DO $$BEGIN CREATE ROLE app LOGIN PASSWORD '[redacted]'; END$$")
        );
        assert_eq!(
            text("DO $body$ BEGIN EXECUTE 'ALTER ROLE app PASSWORD ''hunter2'''; END $body$").as_deref(),
            Some("DO $body$ BEGIN EXECUTE 'ALTER ROLE app PASSWORD ''[redacted]'''; END $body$")
        );
        assert_eq!(
            text("DO 'BEGIN ALTER ROLE app PASSWORD ''hunter2''; END'").as_deref(),
            Some("DO 'BEGIN ALTER ROLE app PASSWORD ''[redacted]''; END'")
        );
        // A body's `$1` is not a parameter of the statement.
        let found = redact("CREATE FUNCTION f(p text) RETURNS void AS $$ ALTER ROLE app PASSWORD $1 $$ LANGUAGE sql");
        assert!(found.params.is_empty());
        // An escaped string, a body that cannot be scanned, or one nested
        // too deep, that says password: replaced whole.
        for sql in [
            "DO E'BEGIN ALTER ROLE app PASSWORD \\'hunter2\\'; END'",
            "SELECT $$ ALTER ROLE app PASSWORD 'hunter2 $$",
            "SELECT $a$ $b$ $c$ $d$ PASSWORD 'hunter2' $d$ $c$ $b$ $a$",
        ] {
            let redacted = text(sql).expect(sql);
            assert!(!redacted.contains("hunter2"), "{sql}: {redacted}");
        }
        // A string that only says the word keeps it.
        assert!(redact("SELECT 'forgot your password?'").is_empty());
    }

    #[test]
    fn the_pre_check_finds_password_in_any_case_and_any_url() {
        for sql in [
            "alter role b PaSsWoRd 'x'",
            "SELECT 1 -- password",
            "SELECT 'a://b'",
            "ppassword",
        ] {
            assert!(mentions_password(sql), "{sql}");
        }
        for sql in ["SELECT passwor", "SELECT 'pass word'", "SELECT ':/'", "", "p"] {
            assert!(!mentions_password(sql), "{sql}");
        }
    }
}
