//! The node controller: a node whose heartbeat lease expired is marked down (its allocations
//! then become lost and are replaced by the job controller), and a drain that has nothing left
//! to move is completed.
//!
//! Heartbeats are store leases (see `writes_nodes`): the store deletes a node's heartbeat key
//! when the node stops heartbeating for TTL + grace. This controller reacts to nodes and
//! heartbeat keys changing, and resyncs every few seconds as a safety net.

use super::Server;
use super::cache::Notice;
use super::objects::{Index, Keys, Kind, Object};
use super::runtime::{self, Controller, Next, WorkQueue};
use super::writes::now_nanos;
use super::writes_nodes::HeartbeatRecord;
use crate::store::{Compare, Op, Txn};
use caravan_schemas::alloc::Allocation;
use caravan_schemas::job::JobType;
use caravan_schemas::node::{DrainStatus, Node, NodeEvent, NodeStatus, subsystems};
use caravan_schemas::time::Timestamp;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::Instrument;

/// How often every node is checked even when nothing changed.
const RESYNC: Duration = Duration::from_secs(5);

impl Object for HeartbeatRecord {
    const KIND: Kind = Kind::Heartbeat;
    fn key(&self, _keys: &Keys) -> String {
        // Heartbeat records are keyed by node id, which they don't carry; they are written by
        // `writes_nodes` with the key it builds.
        String::new()
    }
    fn set_indexes(&mut self, _create: i64, _modify: i64) {}
}

/// The node controller.
#[derive(Debug)]
pub struct NodeController {
    server: Arc<Server>,
    queue: Arc<WorkQueue<String>>,
}

/// Starts the node controller; it acts while `leading` is true.
pub fn start(server: Arc<Server>, leading: watch::Receiver<bool>) -> Arc<NodeController> {
    let controller = Arc::new(NodeController {
        server,
        queue: WorkQueue::new(),
    });
    let feed = {
        let c = Arc::clone(&controller);
        let mut nodes = c.server.cache.nodes.changes();
        let mut beats = c.server.cache.heartbeats.changes();
        let mut tick = tokio::time::interval(RESYNC);
        async move {
            loop {
                tokio::select! {
                    n = nodes.recv() => match n {
                        Ok(notice) => match notice.as_ref() {
                            Notice::Changed(changes) => {
                                for ch in changes {
                                    if let Some(node) = ch.new.as_ref().or(ch.old.as_ref()) {
                                        c.queue.add(node.id.to_string());
                                    }
                                }
                            }
                            Notice::Resync => c.enqueue_all(),
                        },
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => c.enqueue_all(),
                        Err(_) => return,
                    },
                    b = beats.recv() => match b {
                        Ok(notice) => match notice.as_ref() {
                            Notice::Changed(changes) => {
                                for ch in changes {
                                    if let Some(id) = ch.key.rsplit('/').next() {
                                        c.queue.add(id.to_owned());
                                    }
                                }
                            }
                            Notice::Resync => c.enqueue_all(),
                        },
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => c.enqueue_all(),
                        Err(_) => return,
                    },
                    _ = tick.tick() => c.enqueue_all(),
                }
            }
        }
    };
    tokio::spawn(feed.instrument(tracing::info_span!("node-controller-feed")));
    let metrics = Arc::clone(&controller.server.metrics);
    runtime::run(
        Arc::clone(&controller),
        Arc::clone(&controller.queue),
        1,
        leading,
        metrics,
    );
    controller
}

impl NodeController {
    fn enqueue_all(&self) {
        for node in self.server.cache.nodes.snapshot().objects.values() {
            self.queue.add(node.id.to_string());
        }
    }

    fn has_heartbeat(&self, node_id: &str) -> bool {
        self.server
            .cache
            .heartbeats
            .get(&self.server.heartbeat_key(node_id))
            .is_some()
    }

    /// Writes the node back, fenced by leadership and guarded by the revision it was read at.
    async fn write(&self, node: &Node, extra: Vec<Compare>) -> Result<(), String> {
        let key = node.key(&self.server.keys);
        let value = serde_json::to_vec(node).map_err(|e| e.to_string())?;
        let mut compares = vec![
            self.server.leader_fence(),
            Compare::unchanged(key.clone(), node.modify_index),
        ];
        compares.extend(extra);
        let resp = self
            .server
            .store
            .txn(Txn::new().when(compares).and_then([Op::put(key, value)]))
            .await
            .map_err(|e| e.to_string())?;
        if !resp.succeeded {
            return Err("the node changed meanwhile; recomputing".into());
        }
        self.server
            .cache
            .wait_for(resp.revision, Duration::from_secs(5))
            .await;
        Ok(())
    }
}

/// Whether a drain still has allocations to move off the node.
fn drain_remaining(node: &Node, allocs: &[&Allocation]) -> bool {
    let ignore_system = node
        .drain_strategy
        .as_ref()
        .is_some_and(|d| d.drain_spec.ignore_system_jobs);
    allocs.iter().any(|a| {
        let system = a
            .job
            .as_ref()
            .is_some_and(|j| matches!(j.r#type, JobType::System | JobType::Sysbatch));
        !a.is_terminal() && (!system || !ignore_system)
    })
}

#[async_trait::async_trait]
impl Controller for NodeController {
    type Key = String;

    fn name(&self) -> &'static str {
        "node"
    }

    async fn reconcile(&self, id: &String) -> Result<Next, String> {
        let Some(node) = self.server.cache.nodes.get(&self.server.keys.node(id)) else {
            return Ok(Next::Idle);
        };
        let now = now_nanos();
        if matches!(node.status, NodeStatus::Ready | NodeStatus::Initializing)
            && !self.has_heartbeat(id)
        {
            let mut down = (*node).clone();
            down.status = NodeStatus::Down;
            down.status_description = "node missed its heartbeats".into();
            down.status_updated_at = now / 1_000_000_000;
            down.events.push(NodeEvent {
                message: "Node heartbeat missed".into(),
                subsystem: subsystems::CLUSTER.into(),
                timestamp: Timestamp::from_unix_nanos(now),
                ..NodeEvent::default()
            });
            let excess = down
                .events
                .len()
                .saturating_sub(super::writes_nodes::MAX_NODE_EVENTS);
            down.events.drain(..excess);
            tracing::warn!(node = %id, "node missed its heartbeats; marking it down");
            // Only if the node did not heartbeat again meanwhile.
            self.write(&down, vec![Compare::absent(self.server.heartbeat_key(id))])
                .await?;
            return Ok(Next::Idle);
        }
        if node.drain_strategy.is_some() {
            let allocs = self.server.cache.allocs.snapshot();
            let on_node: Vec<&Allocation> =
                allocs.by(Index::ByNode, id).map(AsRef::as_ref).collect();
            if !drain_remaining(&node, &on_node) {
                let mut done = (*node).clone();
                done.drain_strategy = None;
                done.drain = false;
                if let Some(last) = &mut done.last_drain {
                    last.status = DrainStatus::Complete;
                    last.updated_at = Timestamp::from_unix_nanos(now);
                }
                done.events.push(NodeEvent {
                    message: "Node drain complete".into(),
                    subsystem: subsystems::DRAIN.into(),
                    timestamp: Timestamp::from_unix_nanos(now),
                    ..NodeEvent::default()
                });
                let excess = done
                    .events
                    .len()
                    .saturating_sub(super::writes_nodes::MAX_NODE_EVENTS);
                done.events.drain(..excess);
                self.write(&done, Vec::new()).await?;
            }
        }
        Ok(Next::Idle)
    }
}
