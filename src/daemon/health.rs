//! What `/readyz` reports: the daemon is connected to the broker and the database, its
//! last checkpoint is recent, and it is not lagging behind the stream.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

pub struct Health {
    inner: Mutex<Inner>,
    checkpoint_age_max: Duration,
    lag_max: Duration,
}

struct Inner {
    broker: bool,
    database: bool,
    /// Last time everything received was durable (a commit, or an idle tick with
    /// nothing pending).
    durable_at: Option<Instant>,
    /// When `processing_lag` was last measured on a batch.
    lag_at: Option<Instant>,
    processing_lag: Duration,
    last_error: Option<String>,
    progress: Progress,
}

/// Where the audit stands, for the status row the deploy gate reads.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub journal_position: i64,
    pub reorder_depth: u64,
    /// The engine holds its order-dependent checks (the start of a session).
    pub holding: bool,
    pub streams: Vec<crate::core::gate::StreamStatus>,
}

#[derive(Debug, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub broker_connected: bool,
    pub database_connected: bool,
    pub checkpoint_age_ms: Option<u64>,
    pub checkpoint_age_max_ms: u64,
    pub lag_ms: u64,
    pub lag_max_ms: u64,
    pub last_error: Option<String>,
}

impl Health {
    pub fn new(checkpoint_age_max: Duration, lag_max: Duration) -> Health {
        Health {
            inner: Mutex::new(Inner {
                broker: false,
                database: false,
                durable_at: None,
                lag_at: None,
                processing_lag: Duration::ZERO,
                last_error: None,
                progress: Progress::default(),
            }),
            checkpoint_age_max,
            lag_max,
        }
    }

    fn with(&self, f: impl FnOnce(&mut Inner)) {
        // A poisoned lock only means a panic elsewhere; the data is plain values.
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g);
    }

    pub fn connected(&self, broker: bool, database: bool) {
        self.with(|i| {
            i.broker = broker;
            i.database = database;
        });
    }

    /// Nothing pending: everything received is durable. The consumer lag drops to zero
    /// only after `settle` without a batch, so a daemon that keeps up with a trickle of
    /// old events between idle ticks still reports how far behind they are.
    pub fn idle(&self, settle: Duration) {
        self.with(|i| {
            let now = Instant::now();
            if i.lag_at.is_none_or(|t| now.duration_since(t) >= settle) {
                i.processing_lag = Duration::ZERO;
            }
            i.durable_at = Some(now);
            i.last_error = None;
        });
    }

    pub fn durable(&self, processing_lag: Duration) {
        self.with(|i| {
            let now = Instant::now();
            i.durable_at = Some(now);
            i.processing_lag = processing_lag;
            i.lag_at = Some(now);
            i.last_error = None;
        });
    }

    pub fn failed(&self, error: String) {
        self.with(|i| {
            i.broker = false;
            i.database = false;
            i.last_error = Some(error);
        });
    }

    pub fn progress(&self, p: Progress) {
        self.with(|i| i.progress = p);
    }

    /// What the status row reports: broker connected, lag, progress.
    pub fn status(&self) -> (bool, Duration, Progress) {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (g.broker, g.processing_lag, g.progress.clone())
    }

    pub fn readiness(&self) -> Readiness {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let age = g.durable_at.map(|t| t.elapsed());
        let ready = g.broker
            && g.database
            && age.is_some_and(|a| a <= self.checkpoint_age_max)
            && g.processing_lag <= self.lag_max;
        Readiness {
            ready,
            broker_connected: g.broker,
            database_connected: g.database,
            checkpoint_age_ms: age.map(|a| a.as_millis() as u64),
            checkpoint_age_max_ms: self.checkpoint_age_max.as_millis() as u64,
            lag_ms: g.processing_lag.as_millis() as u64,
            lag_max_ms: self.lag_max.as_millis() as u64,
            last_error: g.last_error.clone(),
        }
    }
}
