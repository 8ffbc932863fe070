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

#[test]
fn a_role_overrides_some_policy_fields() {
    let text = GOOD.replace(
        "      read:  { user: orders_ro, password_env: ORDERS_RO_PASSWORD }\n",
        "      read:  { user: orders_ro, password_env: ORDERS_RO_PASSWORD }\n      admin:\n        user: orders_admin\n        policy: { approvals_required: 2, max_duration: 1h, break_glass: { groups: [oncall], max_duration: 15m } }\n",
    );
    let c = parse(&text, "p.yaml").expect("a role policy parses");
    let settings = super::convert::control_settings(&c);
    let orders = settings.resources.first().expect("orders");
    assert_eq!(orders.policy.approvals_required, 1);
    let admin = orders.role_policies.get("admin").expect("admin overrides");
    assert_eq!(admin.approvals_required, 2);
    assert_eq!(admin.max_duration.as_secs(), 3600);
    assert_eq!(admin.default_duration.as_secs(), 3600, "inherited from the resource");
    assert_eq!(admin.approvers, orders.policy.approvers, "inherited from the resource");
    assert!(admin.break_glass.is_some() && orders.policy.break_glass.is_none());
    assert!(!orders.role_policies.contains_key("read"), "read follows the resource");
}

#[test]
fn a_role_override_is_checked_against_what_it_inherits() {
    let text = GOOD.replace(
        "      read:  { user: orders_ro, password_env: ORDERS_RO_PASSWORD }\n",
        "      read:  { user: orders_ro, password_env: ORDERS_RO_PASSWORD, policy: { max_duration: 30m } }\n",
    );
    match parse(&text, "p.yaml") {
        Err(ConfigError::Invalid { message, .. }) => {
            assert!(message.contains("roles.read.policy.default_duration"), "{message}")
        }
        other => panic!("default 1h over the role's max 30m should be refused, got {other:?}"),
    }
    let typo = GOOD.replace(
        "      read:  { user: orders_ro, password_env: ORDERS_RO_PASSWORD }\n",
        "      read:\n        user: orders_ro\n        policy: { aprovals_required: 2 }\n",
    );
    let (line, message) = parse_error(&typo);
    assert_eq!(line, 16, "the line of the role's policy");
    assert!(message.contains("aprovals_required"), "{message}");
}

#[test]
fn ttl_escalation_and_break_glass_parse() {
    let text = GOOD.replace(
        "      auto_approve:",
        "      pending_ttl: 2h\n      escalation: [ { after: 30m, approvers: { groups: [managers] } }, { after: 1h, approvers: { users: [cto] } } ]\n      break_glass: { groups: [oncall], max_duration: 15m }\n      auto_approve:",
    );
    let c = parse(&text, "p.yaml").expect("parses");
    let p = &super::convert::control_settings(&c).resources[0].policy;
    assert_eq!(p.pending_ttl.map(|d| d.as_secs()), Some(7200));
    assert_eq!(p.escalation.len(), 2);
    assert_eq!(p.break_glass.as_ref().map(|b| b.max_duration.as_secs()), Some(900));
    let backwards = text.replace("after: 1h", "after: 10m");
    match parse(&backwards, "p.yaml") {
        Err(ConfigError::Invalid { message, .. }) => assert!(message.contains("escalation"), "{message}"),
        other => panic!("escalation steps out of order should be refused, got {other:?}"),
    }
}

#[test]
fn the_example_config_parses() {
    let text = include_str!("../../examples/portcullis.yaml");
    let c = parse(text, "examples/portcullis.yaml").expect("examples/portcullis.yaml parses");
    let orders = super::convert::control_settings(&c)
        .resources
        .into_iter()
        .next()
        .expect("orders");
    assert!(orders.policy.approvers.is_some(), "the example names its approvers");
}

/// GOOD with a `notifications:` section; line 23 is `notifications:`.
fn with_notifications(section: &str) -> String {
    format!("{GOOD}notifications:\n{section}")
}

#[test]
fn notifications_parse_with_secrets_from_files_and_event_filters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("hook.secret");
    std::fs::write(&secret, "whsec_1\n").expect("write");
    let text = with_notifications(&format!(
        "  timeout: 3s\n  backoff: 500ms\n  webhooks:\n    - url: http://127.0.0.1:9000/hook\n      secret_file: {}\n      events: [requested, break_glass]\n  slack:\n    url: https://hooks.slack.com/services/T/B/X\n    signing_secret_file: {}\n    users: {{ U012ABC: carol }}\n",
        secret.display(),
        secret.display()
    ));
    let text = text.replace(
        "      read:  { user: orders_ro, password_env: ORDERS_RO_PASSWORD }\n",
        "      read:  { user: orders_ro, password_env: ORDERS_RO_PASSWORD }\n      write: { user: orders_rw, chat_approval: false }\n",
    );
    let c = parse(&text, "p.yaml").expect("notifications parse");
    let n = super::convert::notify_settings(&c).expect("secrets readable");
    assert_eq!(n.timeout.as_secs(), 3);
    assert_eq!(n.backoff.as_millis(), 500);
    let hook = n.webhooks.first().expect("one webhook");
    assert_eq!(hook.secret.expose(), "whsec_1", "the trailing newline is dropped");
    assert_eq!(
        hook.events.as_ref().map(|e| e.len()),
        Some(2),
        "requested and break_glass only"
    );
    let slack = n.slack.expect("slack");
    assert_eq!(slack.users.get("U012ABC").map(String::as_str), Some("carol"));
    assert!(
        slack
            .cli_only_roles
            .contains(&("orders".to_owned(), "write".to_owned()))
    );
    // Secrets never print.
    let shown = format!("{hook:?}");
    assert!(
        !shown.contains("whsec_1") && !shown.contains("hooks.slack.com"),
        "{shown}"
    );
}

#[test]
fn bad_notifications_are_refused_naming_the_key() {
    let (line, message) = parse_error(&with_notifications(
        "  webhooks:\n    - url: http://127.0.0.1:9000/hook\n      secret_env: HOOK_SECRET\n      events: [requested, aproved]\n",
    ));
    assert_eq!(line, 27, "the line of the events list");
    assert!(message.contains("aproved") && message.contains("approved"), "{message}");
    let (line, message) = parse_error(&with_notifications("  slack:\n    signing_secret: x\n"));
    assert_eq!(line, 25);
    assert!(message.contains("unknown field `signing_secret`"), "{message}");
    for (section, key) in [
        ("  webhooks:\n    - url: http://127.0.0.1:9000/hook\n", "secret"),
        (
            "  webhooks:\n    - url: ftp://x/\n      secret_env: S\n",
            "webhooks[0].url",
        ),
        ("  max_attempts: 0\n", "max_attempts"),
    ] {
        match parse(&with_notifications(section), "p.yaml") {
            Err(ConfigError::Invalid { message, .. }) => assert!(message.contains(key), "{message}"),
            other => panic!("{section:?} should be refused, got {other:?}"),
        }
    }
    let admin = GOOD.replace(
        "      read:  { user: orders_ro, password_env: ORDERS_RO_PASSWORD }\n",
        "      admin: { user: orders_admin, chat_approval: true }\n",
    );
    assert!(matches!(parse(&admin, "p.yaml"), Err(ConfigError::Invalid { .. })));
    let unset = with_notifications(
        "  webhooks:\n    - url: http://127.0.0.1:9000/hook\n      secret_env: PORTCULLIS_TEST_UNSET_SECRET\n",
    );
    let c = parse(&unset, "p.yaml").expect("parses");
    let err = super::convert::notify_settings(&c).expect_err("the env var is not set");
    assert!(err.contains("webhooks[0].secret_env"), "{err}");
}

#[test]
fn the_example_notifications_section_parses_once_uncommented() {
    let text = include_str!("../../examples/portcullis.yaml");
    let start = text
        .find("# notifications:")
        .expect("a commented notifications section");
    let section: String = text[start..]
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .map(|l| format!("{l}\n"))
        .collect();
    let c = parse(&format!("{}{section}", &text[..start]), "examples/portcullis.yaml")
        .expect("the example's notifications section parses");
    let n = c.notifications.expect("notifications");
    assert_eq!(n.webhooks.len(), 1);
    assert!(n.slack.is_some_and(|s| s.users.contains_key("U012ABC")));
}

/// GOOD with an SSH resource (`host_key` line as given, role `deploy` as given) and an `ssh:` listener.
fn with_ssh(host_key: &str, role: &str) -> String {
    format!(
        "{GOOD}  - name: web1\n    kind: ssh\n    host: 127.0.0.1\n    port: 22\n{host_key}    roles:\n      deploy: {role}\nssh: {{ listen: 127.0.0.1:2222 }}\n"
    )
}

#[test]
fn an_ssh_resource_parses_and_needs_a_pinned_key_and_credentials() {
    let key = "    host_key: \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG0= web1\"\n";
    let c = parse(
        &with_ssh(key, "{ user: deploy, key_file: /run/secrets/deploy }"),
        "p.yaml",
    )
    .expect("parses");
    assert_eq!(c.ssh.as_ref().map(|s| s.listen.port()), Some(2222));
    assert_eq!(c.resources.len(), 2);

    let no_pin = parse(&with_ssh("", "{ user: deploy, key_file: /k }"), "p.yaml");
    assert!(
        matches!(no_pin, Err(ConfigError::Invalid { ref message, .. }) if message.contains("host_key")),
        "{no_pin:?}"
    );
    let no_creds = parse(&with_ssh(key, "{ user: deploy }"), "p.yaml");
    assert!(
        matches!(no_creds, Err(ConfigError::Invalid { ref message, .. }) if message.contains("key_file")),
        "{no_creds:?}"
    );
    let typo = parse(&with_ssh(key, "{ user: deploy, keyfile: /k }"), "p.yaml");
    assert!(matches!(typo, Err(ConfigError::Parse { .. })), "{typo:?}");
}

/// `with_ssh` with `policy` lines under web1 (six spaces in) and `ssh_extra` in `ssh:`.
fn with_ssh_policy(policy: &str, ssh_extra: &str) -> String {
    let key = "    host_key: \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG0= web1\"\n";
    format!(
        "{GOOD}  - name: web1\n    kind: ssh\n    host: 127.0.0.1\n{key}    roles:\n      deploy: {{ user: deploy, password_env: X }}\n    policy:\n{policy}ssh: {{ listen: 127.0.0.1:2222{ssh_extra} }}\n"
    )
}

#[test]
fn ssh_forwarding_and_env_policies_parse_or_name_the_key_at_fault() {
    let ok = with_ssh_policy(
        "      port_forwarding: [\"127.0.0.1:5432\", \"db.internal:*\"]\n      env: [LANG, \"LC_*\"]\n",
        ", handshake_timeout: 3s",
    );
    let c = parse(&ok, "p.yaml").expect("parses");
    assert_eq!(c.ssh.as_ref().map(|s| s.handshake_timeout.0.as_secs()), Some(3));
    let p = &c.resources[1].policy;
    assert_eq!(p.port_forwarding.as_ref().map(Vec::len), Some(2));
    assert_eq!(p.env.as_ref().map(Vec::len), Some(2));

    let bad_dest = parse(
        &with_ssh_policy("      port_forwarding: [\"db.internal\"]\n", ""),
        "p.yaml",
    );
    assert!(
        matches!(bad_dest, Err(ConfigError::Invalid { ref message, .. })
            if message.contains("resources[web1].policy.port_forwarding") && message.contains("expected HOST:PORT")),
        "{bad_dest:?}"
    );
    let bad_env = parse(&with_ssh_policy("      env: [\"LD PRELOAD\"]\n", ""), "p.yaml");
    assert!(
        matches!(bad_env, Err(ConfigError::Invalid { ref message, .. }) if message.contains("policy.env")),
        "{bad_env:?}"
    );
    let zero = parse(
        &with_ssh_policy("      max_duration: 4h\n", ", handshake_timeout: 0s"),
        "p.yaml",
    );
    assert!(
        matches!(zero, Err(ConfigError::Invalid { ref message, .. }) if message.contains("ssh.handshake_timeout")),
        "{zero:?}"
    );
    let on_postgres = parse(
        &GOOD.replace(
            "      approvals_required: 1\n",
            "      approvals_required: 1\n      env: [LANG]\n",
        ),
        "p.yaml",
    );
    assert!(
        matches!(on_postgres, Err(ConfigError::Invalid { ref message, .. }) if message.contains("kind: ssh resources only")),
        "{on_postgres:?}"
    );
}

#[test]
fn the_example_ssh_sections_parse_once_uncommented() {
    let text = include_str!("../../examples/portcullis.yaml");
    // The commented lines from `from` to the next blank line, uncommented.
    let uncomment = |from: &str| -> String {
        let start = text.find(from).expect("a commented section");
        let end = start + text[start..].find("\n\n").expect("its end");
        text[start..end]
            .lines()
            .map(|l| l.strip_prefix("# ").or_else(|| l.strip_prefix("  # ")).unwrap_or(l))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let listener = uncomment("# ssh:");
    let resource: String = uncomment("  # - name: web1")
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect();
    // The resource goes last in `resources:`, just before the notifications comment.
    let notifications = text.find("\n# Notifications").expect("notifications comment");
    let with_ssh = format!("{}\n{resource}{listener}", &text[..notifications]);
    let c = parse(&with_ssh, "examples/portcullis.yaml").expect("the example's ssh sections parse");
    assert!(c.ssh.is_some());
    let web1 = c.resources.iter().find(|r| r.name == "web1").expect("web1");
    assert_eq!(web1.policy.port_forwarding.as_ref().map(Vec::len), Some(2));
    assert_eq!(web1.policy.env.as_ref().map(Vec::len), Some(2));
}

#[test]
fn split_sections_parse_and_name_the_key_at_fault() {
    let text = format!(
        "{GOOD}proxies:\n  - {{ name: eu1, token_env: EU1_TOKEN }}\n  - {{ name: us1, token_file: /run/us1 }}\nproxy: {{ name: eu1, token_env: EU1_TOKEN, staleness: 2s }}\n"
    );
    let c = parse(&text, "p.yaml").expect("proxies: and proxy: parse");
    assert_eq!(c.proxies.len(), 2);
    let p = c.proxy.expect("proxy:");
    assert_eq!(p.staleness.0, std::time::Duration::from_secs(2));
    assert_eq!(p.listen.to_string(), "127.0.0.1:9091");

    let typo = format!("{GOOD}proxy:\n  name: eu1\n  token_env: T\n  stalenes: 2s\n");
    let (line, message) = parse_error(&typo);
    assert_eq!(line, 26);
    assert!(message.contains("unknown field `stalenes`"), "{message}");
    for (bad, key) in [
        ("proxies:\n  - { name: eu1 }\n", "proxies[0]: a token is required"),
        (
            "proxies:\n  - { name: eu1, token_env: A, token_file: /b }\n",
            "not both",
        ),
        (
            "proxies:\n  - { name: a, token_env: A }\n  - { name: a, token_env: B }\n",
            "proxies[1].name",
        ),
        ("proxy: { name: \"e u\", token_env: A }\n", "proxy.name"),
        ("proxy: { name: eu1, token_env: A, staleness: 0s }\n", "proxy.staleness"),
    ] {
        match parse(&format!("{GOOD}{bad}"), "p.yaml") {
            Err(ConfigError::Invalid { message, .. }) => assert!(message.contains(key), "{bad}: {message}"),
            other => panic!("{bad}: expected a refusal naming {key}, got {other:?}"),
        }
    }
}

#[test]
fn the_example_split_sections_parse_once_uncommented() {
    let text = include_str!("../../examples/portcullis.yaml");
    let section = |from: &str| -> String {
        let start = text.find(from).expect("a commented section");
        text[start..]
            .lines()
            .take_while(|l| l.starts_with("#   ") || l.starts_with(from))
            .map(|l| format!("{}\n", l.strip_prefix("# ").unwrap_or(l)))
            .collect()
    };
    let notifications = text.find("\n# Notifications").expect("notifications comment");
    let with_split = format!(
        "{}\n{}{}",
        &text[..notifications],
        section("# proxies:"),
        section("# proxy:")
    );
    let c = parse(&with_split, "examples/portcullis.yaml").expect("the example's split sections parse");
    assert_eq!(c.proxies.len(), 2);
    let proxy = c.proxy.expect("proxy:");
    assert_eq!(proxy.name, "eu1");
    assert_eq!(
        proxy.ca_file.as_deref(),
        Some(std::path::Path::new("/etc/portcullis/ca.pem"))
    );
}

#[test]
fn a_postgres_store_is_given_one_way_and_read_with_the_other_secrets() {
    let text = format!("{GOOD}store: {{ postgres: \"postgres://pc:pw@db1/portcullis\" }}\n");
    let c = parse(&text, "p.yaml").expect("store: parses");
    let settings = super::control_plane(&c).expect("settings");
    let url = settings.store_postgres.clone().expect("a PostgreSQL store");
    assert_eq!(url.expose(), "postgres://pc:pw@db1/portcullis");
    assert_eq!(format!("{settings:?}").matches("pw@").count(), 0, "the URL prints");

    let none = parse(GOOD, "p.yaml").expect("no store:");
    assert!(super::control_plane(&none).expect("settings").store_postgres.is_none());

    let both = format!("{GOOD}store: {{ postgres: \"postgres://x\", postgres_env: X }}\n");
    match parse(&both, "p.yaml") {
        Err(ConfigError::Invalid { message, .. }) => assert!(message.contains("store: give one of"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let unset = format!("{GOOD}store: {{ postgres_env: PORTCULLIS_TEST_NO_SUCH_VAR }}\n");
    let c = parse(&unset, "p.yaml").expect("parses");
    let err = super::control_plane(&c).expect_err("the variable is not set");
    assert!(err.starts_with("store.postgres_env:"), "{err}");
}

#[test]
fn the_api_over_tls_names_its_certificate_and_key() {
    let text = GOOD.replace(
        "api: { listen: 127.0.0.1:8080 }",
        "api: { listen: 127.0.0.1:8443, tls: { cert: /etc/api.crt, key: /etc/api.key } }",
    );
    let c = parse(&text, "p.yaml").expect("api.tls parses");
    let tls = c.api.tls.expect("api.tls");
    assert_eq!(
        (tls.cert.to_str(), tls.key.to_str()),
        (Some("/etc/api.crt"), Some("/etc/api.key"))
    );
    let (line, message) = parse_error(&GOOD.replace(
        "api: { listen: 127.0.0.1:8080 }",
        "api: { listen: 127.0.0.1:8443, tls: { cert: /etc/api.crt } }",
    ));
    assert_eq!(line, 3);
    assert!(message.contains("key"), "{message}");
}

#[test]
fn ssh_ciphers_are_checked_against_what_the_gateway_speaks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let password = dir.path().join("ro.password");
    std::fs::write(&password, "secret\n").expect("write");
    let good = GOOD.replace(
        "password_env: ORDERS_RO_PASSWORD",
        &format!("password_file: {}", password.display()),
    );
    let with = |ciphers: &str| {
        let text = format!("{good}ssh: {{ listen: 127.0.0.1:2222{ciphers} }}\n");
        let c = parse(&text, "p.yaml").expect("parses");
        super::proxy_settings(&c).map(|s| s.ssh.expect("ssh").ciphers)
    };
    let default = with("").expect("default");
    assert_eq!(
        default.iter().map(AsRef::as_ref).collect::<Vec<&str>>(),
        ["aes256-gcm@openssh.com", "aes128-gcm@openssh.com"]
    );
    let chosen = with(", ciphers: [chacha20-poly1305@openssh.com]").expect("known");
    assert_eq!(
        chosen.iter().map(AsRef::as_ref).collect::<Vec<&str>>(),
        ["chacha20-poly1305@openssh.com"]
    );
    let err = with(", ciphers: [des-cbc]").expect_err("unknown");
    assert!(
        err.starts_with("ssh.ciphers: unknown cipher \"des-cbc\"; known: aes256-gcm"),
        "{err}"
    );
    let err = with(", ciphers: []").expect_err("empty");
    assert!(err.contains("at least one"), "{err}");
}
