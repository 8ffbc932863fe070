//! Metrics of a split proxy's link to its control plane: the feed's
//! revision, staleness and lag, reconnects and resyncs, and the audit spool.

use prometheus::{Gauge, Histogram, HistogramOpts, IntCounter, IntGauge, Registry};

/// Lag buckets, in seconds: milliseconds when all is well, fine enough for
/// the load harness to read p50 and p99 from them.
const LAG_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// Handles to the feed's metrics; cheap to clone.
#[derive(Clone)]
pub struct FeedMetrics {
    /// `portcullis_feed_revision`: the feed revision applied last.
    pub revision: IntGauge,
    /// `portcullis_feed_staleness_seconds`: since the control plane was last heard from.
    pub staleness: Gauge,
    /// `portcullis_feed_lag_seconds`: from a change's publication to its application here.
    pub lag: Histogram,
    /// `portcullis_feed_reconnects_total`: feed connections lost or refused.
    pub reconnects: IntCounter,
    /// `portcullis_feed_resyncs_total`: snapshots taken after the first.
    pub resyncs: IntCounter,
    /// `portcullis_audit_spool_depth`: audit events waiting for the control plane.
    pub spool_depth: IntGauge,
    /// `portcullis_audit_refused_events_total`: audit events the control
    /// plane refused, set aside in the spool's `refused.jsonl`.
    pub audit_refused: IntCounter,
}

impl FeedMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<FeedMetrics, prometheus::Error> {
        let m = FeedMetrics {
            revision: IntGauge::new("portcullis_feed_revision", "Grant feed revision applied last")?,
            staleness: Gauge::new(
                "portcullis_feed_staleness_seconds",
                "Seconds since the control plane was last heard from (change, heartbeat or snapshot)",
            )?,
            lag: Histogram::with_opts(
                HistogramOpts::new(
                    "portcullis_feed_lag_seconds",
                    "Seconds from a change's publication on the control plane to its application here (includes clock skew)",
                )
                .buckets(LAG_BUCKETS.to_vec()),
            )?,
            reconnects: IntCounter::new(
                "portcullis_feed_reconnects_total",
                "Feed connections to the control plane lost or refused",
            )?,
            resyncs: IntCounter::new(
                "portcullis_feed_resyncs_total",
                "Snapshots taken after the first (cursor too old, or the control plane restarted)",
            )?,
            spool_depth: IntGauge::new(
                "portcullis_audit_spool_depth",
                "Audit events waiting to be delivered to the control plane",
            )?,
            audit_refused: IntCounter::new(
                "portcullis_audit_refused_events_total",
                "Audit events the control plane refused as they are, set aside in DATA_DIR/spool/refused.jsonl",
            )?,
        };
        registry.register(Box::new(m.revision.clone()))?;
        registry.register(Box::new(m.staleness.clone()))?;
        registry.register(Box::new(m.lag.clone()))?;
        registry.register(Box::new(m.reconnects.clone()))?;
        registry.register(Box::new(m.resyncs.clone()))?;
        registry.register(Box::new(m.spool_depth.clone()))?;
        registry.register(Box::new(m.audit_refused.clone()))?;
        Ok(m)
    }
}
