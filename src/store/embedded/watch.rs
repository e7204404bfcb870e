//! Watches: replay from the history table, then follow the live broadcast, catching up from
//! the history table again whenever the broadcast was missed (a lagging receiver).
//!
//! Correctness rests on the order of operations: the watcher subscribes to the broadcast
//! *before* reading history, and the writer commits a batch *before* broadcasting it. So every
//! revision is either in the history read or still ahead in the receiver (or both: duplicates
//! are dropped by revision, since `next` is the next revision the watcher needs).

use std::sync::{Arc, Weak};

use futures::StreamExt;
use redb::Database;
use tokio::sync::broadcast::{self, error::RecvError};

use super::CommittedBatch;
use super::db::{self, RevisionEvents};
use crate::store::WatchStream;
use crate::store::error::StoreError;
use crate::store::types::{Event, Revision};

/// Revisions read from the history table per step.
const HISTORY_CHUNK: usize = 512;

enum Mode {
    CatchUp,
    Live,
}

struct Watcher {
    prefix: String,
    /// The next revision this watcher has to deliver.
    next: Revision,
    rx: broadcast::Receiver<Arc<CommittedBatch>>,
    db: Weak<Database>,
    mode: Mode,
    done: bool,
}

pub(super) fn stream(
    prefix: String,
    from: Revision,
    rx: broadcast::Receiver<Arc<CommittedBatch>>,
    db: Weak<Database>,
) -> WatchStream {
    let watcher = Watcher {
        prefix,
        next: from,
        rx,
        db,
        mode: Mode::CatchUp,
        done: false,
    };
    futures::stream::unfold(watcher, |mut w| async move {
        let item = w.next_item().await?;
        Some((item, w))
    })
    .boxed()
}

impl Watcher {
    fn fail(&mut self, err: StoreError) -> Option<Result<Vec<Event>, StoreError>> {
        self.done = true;
        Some(Err(err))
    }

    /// Takes the events of `entries` at or after `next`. With `strict` (live batches, whose
    /// revisions follow each other) stops at a revision after `next` and returns true: the
    /// watcher missed something and must catch up. History entries are taken as they come: a
    /// revision absent from history had no events.
    fn take<'a>(
        &mut self,
        entries: impl IntoIterator<Item = &'a RevisionEvents>,
        strict: bool,
        out: &mut Vec<Event>,
    ) -> bool {
        for entry in entries {
            if entry.revision < self.next {
                continue;
            }
            if strict && entry.revision > self.next {
                return true;
            }
            out.extend(
                entry
                    .events
                    .iter()
                    .filter(|ev| ev.kv.key.starts_with(&self.prefix))
                    .cloned(),
            );
            self.next = entry.revision + 1;
        }
        false
    }

    async fn next_item(&mut self) -> Option<Result<Vec<Event>, StoreError>> {
        loop {
            if self.done {
                return None;
            }
            let mut out = Vec::new();
            match self.mode {
                Mode::CatchUp => {
                    let Some(db) = self.db.upgrade() else {
                        return self.fail(StoreError::Closed);
                    };
                    let from = self.next;
                    let read = tokio::task::spawn_blocking(move || {
                        db::read_history(&db, from, HISTORY_CHUNK)
                    })
                    .await;
                    let chunk = match read {
                        Ok(Ok(chunk)) => chunk,
                        Ok(Err(e)) => return self.fail(e),
                        Err(e) => {
                            return self.fail(StoreError::Backend(format!("history read: {e}")));
                        }
                    };
                    if chunk.len() < HISTORY_CHUNK {
                        self.mode = Mode::Live;
                    }
                    self.take(&chunk, false, &mut out);
                }
                Mode::Live => match self.rx.recv().await {
                    Ok(batch) => {
                        if self.take(&batch.entries, true, &mut out) {
                            self.mode = Mode::CatchUp;
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        tracing::debug!(
                            missed,
                            next = self.next,
                            "watcher lagged: catching up from history"
                        );
                        self.mode = Mode::CatchUp;
                    }
                    Err(RecvError::Closed) => return self.fail(StoreError::Closed),
                },
            }
            if !out.is_empty() {
                return Some(Ok(out));
            }
        }
    }
}
