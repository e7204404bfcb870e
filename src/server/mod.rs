//! The server half of the agent: the watch cache, the controllers' runtime, leader election and
//! membership. Writes go straight to the store; reads come from the cache.
pub mod cache;
pub mod compactor;
pub mod deployment_controller;
pub mod job_controller;
pub mod lb_controller;
pub mod leader;
pub mod node_controller;
pub mod objects;
pub mod runtime;
pub mod service_controller;
pub mod writes;
pub mod writes_deployments;
pub mod writes_nodes;
pub mod writes_splits;

use crate::store::Store;
use cache::Informer;
use caravan_schemas::alloc::Allocation;
use caravan_schemas::deployment::Deployment;
use caravan_schemas::eval::Evaluation;
use caravan_schemas::job::Job;
use caravan_schemas::lb::{RouteTable, TrafficSplit};
use caravan_schemas::node::Node;
use caravan_schemas::service::ServiceRegistration;
use objects::{JobVersion, Keys};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// Who this server is.
#[derive(Clone, Debug)]
pub struct Identity {
    pub name: String,
    pub region: String,
    pub datacenter: String,
    /// `ip:port` of the HTTP API, as other servers and clients reach it.
    pub advertise: String,
}

/// One informer per kind.
#[derive(Debug)]
pub struct Informers {
    pub jobs: Arc<Informer<Job>>,
    pub job_versions: Arc<Informer<JobVersion>>,
    pub nodes: Arc<Informer<Node>>,
    pub allocs: Arc<Informer<Allocation>>,
    pub evals: Arc<Informer<Evaluation>>,
    pub deployments: Arc<Informer<Deployment>>,
    pub services: Arc<Informer<ServiceRegistration>>,
    pub traffic_splits: Arc<Informer<TrafficSplit>>,
    pub route_tables: Arc<Informer<RouteTable>>,
    pub members: Arc<Informer<leader::Member>>,
    pub heartbeats: Arc<Informer<writes_nodes::HeartbeatRecord>>,
}

impl Informers {
    fn new() -> Self {
        Informers {
            jobs: Informer::new(),
            job_versions: Informer::new(),
            nodes: Informer::new(),
            allocs: Informer::new(),
            evals: Informer::new(),
            deployments: Informer::new(),
            services: Informer::new(),
            traffic_splits: Informer::new(),
            route_tables: Informer::new(),
            members: Informer::new(),
            heartbeats: Informer::new(),
        }
    }

    /// The newest revision any kind has applied.
    pub fn index(&self) -> i64 {
        [
            self.jobs.index(),
            self.job_versions.index(),
            self.nodes.index(),
            self.allocs.index(),
            self.evals.index(),
            self.deployments.index(),
            self.services.index(),
            self.traffic_splits.index(),
            self.route_tables.index(),
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
    }

    /// Waits until the cache has caught up with a write at `revision`: one watch feeds every
    /// informer, so any of them tells.
    pub async fn wait_for(&self, revision: i64, timeout: Duration) -> bool {
        self.jobs.wait_for(revision, timeout).await
    }
}

/// Tunables of a server.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Node heartbeat TTL and grace (Nomad's `min_heartbeat_ttl`, `heartbeat_grace`).
    pub heartbeat: writes_nodes::HeartbeatConfig,
    /// Where this agent's own client keeps allocation directories (`-dev`), so the API can
    /// serve their logs.
    pub local_alloc_root: Option<std::path::PathBuf>,
}

/// A running server: its store, keys and caches.
#[derive(Debug)]
pub struct Server {
    pub store: Arc<dyn Store>,
    pub keys: Keys,
    pub identity: Identity,
    pub options: Options,
    pub cache: Informers,
    /// Every component registers its metrics here; the API serves them.
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Server {
    /// Starts the caches and waits for their first list.
    pub async fn start(store: Arc<dyn Store>, identity: Identity) -> Arc<Server> {
        Self::start_with(store, identity, Options::default()).await
    }

    /// [`Server::start`] with options.
    pub async fn start_with(
        store: Arc<dyn Store>,
        identity: Identity,
        options: Options,
    ) -> Arc<Server> {
        let keys = Keys::new(&identity.region);
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let server = Arc::new(Server {
            store: crate::store::metered::Metered::wrap(store, Arc::clone(&metrics)),
            keys,
            identity,
            options,
            cache: Informers::new(),
            metrics,
        });
        let feeder = cache::Feeder::default()
            .feed(&server.keys, &server.cache.jobs)
            .feed(&server.keys, &server.cache.job_versions)
            .feed(&server.keys, &server.cache.nodes)
            .feed(&server.keys, &server.cache.allocs)
            .feed(&server.keys, &server.cache.evals)
            .feed(&server.keys, &server.cache.deployments)
            .feed(&server.keys, &server.cache.services)
            .feed(&server.keys, &server.cache.traffic_splits)
            .feed(&server.keys, &server.cache.route_tables)
            .feed(&server.keys, &server.cache.members)
            .feed(&server.keys, &server.cache.heartbeats);
        let span = tracing::info_span!("cache");
        tokio::spawn(
            feeder
                .run(Arc::clone(&server.store), server.keys.root())
                .instrument(span),
        );
        server.cache.jobs.wait_synced().await;
        server.cache.job_versions.wait_synced().await;
        server.cache.nodes.wait_synced().await;
        server.cache.allocs.wait_synced().await;
        server.cache.evals.wait_synced().await;
        server.cache.deployments.wait_synced().await;
        server.cache.services.wait_synced().await;
        server.cache.traffic_splits.wait_synced().await;
        server.cache.route_tables.wait_synced().await;
        server.cache.members.wait_synced().await;
        server.cache.heartbeats.wait_synced().await;
        tokio::spawn(gauges(Arc::clone(&server)).instrument(tracing::info_span!("cluster-gauges")));
        server
    }
}

/// Refreshes the allocation and node gauges from the cache every few seconds.
async fn gauges(server: Arc<Server>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let mut allocs = std::collections::BTreeMap::new();
        for a in server.cache.allocs.snapshot().objects.values() {
            *allocs.entry(a.client_status.to_string()).or_insert(0) += 1;
        }
        server.metrics.cluster.set_allocations(&allocs);
        let mut nodes = std::collections::BTreeMap::new();
        for n in server.cache.nodes.snapshot().objects.values() {
            *nodes.entry(n.status.to_string()).or_insert(0) += 1;
        }
        server.metrics.cluster.set_nodes(&nodes);
        if Arc::strong_count(&server) == 1 {
            return;
        }
    }
}
