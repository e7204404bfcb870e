//! A real Caravan server for API tests: the embedded store in a temporary directory, the
//! caches, membership (so it leads), and the HTTP API on 127.0.0.1:0 — all in-process.

use caravan::api;
use caravan::metrics::Metrics;
use caravan::server::{Identity, Server};
use caravan::store::{self, Store, StoreSpec};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// A running server; stopped (and its directory removed) on drop.
pub struct TestServer {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    pub server: Arc<Server>,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    shutdown: Option<oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server on the embedded store and waits until it leads.
    pub async fn start() -> TestServer {
        Self::start_with(|s| s).await
    }

    /// Like [`TestServer::start`], with the store wrapped (e.g. to lower its op limit).
    pub async fn start_with(wrap: impl FnOnce(Arc<dyn Store>) -> Arc<dyn Store>) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = store::open(&StoreSpec::embedded(dir.path().join("store")))
            .await
            .expect("open the embedded store");
        let store = wrap(store);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr").to_string();
        let identity = Identity {
            name: "test".into(),
            region: "global".into(),
            datacenter: "dc1".into(),
            advertise: addr.clone(),
        };
        let server = Server::start(Arc::clone(&store), identity).await;
        let leadership = server.start_membership();
        let metrics = Arc::new(Metrics::new());
        let (tx, rx) = oneshot::channel::<()>();
        let api = api::Api::new(Arc::clone(&server), Arc::clone(&metrics));
        tokio::spawn(api::serve_api(api, listener, async move {
            let _ = rx.await;
        }));
        let mut is_leader = leadership.is_leader;
        tokio::time::timeout(Duration::from_secs(10), is_leader.wait_for(|l| *l))
            .await
            .expect("the test server becomes leader in time")
            .expect("membership is running");
        TestServer {
            base: format!("http://{addr}"),
            addr,
            server,
            store,
            metrics,
            shutdown: Some(tx),
            _dir: dir,
        }
    }

    /// A client for this server.
    pub fn client(&self) -> super::client::Client {
        super::client::Client::new(&self.base)
    }

    /// Writes an object straight to the store (as a controller would) and waits until the
    /// cache shows it; returns the revision.
    pub async fn put<T: caravan::server::objects::Object>(&self, obj: &T) -> i64 {
        let key = obj.key(&self.server.keys);
        let rev = self
            .store
            .put(&key, serde_json::to_vec(obj).unwrap())
            .await
            .expect("put");
        let shown = self
            .server
            .cache
            .wait_for(rev, Duration::from_secs(5))
            .await;
        assert!(shown, "the cache catches up");
        rev
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Objects as controllers and agents would write them.
pub mod fixtures {
    use caravan_schemas::alloc::{Allocation, ClientStatus, DesiredStatus};
    use caravan_schemas::deployment::Deployment;
    use caravan_schemas::eval::{EvalStatus, Evaluation, TriggeredBy};
    use caravan_schemas::ids::{AllocId, DeploymentId, EvalId, JobId, Namespace, NodeId};
    use caravan_schemas::job::Job;
    use caravan_schemas::node::{Node, NodeStatus};
    use serde_json::{Value, json};

    /// A ready node.
    pub fn node(id: &str) -> Node {
        Node {
            id: NodeId::new(id),
            secret_id: format!("secret-{id}"),
            name: format!("client-{id}"),
            datacenter: "dc1".into(),
            http_addr: "127.0.0.1:4646".into(),
            node_pool: "default".into(),
            status: NodeStatus::Ready,
            ..Node::default()
        }
    }

    /// A minimal service job (as JSON, PascalCase).
    pub fn job_json(id: &str) -> Value {
        json!({
            "ID": id,
            "Name": id,
            "Type": "service",
            "Datacenters": ["dc1"],
            "TaskGroups": [{
                "Name": "web",
                "Count": 1,
                "Tasks": [{"Name": "server", "Driver": "raw_exec", "Config": {"command": "/bin/sleep", "args": ["60"]}}]
            }]
        })
    }

    /// The job of [`job_json`], decoded.
    pub fn job(id: &str) -> Job {
        let mut job: Job = serde_json::from_value(job_json(id)).unwrap();
        job.namespace = Namespace::new("default");
        job.priority = 50;
        job
    }

    /// A running allocation of `job` on `node`.
    pub fn alloc(id: &str, node: &str, job_id: &str) -> Allocation {
        let job = job(job_id);
        Allocation {
            id: AllocId::new(id),
            namespace: Namespace::new("default"),
            eval_id: EvalId::new("eval-0"),
            name: format!("{job_id}.web[0]"),
            node_id: NodeId::new(node),
            node_name: format!("client-{node}"),
            job_id: JobId::new(job_id),
            job: Some(std::sync::Arc::new(job)),
            task_group: "web".into(),
            desired_status: DesiredStatus::Run,
            client_status: ClientStatus::Running,
            ..Allocation::default()
        }
    }

    pub fn eval(id: &str, job_id: &str) -> Evaluation {
        Evaluation {
            id: EvalId::new(id),
            namespace: Namespace::new("default"),
            priority: 50,
            kind: "service".into(),
            triggered_by: TriggeredBy::JobRegister,
            job_id: JobId::new(job_id),
            status: EvalStatus::Complete,
            ..Evaluation::default()
        }
    }

    pub fn deployment(id: &str, job_id: &str, version: u64) -> Deployment {
        Deployment {
            id: DeploymentId::new(id),
            namespace: Namespace::new("default"),
            job_id: JobId::new(job_id),
            job_version: version,
            status_description: caravan_schemas::deployment::descriptions::RUNNING.into(),
            ..Deployment::default()
        }
    }
}
