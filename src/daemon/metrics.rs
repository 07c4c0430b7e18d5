//! Prometheus/OpenMetrics metrics (prometheus-client). Labels are bounded sets —
//! invariant, severity, outcome, realm, system — never a player, account or item id.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::core::engine::Outcome;
use crate::core::finding::Finding;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FindingLabels {
    pub invariant: &'static str,
    pub severity: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    pub realm: String,
    pub system: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabel {
    pub decision: &'static str,
}

pub struct Metrics {
    pub registry: Registry,
    pub messages_received: Counter,
    pub events: Family<OutcomeLabel, Counter>,
    pub findings: Family<FindingLabels, Counter>,
    pub stream_lag_seconds: Family<StreamLabels, Gauge<f64, AtomicU64>>,
    pub processing_lag_seconds: Gauge<f64, AtomicU64>,
    pub checkpoint_seconds: Histogram,
    pub snapshot_bytes: Gauge,
    pub journal_position: Gauge,
    pub reorder_buffer_events: Gauge,
    pub detection_latency_seconds: Histogram,
    pub batch_events: Histogram,
    pub dead_lettered: Counter,
    pub reconnects: Counter,
    pub broker_connected: Gauge,
    pub database_connected: Gauge,
    pub gate_score: Gauge,
    pub gate_decision: Family<DecisionLabel, Gauge>,
    pub open_blocking_findings: Gauge,
    /// Reconciliation runs by outcome (clean, divergent, failed).
    pub recon_runs: Family<OutcomeLabel, Counter>,
    pub recon_last_run_timestamp_seconds: Gauge<f64, AtomicU64>,
    pub recon_divergent_keys: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("assayer");
        let m = Metrics {
            messages_received: Counter::default(),
            events: Family::default(),
            findings: Family::default(),
            stream_lag_seconds: Family::default(),
            processing_lag_seconds: Gauge::default(),
            // 1 ms .. ~16 s
            checkpoint_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            snapshot_bytes: Gauge::default(),
            journal_position: Gauge::default(),
            reorder_buffer_events: Gauge::default(),
            // 100 µs .. ~3 s
            detection_latency_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 15)),
            batch_events: Histogram::new(exponential_buckets(1.0, 4.0, 9)),
            dead_lettered: Counter::default(),
            reconnects: Counter::default(),
            broker_connected: Gauge::default(),
            database_connected: Gauge::default(),
            gate_score: Gauge::default(),
            gate_decision: Family::default(),
            open_blocking_findings: Gauge::default(),
            recon_runs: Family::default(),
            recon_last_run_timestamp_seconds: Gauge::default(),
            recon_divergent_keys: Gauge::default(),
            registry: Registry::default(),
        };
        r.register(
            "messages_received",
            "AMQP messages received",
            m.messages_received.clone(),
        );
        r.register(
            "events",
            "Events by outcome: accepted, redelivered, conflict, stale, malformed",
            m.events.clone(),
        );
        r.register(
            "findings",
            "Findings raised, by invariant and severity",
            m.findings.clone(),
        );
        r.register(
            "stream_lag_seconds",
            "Wall clock minus the newest event ts seen, per realm and system (a silent system grows)",
            m.stream_lag_seconds.clone(),
        );
        r.register(
            "processing_lag_seconds",
            "Wall clock minus ts of the newest event in the last batch (how far behind the consumer is)",
            m.processing_lag_seconds.clone(),
        );
        r.register(
            "checkpoint_duration_seconds",
            "Time to commit a batch (journal, findings, head, snapshot) to PostgreSQL",
            m.checkpoint_seconds.clone(),
        );
        r.register(
            "checkpoint_snapshot_bytes",
            "Size of the last engine snapshot",
            m.snapshot_bytes.clone(),
        );
        r.register(
            "journal_position",
            "Journal head of this daemon's group",
            m.journal_position.clone(),
        );
        r.register(
            "reorder_buffer_events",
            "Events held in the reorder window",
            m.reorder_buffer_events.clone(),
        );
        r.register(
            "detection_latency_seconds",
            "From receipt of the message to the finding being published",
            m.detection_latency_seconds.clone(),
        );
        r.register(
            "batch_events",
            "Events per committed batch",
            m.batch_events.clone(),
        );
        r.register(
            "dead_lettered_messages",
            "Messages sent to the dead-letter queue",
            m.dead_lettered.clone(),
        );
        r.register(
            "reconnects",
            "Sessions restarted after a broker or database failure",
            m.reconnects.clone(),
        );
        r.register(
            "broker_connected",
            "1 while connected to RabbitMQ",
            m.broker_connected.clone(),
        );
        r.register(
            "database_connected",
            "1 while connected to PostgreSQL",
            m.database_connected.clone(),
        );
        r.register(
            "gate_score",
            "The deploy gate's score, 0-100 (GET /v1/gate)",
            m.gate_score.clone(),
        );
        r.register(
            "gate_decision",
            "1 for the deploy gate's current decision (go, marginal, no_go), 0 for the others",
            m.gate_decision.clone(),
        );
        r.register(
            "open_blocking_findings",
            "Open (unacknowledged) critical and major findings in the database",
            m.open_blocking_findings.clone(),
        );
        r.register(
            "recon_runs",
            "Scheduled reconciliation runs, by outcome (clean, divergent, failed)",
            m.recon_runs.clone(),
        );
        r.register(
            "recon_last_run_timestamp_seconds",
            "When the last reconciliation run finished (Unix seconds)",
            m.recon_last_run_timestamp_seconds.clone(),
        );
        r.register(
            "recon_divergent_keys",
            "Divergent keys found by the last reconciliation run",
            m.recon_divergent_keys.clone(),
        );
        Metrics { registry: r, ..m }
    }

    pub fn outcome(&self, o: Outcome) {
        let outcome = match o {
            Outcome::Accepted => "accepted",
            Outcome::Redelivered => "redelivered",
            Outcome::Conflict => "conflict",
            Outcome::Stale => "stale",
            Outcome::Malformed => "malformed",
        };
        self.events.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    pub fn finding(&self, f: &Finding) {
        self.findings
            .get_or_create(&FindingLabels {
                invariant: f.invariant.id(),
                severity: f.severity.as_str(),
            })
            .inc();
    }

    /// Shows a gate report on the gauges.
    pub fn gate(&self, r: &crate::core::gate::GateReport) {
        self.gate_score.set(i64::from(r.score));
        for d in crate::core::gate::Decision::ALL {
            self.gate_decision
                .get_or_create(&DecisionLabel {
                    decision: d.metric_label(),
                })
                .set(i64::from(d == r.decision));
        }
        if let Some(n) = r.open_blocking_findings {
            self.open_blocking_findings.set(n as i64);
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding into a String cannot fail");
        out
    }
}
