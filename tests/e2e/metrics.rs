//! `/metrics` counts connections by outcome, live sessions and cuts by
//! reason, and the audit log's writes and their lag by source.

use std::time::Duration;

use crate::harness::{Gateway, GatewayOptions, connect};

/// The value of the sample whose line starts with `name{` and contains every label.
pub fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub fn metrics(gw: &Gateway) -> String {
    let (status, body) = gw.http("GET", "/metrics", None, None);
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_sessions_and_cuts_are_counted() {
    let gw = Gateway::start(GatewayOptions::default());
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);

    // Refused: no grant yet.
    assert!(connect(&gw.pg_config("alice", &alice, "orders")).await.is_err());
    let (_, gid) = gw.grant(&alice, &carol, "orders", None, "1h");
    let mut s = connect(&gw.pg_config("alice", &alice, "orders"))
        .await
        .expect("connect");
    s.client.simple_query("SELECT 1").await.expect("query");

    let m = metrics(&gw);
    let no_grant = sample(&m, "portcullis_connections_total", &[r#"outcome="no_grant""#]);
    assert_eq!(no_grant, Some(1.0), "{m}");
    let admitted = sample(&m, "portcullis_connections_total", &[r#"outcome="allowed""#]);
    assert_eq!(admitted, Some(1.0), "{m}");
    let active = sample(&m, "portcullis_sessions_active", &[r#"protocol="postgres""#]);
    assert_eq!(active, Some(1.0), "{m}");

    gw.cli_ok(&carol, &["revoke", &gid, "--reason", "metrics test"]);
    let (_, closed) = s.until_closed(Duration::from_secs(10)).await;
    assert!(closed.is_some(), "the revoke should end the session");

    // The session's bookkeeping ends just after the client sees the close.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let m = metrics(&gw);
        let cuts = sample(&m, "portcullis_session_cuts_total", &[r#"reason="revoked""#]);
        let active = sample(&m, "portcullis_sessions_active", &[r#"protocol="postgres""#]);
        if cuts == Some(1.0) && active == Some(0.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expected one revoke cut and no live session:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The audit log: the proxy's refusal, session start, statement and end;
    // the workflow's 3 users, request, approval, grant and revoke. Each
    // written event's lag (event time to durable) is observed.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = metrics(&gw);
        let lag = |source: &str| {
            let label = format!("source=\"{source}\"");
            sample(&m, "portcullis_audit_lag_seconds_count", &[&label])
        };
        let written = |source: &str| {
            let label = format!("source=\"{source}\"");
            sample(&m, "portcullis_audit_events_written_total", &[&label])
        };
        // The lag is observed just before the count is taken: both, in one scrape.
        let counts = (written("proxy"), written("workflow"));
        if lag("proxy") == Some(4.0) && lag("workflow") == Some(7.0) && counts == (Some(4.0), Some(7.0)) {
            let lag_sum = sample(&m, "portcullis_audit_lag_seconds_sum", &[r#"source="proxy""#]);
            assert!(lag_sum.is_some_and(|s| s >= 0.0), "{m}");
            // Nothing waited for room in the proxy's audit queue.
            assert_eq!(sample(&m, "portcullis_audit_queue_waits_total", &[]), Some(0.0), "{m}");
            // Everything written: nothing waits in either queue.
            assert_eq!(sample(&m, "portcullis_audit_queue_depth", &[]), Some(0.0), "{m}");
            assert_eq!(sample(&m, "portcullis_audit_log_queue_depth", &[]), Some(0.0), "{m}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expected 4 proxy and 7 workflow audit events written:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
