//! Where the route table comes from: the servers' `GET /v1/lb/routes` followed with blocking
//! queries, or a JSON file re-read when it changes. Either one installs each new table in the
//! [`TableSlot`]; a failure keeps the table in place and is retried.

use super::table::TableSlot;
use crate::client::{Client, ClientError, Config, QueryOptions};
use caravan_schemas::lb::RouteTable;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long one blocking query waits on the server.
pub const BLOCKING_WAIT: Duration = Duration::from_secs(30);
/// How often a route file is checked.
pub const FILE_POLL: Duration = Duration::from_millis(500);
/// The first pause after a failed query; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Why a route table could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("reading the route table {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("decoding the route table {path}: {source}")]
    Decode {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("server {address}: {source}")]
    Client {
        address: String,
        source: ClientError,
    },
}

/// Reads and decodes a route table file.
pub fn read_file(path: &Path) -> Result<(Vec<u8>, RouteTable), WatchError> {
    let bytes = std::fs::read(path).map_err(|source| WatchError::Read {
        path: path.to_owned(),
        source,
    })?;
    let table = serde_json::from_slice(&bytes).map_err(|source| WatchError::Decode {
        path: path.to_owned(),
        source,
    })?;
    Ok((bytes, table))
}

/// Re-reads `path` every [`FILE_POLL`] and installs the table whenever the file's content
/// changes. `last` is the content already installed. A file that cannot be read or decoded is
/// reported once per distinct failure and the table in place stays.
pub async fn follow_file(path: PathBuf, slot: Arc<TableSlot>, mut last: Vec<u8>) {
    let mut ticker = tokio::time::interval(FILE_POLL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error = String::new();
    loop {
        ticker.tick().await;
        let read = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || std::fs::read(&path)).await
        };
        let bytes = match read {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(source)) => {
                let e = WatchError::Read {
                    path: path.clone(),
                    source,
                };
                report(&mut last_error, &e, &slot);
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "the route file reader failed");
                continue;
            }
        };
        if bytes == last {
            continue;
        }
        match serde_json::from_slice::<RouteTable>(&bytes) {
            Ok(table) => {
                let index = table.modify_index;
                let n = table.routes.len();
                if slot.store(table) {
                    tracing::info!(file = %path.display(), index, routes = n, "route table changed");
                }
                last = bytes;
                last_error.clear();
            }
            Err(source) => {
                let e = WatchError::Decode {
                    path: path.clone(),
                    source,
                };
                report(&mut last_error, &e, &slot);
            }
        }
    }
}

fn report(last_error: &mut String, e: &WatchError, slot: &TableSlot) {
    let text = e.to_string();
    if *last_error != text {
        tracing::warn!(error = %text, "keeping the current route table");
        slot.set_waiting(text.clone());
        *last_error = text;
    }
}

/// One client per server address (`http://host:port`, or `host:port`).
pub fn clients(servers: &[String], base: &Config) -> Result<Vec<Client>, WatchError> {
    servers
        .iter()
        .map(|address| {
            Client::new(Config {
                address: address.clone(),
                ..base.clone()
            })
            .map_err(|source| WatchError::Client {
                address: address.clone(),
                source,
            })
        })
        .collect()
}

/// Follows `GET /v1/lb/routes` with blocking queries, from one server until it fails, then
/// from the next one after a growing pause.
pub async fn follow_servers(clients: Vec<Client>, slot: Arc<TableSlot>) {
    if clients.is_empty() {
        slot.set_waiting("no server address given".into());
        return;
    }
    let mut server = 0;
    let mut index: i64 = 0;
    let mut backoff = MIN_BACKOFF;
    loop {
        let client = &clients[server % clients.len()];
        let started = Instant::now();
        let answer = client
            .query::<RouteTable>(
                &["lb", "routes"],
                &QueryOptions::blocking(index, BLOCKING_WAIT),
            )
            .await;
        match answer {
            Ok((table, meta)) => {
                backoff = MIN_BACKOFF;
                let moved = meta.last_index > index;
                // An index that went backwards means another server or a restored store: start
                // over from what this answer says.
                index = meta.last_index.max(0);
                let n = table.routes.len();
                if slot.store(table) {
                    tracing::info!(server = %client.address(), index, routes = n,
                        "route table changed");
                }
                if !moved && started.elapsed() < Duration::from_millis(100) {
                    // The server answered at once without a newer index (it does not block):
                    // do not spin.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            Err(source) => {
                let e = WatchError::Client {
                    address: client.address(),
                    source,
                };
                server += 1;
                let next = clients[server % clients.len()].address();
                tracing::warn!(error = %e, retry_in = ?backoff, next = %next,
                    "fetching the route table failed");
                slot.set_waiting(e.to_string());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
