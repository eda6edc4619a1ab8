//! Asynchronous audit writer for events that accompany no state change (refused admin
//! calls). A bounded queue decouples the request from the database: an attacker flooding
//! bad requests fills the queue, and further events are counted as dropped, instead of
//! every refusal costing a database write on the request path.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::domain::AuditEvent;
use crate::metrics::Metrics;
use crate::store::Store;

const QUEUE: usize = 1024;
const BATCH: usize = 128;

#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<AuditEvent>,
    metrics: Arc<Metrics>,
}

impl AuditSink {
    /// The sink and the writer task that drains it (spawn it; it ends when every sink is
    /// dropped, after writing what is queued).
    pub fn new(store: Arc<dyn Store>, metrics: Arc<Metrics>) -> (AuditSink, impl Future<Output = ()> + Send) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (AuditSink { tx, metrics }, write_loop(store, rx))
    }

    pub fn submit(&self, event: AuditEvent) {
        if self.tx.try_send(event).is_err() {
            self.metrics.audit_dropped.inc();
        }
    }
}

async fn write_loop(store: Arc<dyn Store>, mut rx: mpsc::Receiver<AuditEvent>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        if let Err(e) = store.record_audit(&batch).await {
            tracing::warn!(error = %e, events = batch.len(), "could not write audit events");
        }
        batch.clear();
    }
}
