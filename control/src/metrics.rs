//! The control plane's Prometheus metrics. Labels carry outcomes and kinds
//! only: never user names, tokens or reasons.

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

/// Buckets of the request-to-decision histograms, in seconds.
const DECISION_BUCKETS: [f64; 10] = [5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 14400.0];

/// Counters and histograms registered on the process registry.
#[derive(Clone, Debug)]
pub(crate) struct Metrics {
    /// Requests filed, by outcome: `pending`, `auto_approved`, `break_glass`, `refused`.
    pub requests: IntCounterVec,
    /// Decisions on pending requests: `approved`, `denied`, `cancelled`, `expired`.
    pub decisions: IntCounterVec,
    /// Seconds from a request to its decision, by the decision's outcome.
    pub time_to_decision: HistogramVec,
    /// Requests waiting for an answer now.
    pub pending: IntGauge,
    /// Escalation steps reached by pending requests.
    pub escalations: prometheus::IntCounter,
    /// Grant changes: `created`, `extended`, `revoked`.
    pub grant_changes: IntCounterVec,
    /// Seconds from a request to its final approval.
    pub time_to_approve: Histogram,
    /// API answers that were refusals, by HTTP status.
    pub api_refusals: IntCounterVec,
    /// The feed's latest revision.
    pub feed_revision: IntGauge,
    /// What the audit log's writers observe.
    pub audit: AuditMetrics,
    /// Notifications delivered, by destination kind (`webhook`, `slack`).
    pub notifications_sent: IntCounterVec,
    /// Delivery attempts that failed and will be retried, by destination kind.
    pub notifications_retried: IntCounterVec,
    /// Notifications given up on (attempts ran out), by destination kind.
    pub notifications_failed: IntCounterVec,
    /// Notifications waiting in the outbox.
    pub outbox_depth: IntGauge,
    /// Slack button clicks, by outcome (`approved`, `denied`, `refused`,
    /// `cli_only`, `unmapped`, `bad_signature`, `stale`, `replayed`, `malformed`, `not_configured`).
    pub chat_actions: IntCounterVec,
}

/// Buckets of the audit lag histogram, in seconds: milliseconds when all is
/// well, up to a minute when the log's disk stalls.
const AUDIT_LAG_BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0];

/// The audit log's metrics, by `source`: `proxy` (the proxy's queue) or
/// `workflow` (history shipped by the control plane).
#[derive(Clone, Debug)]
pub(crate) struct AuditMetrics {
    /// Seconds from an event's time to the commit that made it durable.
    pub lag: HistogramVec,
    /// Events written (duplicates of stored ones are not counted).
    pub written: IntCounterVec,
    /// Events waiting for the log's writer thread.
    pub queue_depth: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn register(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let m = Metrics {
            requests: IntCounterVec::new(
                Opts::new("portcullis_requests_total", "Access requests filed, by outcome"),
                &["outcome"],
            )?,
            decisions: IntCounterVec::new(
                Opts::new("portcullis_request_decisions_total", "Decisions on pending requests"),
                &["decision"],
            )?,
            grant_changes: IntCounterVec::new(
                Opts::new("portcullis_grant_changes_total", "Grants created, extended and revoked"),
                &["change"],
            )?,
            time_to_approve: Histogram::with_opts(
                HistogramOpts::new(
                    "portcullis_request_time_to_approve_seconds",
                    "Time from a request to the approval that granted it",
                )
                .buckets(DECISION_BUCKETS.to_vec()),
            )?,
            time_to_decision: HistogramVec::new(
                HistogramOpts::new(
                    "portcullis_request_time_to_decision_seconds",
                    "Time from a request to its decision (approved, denied, cancelled or expired)",
                )
                .buckets(DECISION_BUCKETS.to_vec()),
                &["outcome"],
            )?,
            pending: IntGauge::new("portcullis_requests_pending", "Requests waiting for an answer")?,
            escalations: prometheus::IntCounter::new(
                "portcullis_request_escalations_total",
                "Escalation steps reached by unanswered requests",
            )?,
            api_refusals: IntCounterVec::new(
                Opts::new(
                    "portcullis_api_refusals_total",
                    "API calls answered with an error, by status",
                ),
                &["status"],
            )?,
            feed_revision: IntGauge::new("portcullis_feed_revision", "Revision of the latest grant feed change")?,
            audit: AuditMetrics {
                lag: HistogramVec::new(
                    HistogramOpts::new(
                        "portcullis_audit_lag_seconds",
                        "Time from an audit event (a block of statements: its first) to the commit that made it durable in the audit log",
                    )
                    .buckets(AUDIT_LAG_BUCKETS.to_vec()),
                    &["source"],
                )?,
                written: IntCounterVec::new(
                    Opts::new(
                        "portcullis_audit_events_written_total",
                        "Audit events written to the audit log, by source",
                    ),
                    &["source"],
                )?,
                queue_depth: IntGauge::new(
                    "portcullis_audit_log_queue_depth",
                    "Audit events waiting for the audit log's writer (as it last looked)",
                )?,
            },
            notifications_sent: IntCounterVec::new(
                Opts::new(
                    "portcullis_notifications_sent_total",
                    "Notifications delivered, by destination kind",
                ),
                &["destination"],
            )?,
            notifications_retried: IntCounterVec::new(
                Opts::new(
                    "portcullis_notifications_retried_total",
                    "Notification delivery attempts that failed and will be retried, by destination kind",
                ),
                &["destination"],
            )?,
            notifications_failed: IntCounterVec::new(
                Opts::new(
                    "portcullis_notifications_failed_total",
                    "Notifications given up on after their last attempt, by destination kind",
                ),
                &["destination"],
            )?,
            outbox_depth: IntGauge::new(
                "portcullis_notification_outbox_depth",
                "Notifications waiting in the outbox for delivery",
            )?,
            chat_actions: IntCounterVec::new(
                Opts::new(
                    "portcullis_chat_actions_total",
                    "Slack button clicks received, by outcome",
                ),
                &["outcome"],
            )?,
        };
        // Known label values start at 0, so they are exported before the first event.
        for outcome in ["pending", "auto_approved", "break_glass", "refused"] {
            m.requests.with_label_values(&[outcome]);
        }
        for decision in ["approved", "denied", "cancelled", "expired"] {
            m.decisions.with_label_values(&[decision]);
            m.time_to_decision.with_label_values(&[decision]);
        }
        for change in ["created", "extended", "revoked"] {
            m.grant_changes.with_label_values(&[change]);
        }
        for source in ["proxy", "workflow"] {
            m.audit.lag.with_label_values(&[source]);
            m.audit.written.with_label_values(&[source]);
        }
        for kind in ["webhook", "slack"] {
            m.notifications_sent.with_label_values(&[kind]);
            m.notifications_retried.with_label_values(&[kind]);
            m.notifications_failed.with_label_values(&[kind]);
        }
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.decisions.clone()))?;
        registry.register(Box::new(m.grant_changes.clone()))?;
        registry.register(Box::new(m.time_to_approve.clone()))?;
        registry.register(Box::new(m.api_refusals.clone()))?;
        registry.register(Box::new(m.time_to_decision.clone()))?;
        registry.register(Box::new(m.pending.clone()))?;
        registry.register(Box::new(m.escalations.clone()))?;
        registry.register(Box::new(m.feed_revision.clone()))?;
        registry.register(Box::new(m.audit.lag.clone()))?;
        registry.register(Box::new(m.audit.written.clone()))?;
        registry.register(Box::new(m.audit.queue_depth.clone()))?;
        registry.register(Box::new(m.notifications_sent.clone()))?;
        registry.register(Box::new(m.notifications_retried.clone()))?;
        registry.register(Box::new(m.notifications_failed.clone()))?;
        registry.register(Box::new(m.outbox_depth.clone()))?;
        registry.register(Box::new(m.chat_actions.clone()))?;
        Ok(m)
    }

    /// Counts a decision on a request made at `created_at`, decided at `now`.
    pub fn decided(&self, outcome: &str, created_at: i64, now: i64) {
        self.decisions.with_label_values(&[outcome]).inc();
        let waited = crate::time::duration(now.saturating_sub(created_at));
        self.time_to_decision
            .with_label_values(&[outcome])
            .observe(waited.as_secs_f64());
    }
}
