//! The service-registration controller: the I/O around `caravan_controllers::services`.
//!
//! Nomad's clients register their allocations' services themselves; Caravan's nodes never write
//! to the store, so the leader does it for them from what they report. For one allocation at a
//! time (the queue's key is `namespace/alloc id`) it reads the allocation, its node and the
//! registrations the store holds for it from the cache, asks the pure reconciler what the
//! allocation should have, and writes the difference in transactions fenced by leadership and
//! guarded by revisions: a new registration only if its key is still absent, an update or a
//! delete only if the registration is still the one read.
//!
//! It runs for an allocation whenever the allocation changes (client status, desired status,
//! canary flag, check results, an in-place job update, deletion), when its node's datacenter
//! or address changes, when a registration appears for it, every [`RESYNC`], and for every
//! allocation and every registration's allocation when this server becomes leader — which is
//! how registrations whose allocation is gone (orphans) are removed.

use super::Server;
use super::cache::{self, Change};
use super::objects::{Index, Kind, Object};
use super::runtime::{self, Controller, Next, WorkQueue};
use crate::store::{Compare, Op, Txn};
use caravan_controllers::services::{Plan, reconcile, should_register};
use caravan_schemas::alloc::Allocation;
use caravan_schemas::node::Node;
use caravan_schemas::service::ServiceRegistration;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tracing::Instrument;

/// How often every allocation is looked at even when nothing changed (the safety net).
pub const RESYNC: Duration = Duration::from_secs(30);
/// How long a write waits for the cache to show it before the next reconcile.
const READ_YOUR_WRITES: Duration = Duration::from_secs(5);

/// The service-registration controller.
#[derive(Debug)]
pub struct ServiceController {
    server: Arc<Server>,
    queue: Arc<WorkQueue<String>>,
    /// What was last logged about each allocation's left-out services, so each reason is
    /// logged once, not at every reconcile.
    logged: Mutex<HashMap<String, Vec<String>>>,
}

/// Starts the controller: it works while `leading` is true.
pub fn start(server: Arc<Server>, leading: watch::Receiver<bool>) -> Arc<ServiceController> {
    let controller = Arc::new(ServiceController {
        server,
        queue: WorkQueue::new(),
        logged: Mutex::new(HashMap::new()),
    });
    spawn_feeders(&controller, leading.clone());
    let metrics = Arc::clone(&controller.server.metrics);
    runtime::run(
        Arc::clone(&controller),
        Arc::clone(&controller.queue),
        2,
        leading,
        metrics,
    );
    controller
}

/// The queue key of an allocation.
fn alloc_key(namespace: &str, id: &str) -> String {
    format!("{namespace}/{id}")
}

/// What an allocation's registrations depend on changed, or may have.
fn alloc_matters(ch: &Change<Allocation>) -> bool {
    match (&ch.old, &ch.new) {
        (_, None) => true,
        (old, Some(new)) => should_register(new) || old.as_deref().is_some_and(should_register),
    }
}

/// The node fields registrations copy: its datacenter and address.
fn node_fields(n: &Node) -> (&str, Option<&String>) {
    (
        n.datacenter.as_str(),
        n.attributes.get("unique.network.ip-address"),
    )
}

impl ServiceController {
    /// Queues every allocation that runs and every allocation that has registrations (so that
    /// registrations of allocations that are gone are deleted).
    fn enqueue_all(&self) {
        let cache = &self.server.cache;
        for a in cache.allocs.snapshot().objects.values() {
            if should_register(a) {
                self.queue
                    .add(alloc_key(a.namespace.as_str(), a.id.as_str()));
            }
        }
        for r in cache.services.snapshot().objects.values() {
            self.queue
                .add(alloc_key(r.namespace.as_str(), r.alloc_id.as_str()));
        }
    }

    /// Queues the allocations placed on a node.
    fn enqueue_node(&self, node_id: &str) {
        for a in self
            .server
            .cache
            .allocs
            .snapshot()
            .by(Index::ByNode, node_id)
        {
            self.queue
                .add(alloc_key(a.namespace.as_str(), a.id.as_str()));
        }
    }

    /// The registrations the cache holds for one allocation. Their ids start with
    /// `_nomad-task-<alloc id>-`, so they sit together in the key space.
    fn existing(&self, namespace: &str, alloc_id: &str) -> Vec<ServiceRegistration> {
        let prefix = self.server.keys.key(
            Kind::Service,
            namespace,
            &format!("_nomad-task-{alloc_id}-"),
        );
        self.server
            .cache
            .services
            .snapshot()
            .objects
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(_, r)| r.alloc_id.as_str() == alloc_id)
            .map(|(_, r)| (**r).clone())
            .collect()
    }

    /// Logs the services left out of an allocation, once per distinct set of reasons.
    fn log_skipped(&self, key: &str, plan: &Plan) {
        let reasons: Vec<String> = plan.skipped.iter().map(ToString::to_string).collect();
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        if reasons.is_empty() {
            logged.remove(key);
            return;
        }
        if logged.get(key) == Some(&reasons) {
            return;
        }
        for reason in &reasons {
            tracing::warn!(alloc = %key, "service not registered: {reason}");
        }
        logged.insert(key.to_owned(), reasons);
    }

    /// Writes a plan: guarded puts and deletes, as many per transaction as the store takes,
    /// each transaction fenced by leadership. Returns the last revision written.
    async fn apply(&self, plan: &Plan) -> Result<Option<i64>, String> {
        let server = &self.server;
        let mut steps: Vec<(Compare, Op, String)> = Vec::new();
        for up in &plan.upserts {
            let reg = &up.registration;
            let key = reg.key(&server.keys);
            let value = serde_json::to_vec(reg).map_err(|e| e.to_string())?;
            let guard = match up.previous {
                None => Compare::absent(key.clone()),
                Some(index) => Compare::unchanged(key.clone(), index),
            };
            let what = format!(
                "{} {} ({} at {}, tags {:?}, healthy {:?})",
                if up.previous.is_none() {
                    "registered"
                } else {
                    "updated"
                },
                reg.id,
                reg.service_name,
                reg.socket_addr(),
                reg.tags,
                reg.healthy,
            );
            steps.push((guard, Op::put(key, value), what));
        }
        for reg in &plan.deletes {
            let key = reg.key(&server.keys);
            steps.push((
                Compare::unchanged(key.clone(), reg.modify_index),
                Op::delete(key),
                format!("deregistered {} ({})", reg.id, reg.service_name),
            ));
        }
        // Two operations per step (a compare and a write), plus the fence.
        let per_txn = (server.store.max_txn_ops().saturating_sub(1) / 2).max(1);
        let mut last = None;
        for chunk in steps.chunks(per_txn) {
            let mut compares = vec![server.leader_fence()];
            compares.extend(chunk.iter().map(|(c, _, _)| c.clone()));
            let ops: Vec<Op> = chunk.iter().map(|(_, op, _)| op.clone()).collect();
            let resp = server
                .store
                .txn(Txn::new().when(compares).and_then(ops))
                .await
                .map_err(|e| e.to_string())?;
            if !resp.succeeded {
                return Err(
                    "the registrations or the leadership changed meanwhile; recomputing".into(),
                );
            }
            for (_, _, what) in chunk {
                tracing::info!("{what}");
            }
            last = Some(resp.revision);
        }
        Ok(last)
    }
}

/// Allocation, node and registration changes queue the allocations they concern; a re-listed
/// cache, a lagging subscriber, becoming leader and the periodic resync queue everything.
fn spawn_feeders(c: &Arc<ServiceController>, mut leading: watch::Receiver<bool>) {
    let span = |source: &str| tracing::info_span!("service-controller-feed", source);
    let cache = &c.server.cache;
    let ctl = Arc::clone(c);
    cache::follow(&cache.allocs, span("allocs"), move |changes| {
        let Some(changes) = changes else {
            return ctl.enqueue_all();
        };
        for ch in changes.iter().filter(|ch| alloc_matters(ch)) {
            if let Some(a) = ch.new.as_ref().or(ch.old.as_ref()) {
                ctl.queue
                    .add(alloc_key(a.namespace.as_str(), a.id.as_str()));
            }
        }
    });
    let ctl = Arc::clone(c);
    cache::follow(&cache.nodes, span("nodes"), move |changes| {
        let Some(changes) = changes else {
            return ctl.enqueue_all();
        };
        for ch in changes {
            let moved = match (&ch.old, &ch.new) {
                (Some(old), Some(new)) => node_fields(old) != node_fields(new),
                _ => true,
            };
            if let (true, Some(n)) = (moved, ch.new.as_ref().or(ch.old.as_ref())) {
                ctl.enqueue_node(n.id.as_str());
            }
        }
    });
    let ctl = Arc::clone(c);
    cache::follow(&cache.services, span("services"), move |changes| {
        let Some(changes) = changes else {
            return ctl.enqueue_all();
        };
        // A registration that appears is checked against its allocation (one written by
        // someone else, or left by a former leader, may not belong); one that is deleted is
        // not put back until its allocation changes or the next resync.
        for r in changes
            .iter()
            .filter(|ch| ch.old.is_none())
            .filter_map(|ch| ch.new.as_ref())
        {
            ctl.queue
                .add(alloc_key(r.namespace.as_str(), r.alloc_id.as_str()));
        }
    });
    let ctl = Arc::clone(c);
    let background = async move {
        let mut tick = tokio::time::interval(RESYNC);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if leading.wait_for(|l| *l).await.is_err() {
                return;
            }
            ctl.enqueue_all();
            tick.reset();
            loop {
                tokio::select! {
                    _ = tick.tick() => ctl.enqueue_all(),
                    lost = leading.wait_for(|l| !*l) => {
                        if lost.is_err() {
                            return;
                        }
                        break;
                    }
                }
            }
        }
    };
    tokio::spawn(background.instrument(span("leadership")));
}

#[async_trait::async_trait]
impl Controller for ServiceController {
    type Key = String;

    fn name(&self) -> &'static str {
        "service"
    }

    async fn reconcile(&self, key: &String) -> Result<Next, String> {
        let Some((namespace, id)) = key.split_once('/') else {
            return Ok(Next::Idle);
        };
        let server = &self.server;
        let alloc = server
            .cache
            .allocs
            .get(&server.keys.key(Kind::Alloc, namespace, id));
        let node = alloc.as_ref().and_then(|a| {
            server
                .cache
                .nodes
                .get(&server.keys.node(a.node_id.as_str()))
        });
        let existing = self.existing(namespace, id);
        let plan = reconcile(alloc.as_deref(), node.as_deref(), &existing);
        self.log_skipped(key, &plan);
        if plan.is_empty() {
            return Ok(Next::Idle);
        }
        if let Some(revision) = self.apply(&plan).await? {
            server.cache.wait_for(revision, READ_YOUR_WRITES).await;
        }
        Ok(Next::Idle)
    }
}
