//! History compaction, as kube-apiserver does it: every interval the leader compacts the store
//! to the revision it saw one interval earlier, so watchers that keep up never notice and the
//! store's history stays bounded.

use super::Server;
use crate::store::StoreError;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::Instrument;

/// How often history is compacted (kube-apiserver's default).
pub const INTERVAL: Duration = Duration::from_secs(300);

/// Compacts while this server leads.
pub fn start(server: Arc<Server>, mut leading: watch::Receiver<bool>, interval: Duration) {
    let task = async move {
        let mut seen: Option<i64> = None;
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            if !*leading.borrow_and_update() {
                seen = None;
                continue;
            }
            if let Some(rev) = seen {
                match server.store.compact(rev).await {
                    Ok(()) => tracing::debug!(revision = rev, "compacted history"),
                    Err(StoreError::Compacted { .. }) => {}
                    Err(StoreError::Closed) => return,
                    Err(e) => tracing::warn!(error = %e, "compaction failed"),
                }
            }
            seen = server.store.current_revision().await.ok();
        }
    };
    tokio::spawn(task.instrument(tracing::info_span!("compactor")));
}
