use super::{ConfigError, parse};

// Line 1 is the empty line after `r#"`, so `data_dir` is line 2.
const GOOD: &str = r#"
data_dir: ./data
api: { listen: 127.0.0.1:8080 }
postgres: { listen: 127.0.0.1:6432 }
warn_before: [5m, 1m]
resources:
  - name: orders
    kind: postgres
    host: 127.0.0.1
    port: 5432
    database: orders
    tls: prefer
    roles:
      read:  { user: orders_ro, password_env: ORDERS_RO_PASSWORD }
    policy:
      requesters: { groups: [eng] }
      approvers:  { groups: [dba], users: [carol] }
      approvals_required: 1
      max_duration: 4h
      default_duration: 1h
      reason: { pattern: "^[A-Z]+-[0-9]+" }
      auto_approve: [ { groups: [oncall], max_duration: 30m } ]
"#;

fn parse_error(text: &str) -> (usize, String) {
    match parse(text, "p.yaml") {
        Err(ConfigError::Parse { line, message, .. }) => (line, message),
        other => panic!("expected a parse error, got {other:?}"),
    }
}

#[test]
fn design_example_parses() {
    let c = parse(GOOD, "p.yaml").expect("the DESIGN.md example must parse");
    assert_eq!(c.resources.len(), 1);
    assert_eq!(c.warn_before.len(), 2);
}

#[test]
fn unknown_key_names_its_line() {
    let text = GOOD.replace("    tls: prefer\n", "    tls: prefer\n    colour: blue\n");
    let (line, message) = parse_error(&text);
    assert_eq!(line, 13);
    assert!(message.contains("unknown field `colour`"), "{message}");
}

#[test]
fn bad_duration_names_its_line_and_the_expected_form() {
    let text = GOOD.replace("max_duration: 4h", "max_duration: four hours");
    let (line, message) = parse_error(&text);
    assert_eq!(line, 19);
    assert!(message.contains("expected e.g. 90s"), "{message}");
}

#[test]
fn bad_tls_mode_lists_the_choices() {
    let text = GOOD.replace("tls: prefer", "tls: sometimes");
    let (line, message) = parse_error(&text);
    assert_eq!(line, 12);
    assert!(message.contains("verify-full"), "{message}");
}

#[test]
fn default_over_max_is_refused() {
    let text = GOOD.replace("default_duration: 1h", "default_duration: 5h");
    match parse(&text, "p.yaml") {
        Err(ConfigError::Invalid { message, .. }) => assert!(message.contains("default_duration"), "{message}"),
        other => panic!("expected an invalid-value error, got {other:?}"),
    }
}
