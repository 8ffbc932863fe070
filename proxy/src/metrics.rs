//! Prometheus metrics of the proxy: connections by outcome, live sessions, cuts by reason, bytes.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Handles to the proxy's metrics; cheap to clone.
#[derive(Clone)]
pub struct ProxyMetrics {
    /// `portcullis_connections_total{protocol, resource, outcome}`.
    pub connections: IntCounterVec,
    /// `portcullis_sessions_active{protocol}`.
    pub sessions_active: IntGaugeVec,
    /// `portcullis_session_cuts_total{protocol, reason}`.
    pub cuts: IntCounterVec,
    /// `portcullis_bytes_relayed_total{protocol, direction}`.
    pub bytes: IntCounterVec,
    /// `portcullis_upstream_connections_total{resource, source}`: `pool` or `login`.
    pub upstream: IntCounterVec,
    /// `portcullis_upstream_idle_connections`: warm server connections in the pool.
    pub pool_idle: IntGauge,
    /// `portcullis_audit_queue_waits_total`: events that waited for room in the audit queue.
    pub audit_waits: IntCounter,
    /// `portcullis_audit_queue_depth`: events and statement batches waiting
    /// for the audit thread (as it last looked).
    pub audit_depth: IntGauge,
}

impl ProxyMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let connections = IntCounterVec::new(
            Opts::new(
                "portcullis_connections_total",
                "Client connections by protocol, resource and outcome (allowed or why refused)",
            ),
            &["protocol", "resource", "outcome"],
        )?;
        let sessions_active = IntGaugeVec::new(
            Opts::new("portcullis_sessions_active", "Live proxied sessions"),
            &["protocol"],
        )?;
        let cuts = IntCounterVec::new(
            Opts::new(
                "portcullis_session_cuts_total",
                "Sessions ended by the gateway, by reason (expired, revoked, killed, shutdown)",
            ),
            &["protocol", "reason"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new(
                "portcullis_bytes_relayed_total",
                "Bytes relayed, counted when a session ends",
            ),
            &["protocol", "direction"],
        )?;
        let upstream = IntCounterVec::new(
            Opts::new(
                "portcullis_upstream_connections_total",
                "Server connections given to sessions, by resource and source (pool: a warm one reused; login: a new one)",
            ),
            &["resource", "source"],
        )?;
        let pool_idle = IntGauge::new(
            "portcullis_upstream_idle_connections",
            "Warm server connections waiting in the pool for the next session",
        )?;
        registry.register(Box::new(upstream.clone()))?;
        let audit_waits = IntCounter::new(
            "portcullis_audit_queue_waits_total",
            "Audit events that found the queue full and slowed their session until there was room",
        )?;
        registry.register(Box::new(pool_idle.clone()))?;
        registry.register(Box::new(audit_waits.clone()))?;
        let audit_depth = IntGauge::new(
            "portcullis_audit_queue_depth",
            "Audit events and statement batches waiting for the proxy's audit thread (as it last looked)",
        )?;
        registry.register(Box::new(audit_depth.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(sessions_active.clone()))?;
        registry.register(Box::new(cuts.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        Ok(ProxyMetrics {
            connections,
            sessions_active,
            cuts,
            bytes,
            upstream,
            pool_idle,
            audit_waits,
            audit_depth,
        })
    }

    /// Counts one connection attempt's outcome.
    pub fn connection(&self, protocol: &str, resource: &str, outcome: &str) {
        self.connections.with_label_values(&[protocol, resource, outcome]).inc();
    }
}
