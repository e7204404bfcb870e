//! The lb-config controller: the I/O around `caravan_controllers::lb`.
//!
//! It keeps one object, the route table (`/caravan/<region>/route_table/default/main`), equal
//! to what the pure builder makes of the service registrations and TrafficSplits in the cache.
//! There is a single queue key: any change to a registration, a split or the table itself
//! queues it, and becoming leader does too. A reconcile builds the table and writes it only
//! when its routes differ from the stored ones (indexes aside), in a transaction fenced by
//! leadership and guarded by the stored table's revision; losing that race means the cache has
//! news, and the key is looked at again. Tags left out of the table are logged once per reason.

use super::Server;
use super::cache;
use super::runtime::{self, Controller, Next, WorkQueue};
use caravan_controllers::lb::{build, same_routes};
use caravan_schemas::lb::TrafficSplit;
use caravan_schemas::service::ServiceRegistration;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// The one key of the queue.
pub const KEY: &str = "route_table";

/// The lb-config controller.
#[derive(Debug)]
pub struct LbController {
    server: Arc<Server>,
    queue: Arc<WorkQueue<&'static str>>,
    /// The issues last logged, so that each is logged once rather than at every reconcile.
    logged: Mutex<BTreeSet<String>>,
}

/// Starts the controller: it works while `leading` is true.
pub fn start(server: Arc<Server>, leading: watch::Receiver<bool>) -> Arc<LbController> {
    let controller = Arc::new(LbController {
        server,
        queue: WorkQueue::new(),
        logged: Mutex::new(BTreeSet::new()),
    });
    spawn_feeders(&controller, leading.clone());
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

/// Registrations, splits and the table itself queue the one key; so does becoming leader.
fn spawn_feeders(c: &Arc<LbController>, leading: watch::Receiver<bool>) {
    let span = |source: &str| tracing::info_span!("lb-config-feed", source);
    let cache = &c.server.cache;
    let ctl = Arc::clone(c);
    cache::follow(&cache.services, span("services"), move |_| {
        ctl.queue.add(KEY)
    });
    let ctl = Arc::clone(c);
    cache::follow(&cache.traffic_splits, span("traffic_splits"), move |_| {
        ctl.queue.add(KEY);
    });
    let ctl = Arc::clone(c);
    cache::follow(&cache.route_tables, span("route_tables"), move |_| {
        ctl.queue.add(KEY);
    });
    let ctl = Arc::clone(c);
    runtime::on_leadership(leading, span("leadership"), move || ctl.queue.add(KEY));
}

impl LbController {
    fn log_new_issues(&self, issues: Vec<String>) {
        let now: BTreeSet<String> = issues.into_iter().collect();
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        for issue in now.difference(&logged) {
            tracing::warn!(%issue, "route table");
        }
        *logged = now;
    }
}

#[async_trait::async_trait]
impl Controller for LbController {
    type Key = &'static str;

    fn name(&self) -> &'static str {
        "lb-config"
    }

    async fn reconcile(&self, _key: &&'static str) -> Result<Next, String> {
        let server = &self.server;
        let registrations: Vec<ServiceRegistration> = server
            .cache
            .services
            .snapshot()
            .objects
            .values()
            .map(|r| (**r).clone())
            .collect();
        let splits: Vec<TrafficSplit> = server
            .cache
            .traffic_splits
            .snapshot()
            .objects
            .values()
            .map(|s| (**s).clone())
            .collect();
        let built = build(&registrations, &splits);
        self.log_new_issues(built.issues.iter().map(ToString::to_string).collect());
        let stored = server.cache.route_tables.get(&server.keys.route_table());
        if let Some(stored) = &stored
            && same_routes(stored, &built.table)
        {
            return Ok(Next::Idle);
        }
        let wrote = server
            .write_route_table(
                &built.table,
                stored.as_ref().map(|t| t.modify_index),
                Some(server.leader_fence()),
            )
            .await
            .map_err(|e| e.to_string())?;
        match wrote {
            Some(revision) => {
                tracing::debug!(
                    revision,
                    routes = built.table.routes.len(),
                    "route table written"
                );
                Ok(Next::Idle)
            }
            // The table or the leadership changed meanwhile: look again once the cache has it.
            None => Ok(Next::After(Duration::from_millis(20))),
        }
    }
}
