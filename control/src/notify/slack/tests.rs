use super::*;

// Slack's own example (api.slack.com/authentication/verifying-requests-from-slack).
const SECRET: &[u8] = b"8f742231b10e8888abcd99yyyzzz85a5";
const TS: &str = "1531420618";
const BODY: &[u8] = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
const SIG: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
const NOW: i64 = 1_531_420_618 + 60;

#[test]
fn slacks_documented_example_verifies() {
    verify(SECRET, Some(TS), Some(SIG), BODY, NOW).expect("Slack's example signature");
}

#[test]
fn forged_and_stale_callbacks_are_refused() {
    let forged = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b504";
    assert!(matches!(
        verify(SECRET, Some(TS), Some(forged), BODY, NOW),
        Err(Refusal::BadSignature)
    ));
    assert!(matches!(
        verify(b"another secret", Some(TS), Some(SIG), BODY, NOW),
        Err(Refusal::BadSignature)
    ));
    let mut edited = BODY.to_vec();
    edited.push(b'x');
    assert!(matches!(
        verify(SECRET, Some(TS), Some(SIG), &edited, NOW),
        Err(Refusal::BadSignature)
    ));
    // Signed for another timestamp.
    assert!(matches!(
        verify(SECRET, Some("1531420619"), Some(SIG), BODY, NOW),
        Err(Refusal::BadSignature)
    ));
    assert!(matches!(
        verify(SECRET, Some(TS), Some("a2114d57"), BODY, NOW),
        Err(Refusal::BadSignature)
    ));
    assert!(matches!(
        verify(SECRET, Some(TS), Some("v0=zz"), BODY, NOW),
        Err(Refusal::BadSignature)
    ));
    assert!(matches!(
        verify(SECRET, Some(TS), Some(SIG), BODY, 1_531_420_618 + WINDOW_S + 1),
        Err(Refusal::Stale { age_s: 301 })
    ));
    assert!(matches!(
        verify(SECRET, Some(TS), Some(SIG), BODY, 1_531_420_618 - WINDOW_S - 1),
        Err(Refusal::Stale { .. })
    ));
    assert!(verify(SECRET, Some(TS), Some(SIG), BODY, 1_531_420_618 + WINDOW_S).is_ok());
    assert!(matches!(
        verify(SECRET, None, Some(SIG), BODY, NOW),
        Err(Refusal::MissingHeader(_))
    ));
    assert!(matches!(
        verify(SECRET, Some(TS), None, BODY, NOW),
        Err(Refusal::MissingHeader(_))
    ));
    assert!(matches!(
        verify(SECRET, Some("soon"), Some(SIG), BODY, NOW),
        Err(Refusal::BadTimestamp)
    ));
}

#[test]
fn a_replay_is_refused_once_seen() {
    let guard = ReplayGuard::default();
    assert!(guard.first_time("v0=aa", 100));
    assert!(!guard.first_time("v0=aa", 101));
    assert!(guard.first_time("v0=bb", 101));
}

fn form(payload: &str) -> Vec<u8> {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", payload)
        .finish()
        .into_bytes()
}

#[test]
fn a_button_click_is_read_and_bad_payloads_name_the_field() {
    let ok = r#"{"type":"block_actions","user":{"id":"U1","name":"c"},"actions":[{"action_id":"portcullis.approve","value":"req_0123456789ab"}],"response_url":"https://hooks.slack.com/x"}"#;
    let action = parse_action(&form(ok)).expect("valid click");
    assert_eq!(action.slack_user, "U1");
    assert_eq!(action.decision, Decision::Approve);
    assert_eq!(action.request_id, "req_0123456789ab");

    let field_of = |body: &[u8]| match parse_action(body) {
        Err(Refusal::BadPayload { field, .. }) => field,
        other => panic!("expected a bad payload, got {other:?}"),
    };
    assert_eq!(field_of(b"nothing=here"), "payload");
    assert_eq!(field_of(&form("{not json")), "payload");
    assert_eq!(field_of(&form(r#"{"type":"block_actions","actions":[]}"#)), "payload");
    assert_eq!(
        field_of(&form(r#"{"type":"block_actions","user":{},"actions":[]}"#)),
        "payload.user"
    );
    assert_eq!(
        field_of(&form(r#"{"type":"view_submission","user":{"id":"U1"}}"#)),
        "payload.type"
    );
    assert_eq!(
        field_of(&form(r#"{"type":"block_actions","user":{"id":"U1"},"actions":[]}"#)),
        "payload.actions"
    );
    assert_eq!(
        field_of(&form(
            r#"{"type":"block_actions","user":{"id":"U1"},"actions":[{"action_id":"x","value":"req_1"}]}"#
        )),
        "payload.actions[0].action_id"
    );
    assert_eq!(
        field_of(&form(
            r#"{"type":"block_actions","user":{"id":"U1"},"actions":[{"action_id":"portcullis.deny","value":"../x"}]}"#
        )),
        "payload.actions[0].value"
    );
}

#[test]
fn user_text_cannot_mention_the_channel() {
    assert_eq!(escape("<!channel> & co"), "&lt;!channel&gt; &amp; co");
    // Escapes count towards Slack's field limit.
    let long = escape(&"&".repeat(MAX_FIELD));
    assert!(
        long.chars().count() <= MAX_FIELD + 1 && long.ends_with('…'),
        "{}",
        long.len()
    );
}

#[test]
fn buttons_only_while_pending_and_approve_only_when_chat_may() {
    let chat = Chat {
        signing_secret: portcullis_protocol::secret::Secret::new("s".to_owned()),
        users: Default::default(),
        cli_only_roles: [("orders".to_owned(), "write".to_owned())].into(),
        replays: ReplayGuard::default(),
    };
    let doc = json!({
        "event": "requested", "summary": "alice requests read on orders",
        "request": { "id": "req_1", "state": "pending", "user": "alice", "duration_s": 3600, "approvals_needed": 1,
                     "resource": "orders", "role": "read", "break_glass": false },
        "notify": { "audience": "approvers", "users": ["carol"], "groups": ["dba"] },
        "commands": { "approve": "portcullis approve req_1" },
    });
    let ids = |m: &Value| -> Vec<String> {
        m["blocks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|b| b["type"] == "actions")
            .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
            .map(|e| {
                format!(
                    "{}={}",
                    e["action_id"].as_str().unwrap_or(""),
                    e["value"].as_str().unwrap_or("")
                )
            })
            .collect()
    };
    assert_eq!(
        ids(&message(&doc, Some(&chat), &BTreeMap::new())),
        ["portcullis.approve=req_1", "portcullis.deny=req_1"]
    );
    // Without interactivity there is nothing to click.
    assert!(ids(&message(&doc, None, &BTreeMap::new())).is_empty());
    for (field, value) in [("role", "admin"), ("role", "write")] {
        let mut cli_only = doc.clone();
        cli_only["request"][field] = value.into();
        assert_eq!(
            ids(&message(&cli_only, Some(&chat), &BTreeMap::new())),
            ["portcullis.deny=req_1"],
            "{value}"
        );
    }
    let mut done = doc.clone();
    done["request"]["state"] = "approved".into();
    done["event"] = "approved".into();
    assert!(ids(&message(&done, Some(&chat), &BTreeMap::new())).is_empty());
}

#[test]
fn the_people_concerned_are_mentioned_when_mapped() {
    let mentions: BTreeMap<String, String> = [
        ("alice".to_owned(), "U0ALICE".to_owned()),
        ("carol".to_owned(), "U0CAROL".to_owned()),
        ("eve".to_owned(), "U0>!channel".to_owned()),
    ]
    .into();
    let context = |doc: &Value| -> String {
        message(doc, None, &mentions)["blocks"][2]["elements"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let requested = json!({
        "event": "requested",
        "request": { "id": "req_1", "state": "pending", "user": "alice" },
        "notify": { "audience": "approvers", "users": ["carol", "dave", "eve"], "groups": ["dba"] },
    });
    assert_eq!(
        context(&requested),
        "For the approvers: users <@U0CAROL>, dave, eve; groups dba"
    );
    let approved = json!({
        "event": "approved",
        "request": { "id": "req_1", "state": "approved", "user": "alice" },
        "notify": { "audience": "requester", "users": ["alice"], "groups": [] },
    });
    assert_eq!(context(&approved), "For <@U0ALICE>");
    // Unmapped, the name is shown (escaped) and nobody is pinged.
    assert_eq!(
        message(&approved, None, &BTreeMap::new())["blocks"][2]["elements"][0]["text"],
        "For alice"
    );
}
