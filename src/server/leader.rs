//! Membership and leader election through store leases.
//!
//! Each server holds a lease: its member key (`/caravan/<region>/member/<name>`) is attached to
//! it, so `server members` lists exactly the live servers. The leader is whoever created
//! `/caravan/<region>/leader` (attached to its lease) — when it dies its lease expires, the key
//! goes, and the others campaign again. Controllers run only on the leader, and every write they
//! make compares the leader key with their own name, so a deposed leader cannot write.

use super::Server;
use super::objects::{Kind, Object};
use crate::store::{Compare, EventKind, LeaseId, Op, StoreError, Txn};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::watch;

/// How long a server's lease lives without a keep-alive: the failover time.
pub const LEASE_TTL: Duration = Duration::from_secs(4);

/// A live server, as `GET /v1/agent/members` lists it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Member {
    pub name: String,
    pub addr: String,
    pub port: u16,
    pub status: String,
    pub tags: BTreeMap<String, String>,
}

impl Object for Member {
    const KIND: Kind = Kind::Member;
    fn key(&self, keys: &super::objects::Keys) -> String {
        format!("{}{}", keys.members(), self.name)
    }
    fn set_indexes(&mut self, _create: i64, _modify: i64) {}
}

/// The leader's record under the leader key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct LeaderRecord {
    pub name: String,
    /// `ip:port` of its HTTP API.
    pub addr: String,
}

/// Whether this server leads, as it changes.
#[derive(Clone, Debug)]
pub struct Leadership {
    pub is_leader: watch::Receiver<bool>,
}

impl Server {
    /// This server's member record.
    pub fn member(&self) -> Member {
        let (addr, port) = self
            .identity
            .advertise
            .rsplit_once(':')
            .map(|(a, p)| (a.to_owned(), p.parse().unwrap_or(0)))
            .unwrap_or_else(|| (self.identity.advertise.clone(), 0));
        let tags = [
            ("region", self.identity.region.as_str()),
            ("dc", self.identity.datacenter.as_str()),
            ("build", env!("CARGO_PKG_VERSION")),
            ("role", "caravan"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        Member {
            name: format!("{}.{}", self.identity.name, self.identity.region),
            addr,
            port,
            status: "alive".into(),
            tags,
        }
    }

    /// The compare every leader-only write carries.
    pub fn leader_fence(&self) -> Compare {
        let record = LeaderRecord {
            name: self.member().name,
            addr: self.identity.advertise.clone(),
        };
        Compare::value(
            self.keys.leader(),
            crate::store::CompareOp::Equal,
            serde_json::to_vec(&record).unwrap_or_default(),
        )
    }

    /// Registers this server and campaigns for leadership until the store closes. Returns at
    /// once with a receiver that says whether this server currently leads.
    pub fn start_membership(self: &std::sync::Arc<Self>) -> Leadership {
        let (tx, rx) = watch::channel(false);
        let server = std::sync::Arc::clone(self);
        let span = tracing::info_span!("membership", server = %server.identity.name);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                loop {
                    match server.hold_lease(&tx).await {
                        Err(StoreError::Closed) => return,
                        Err(e) => tracing::warn!(error = %e, "membership lost; registering again"),
                        Ok(()) => {}
                    }
                    tx.send_replace(false);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
            span,
        ));
        Leadership { is_leader: rx }
    }

    async fn hold_lease(&self, is_leader: &watch::Sender<bool>) -> Result<(), StoreError> {
        let lease = self.store.grant_lease(LEASE_TTL).await?;
        let member = self.member();
        self.store
            .put_with_lease(
                &member.key(&self.keys),
                serde_json::to_vec(&member).unwrap_or_default(),
                lease,
            )
            .await?;
        let keep_alive = self.keep_alive(lease);
        let campaign = self.campaign(lease, is_leader);
        tokio::select! {
            r = keep_alive => r,
            r = campaign => r,
        }
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        loop {
            tokio::time::sleep(LEASE_TTL / 4).await;
            self.store.keep_alive(lease).await?;
        }
    }

    async fn campaign(
        &self,
        lease: LeaseId,
        is_leader: &watch::Sender<bool>,
    ) -> Result<(), StoreError> {
        let key = self.keys.leader();
        let record = LeaderRecord {
            name: self.member().name,
            addr: self.identity.advertise.clone(),
        };
        let value = serde_json::to_vec(&record).unwrap_or_default();
        loop {
            let txn = Txn::new()
                .when([Compare::absent(key.clone())])
                .and_then([Op::put_with_lease(key.clone(), value.clone(), lease)])
                .or_else([Op::get(key.clone())]);
            let resp = self.store.txn(txn).await?;
            let held_by_us =
                resp.succeeded || resp.get_result(0).is_some_and(|kv| kv.value == value);
            if held_by_us {
                tracing::info!("became leader");
            }
            is_leader.send_replace(held_by_us);
            // Wait until the leader key goes away (or changes hands), then try again.
            let mut watch = self.store.watch(&key, resp.revision + 1).await?;
            loop {
                match watch.next().await {
                    Some(Ok(events)) if events.iter().any(|e| e.kind == EventKind::Delete) => break,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e),
                    None => return Err(StoreError::Closed),
                }
            }
            if held_by_us {
                tracing::warn!("lost leadership");
            }
            is_leader.send_replace(false);
        }
    }

    /// The current leader, from the store.
    pub async fn leader(&self) -> Result<Option<LeaderRecord>, StoreError> {
        Ok(self
            .store
            .get(&self.keys.leader())
            .await?
            .and_then(|kv| serde_json::from_slice(&kv.value).ok()))
    }
}
