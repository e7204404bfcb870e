//! Writes of the load balancer's objects: TrafficSplits (from users, `PUT|DELETE
//! /v1/traffic-split/:name`) and the route table (from the lb-config controller). Each is one
//! transaction guarded by the revision it was computed from; a split write that changes nothing
//! writes nothing, so `caravan apply` can say `unchanged`.

use super::Server;
use super::cache::decode;
use super::objects::{Kind, Object};
use super::writes::WriteError;
use crate::store::{Compare, Op, Txn};
use caravan_schemas::lb::{RouteTable, TrafficSplit, split_problems};
use std::time::Duration;

/// How often a write is recomputed after losing a race before giving up.
const MAX_ATTEMPTS: usize = 16;
/// How long a write waits for the cache to show it before answering.
const READ_YOUR_WRITES: Duration = Duration::from_secs(5);

/// What a TrafficSplit write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitWritten {
    /// The split's ModifyIndex now (the old one when nothing changed).
    pub index: i64,
    /// Whether it was created, changed, or already as asked.
    pub outcome: SplitOutcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitOutcome {
    Created,
    Configured,
    Unchanged,
}

/// The fields a user writes: two splits whose other fields match are the same.
fn spec_of(split: &TrafficSplit) -> TrafficSplit {
    TrafficSplit {
        create_index: 0,
        modify_index: 0,
        ..split.clone()
    }
}

fn json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, WriteError> {
    serde_json::to_vec(value).map_err(|e| WriteError::Invalid(format!("encoding: {e}")))
}

impl Server {
    /// Creates or replaces a TrafficSplit after validating it.
    pub async fn put_traffic_split(&self, split: TrafficSplit) -> Result<SplitWritten, WriteError> {
        let problems = split_problems(&split);
        if !problems.is_empty() {
            let lines: Vec<String> = problems
                .into_iter()
                .map(|(path, m)| format!("{path}: {m}"))
                .collect();
            return Err(WriteError::Invalid(format!(
                "TrafficSplit validation failed: {}",
                lines.join("; ")
            )));
        }
        let next = spec_of(&split);
        let key = next.key(&self.keys);
        for _ in 0..MAX_ATTEMPTS {
            let existing = self
                .store
                .get(&key)
                .await?
                .and_then(|kv| decode::<TrafficSplit>(&kv).map(|s| (s, kv.mod_revision)));
            let (guard, outcome) = match &existing {
                Some((old, rev)) if spec_of(old) == next => {
                    return Ok(SplitWritten {
                        index: *rev,
                        outcome: SplitOutcome::Unchanged,
                    });
                }
                Some((_, rev)) => (
                    Compare::unchanged(key.clone(), *rev),
                    SplitOutcome::Configured,
                ),
                None => (Compare::absent(key.clone()), SplitOutcome::Created),
            };
            let resp = self
                .store
                .txn(
                    Txn::new()
                        .when([guard])
                        .and_then([Op::put(key.clone(), json(&next)?)]),
                )
                .await?;
            if !resp.succeeded {
                continue;
            }
            self.cache.wait_for(resp.revision, READ_YOUR_WRITES).await;
            return Ok(SplitWritten {
                index: resp.revision,
                outcome,
            });
        }
        Err(WriteError::Conflict(format!(
            "TrafficSplit {:?} kept changing while writing it; try again",
            split.name
        )))
    }

    /// Deletes a TrafficSplit; the index of the deletion.
    pub async fn delete_traffic_split(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<i64, WriteError> {
        let key = self.keys.key(Kind::TrafficSplit, namespace, name);
        for _ in 0..MAX_ATTEMPTS {
            let Some(kv) = self.store.get(&key).await? else {
                return Err(WriteError::NotFound("traffic split not found".into()));
            };
            let resp = self
                .store
                .txn(
                    Txn::new()
                        .when([Compare::unchanged(key.clone(), kv.mod_revision)])
                        .and_then([Op::delete(key.clone())]),
                )
                .await?;
            if !resp.succeeded {
                continue;
            }
            self.cache.wait_for(resp.revision, READ_YOUR_WRITES).await;
            return Ok(resp.revision);
        }
        Err(WriteError::Conflict(format!(
            "TrafficSplit {name:?} kept changing while deleting it; try again"
        )))
    }

    /// Writes the route table if the stored one is still at `read_revision` (`None`: there was
    /// none) and `fence` holds. `Ok(None)` when either changed meanwhile.
    pub async fn write_route_table(
        &self,
        table: &RouteTable,
        read_revision: Option<i64>,
        fence: Option<Compare>,
    ) -> Result<Option<i64>, WriteError> {
        let key = self.keys.route_table();
        let mut compares: Vec<Compare> = fence.into_iter().collect();
        compares.push(match read_revision {
            Some(rev) => Compare::unchanged(key.clone(), rev),
            None => Compare::absent(key.clone()),
        });
        let stored = RouteTable {
            modify_index: 0,
            ..table.clone()
        };
        let resp = self
            .store
            .txn(
                Txn::new()
                    .when(compares)
                    .and_then([Op::put(key, json(&stored)?)]),
            )
            .await?;
        if !resp.succeeded {
            return Ok(None);
        }
        self.cache.wait_for(resp.revision, READ_YOUR_WRITES).await;
        Ok(Some(resp.revision))
    }
}
