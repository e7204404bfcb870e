//! The client loop: register the node, heartbeat, long-poll the node's allocations, run them,
//! and report their status in batches — all over the servers' HTTP API, as Nomad clients talk
//! to servers over RPC (the endpoints are in docs/api-client.md).

use super::fingerprint::{self, FingerprintConfig};
use super::runner::{self, AllocReport, AllocRunner, Context};
use crate::drivers::Driver;
use caravan_schemas::alloc::{Allocation, DesiredStatus};
use caravan_schemas::node::{Node, NodeStatus};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::Instrument;

/// Why the client could not run.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Fingerprint(#[from] fingerprint::FingerprintError),
    #[error("registering with {server}: {message}")]
    Register { server: String, message: String },
    #[error("no server given: -servers host:port or client {{ servers = [...] }}")]
    NoServers,
}

/// How to run the client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Servers' HTTP addresses (`host:port` or URLs).
    pub servers: Vec<String>,
    pub data_dir: PathBuf,
    pub fingerprint: FingerprintConfig,
    /// How often to fingerprint again ([`REFINGERPRINT_INTERVAL`] unless a test wants sooner).
    pub refingerprint_interval: Duration,
}

/// A running client.
#[derive(Debug, Clone)]
pub struct Client {
    pub node_id: String,
}

fn url(server: &str) -> String {
    if server.starts_with("http://") || server.starts_with("https://") {
        server.trim_end_matches('/').to_owned()
    } else {
        format!("http://{server}")
    }
}

struct Servers {
    http: reqwest::Client,
    urls: Vec<String>,
}

impl Servers {
    /// Sends a request to each server in turn until one answers.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<reqwest::Response, String> {
        let mut last = String::from("no servers");
        for base in &self.urls {
            let mut req = self.http.request(method.clone(), format!("{base}{path}"));
            if let Some(b) = body {
                req = req.json(b);
            }
            match req.send().await {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) => {
                    let status = resp.status();
                    last = format!(
                        "{base}: {status}: {}",
                        resp.text().await.unwrap_or_default()
                    );
                }
                Err(e) => last = format!("{base}: {e}"),
            }
        }
        Err(last)
    }
}

/// Fingerprints, registers and starts the client's loops; returns once the node is registered.
pub async fn start(
    config: ClientConfig,
    drivers: Vec<Arc<dyn Driver>>,
) -> Result<Client, ClientError> {
    if config.servers.is_empty() {
        return Err(ClientError::NoServers);
    }
    let servers = Arc::new(Servers {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| ClientError::Register {
                server: config.servers.join(","),
                message: e.to_string(),
            })?,
        urls: config.servers.iter().map(|s| url(s)).collect(),
    });
    let mut node: Node = fingerprint::fingerprint(&config.fingerprint, &drivers).await;
    node.status = NodeStatus::Ready;
    let node_id = node.id.to_string();
    let registered = servers
        .send(
            reqwest::Method::POST,
            "/v1/client/node/register",
            Some(&json!({ "Node": node })),
        )
        .await
        .map_err(|message| ClientError::Register {
            server: config.servers.join(","),
            message,
        })?;
    let ttl = heartbeat_ttl(registered).await;

    let (reports_tx, reports_rx) = mpsc::unbounded_channel();
    tokio::spawn(
        refingerprint(
            Arc::clone(&servers),
            config.fingerprint.clone(),
            drivers.clone(),
            node.clone(),
            config.refingerprint_interval,
        )
        .instrument(tracing::info_span!("client", node = %&node_id[..8.min(node_id.len())], loop_ = "fingerprint")),
    );
    let ctx = Arc::new(Context {
        drivers: drivers
            .iter()
            .map(|d| (d.name().to_owned(), Arc::clone(d)))
            .collect(),
        node: Arc::new(node),
        alloc_root: config.data_dir.join("client").join("allocs"),
        reports: reports_tx,
        template_source: Arc::new(crate::agent::template::ServerServices::new(
            servers.http.clone(),
            servers.urls.clone(),
        )),
    });
    let span = |what: &str| tracing::info_span!("client", node = %&node_id[..8.min(node_id.len())], loop_ = what.to_owned());
    tokio::spawn(
        heartbeat(Arc::clone(&servers), node_id.clone(), ttl).instrument(span("heartbeat")),
    );
    tokio::spawn(report(Arc::clone(&servers), reports_rx).instrument(span("report")));
    tokio::spawn(watch_allocs(servers, node_id.clone(), ctx).instrument(span("allocs")));
    Ok(Client { node_id })
}

/// How often the machine and its drivers are fingerprinted again (Nomad checks drivers' health
/// every 30 s).
pub const REFINGERPRINT_INTERVAL: Duration = Duration::from_secs(30);

/// What of a node a new fingerprint may change, leaving out when each driver was last checked.
fn fingerprinted(node: &Node) -> impl PartialEq + use<> {
    let drivers: BTreeMap<String, (bool, bool, String, BTreeMap<String, String>)> = node
        .drivers
        .iter()
        .map(|(name, d)| {
            (
                name.clone(),
                (
                    d.detected,
                    d.healthy,
                    d.health_description.clone(),
                    d.attributes.clone(),
                ),
            )
        })
        .collect();
    (
        node.attributes.clone(),
        drivers,
        node.node_resources.clone(),
        node.reserved_resources.clone(),
    )
}

/// Fingerprints the machine and its drivers again every `interval` and
/// registers the node anew when anything changed (a driver became healthy or unhealthy, memory
/// was added), so the servers schedule on what the node can do now. Registration keeps the
/// node's eligibility and drain.
async fn refingerprint(
    servers: Arc<Servers>,
    config: FingerprintConfig,
    drivers: Vec<Arc<dyn Driver>>,
    mut registered: Node,
    interval: Duration,
) {
    loop {
        tokio::time::sleep(interval).await;
        let mut node = fingerprint::fingerprint(&config, &drivers).await;
        node.status = NodeStatus::Ready;
        if fingerprinted(&node) == fingerprinted(&registered) {
            continue;
        }
        for (name, d) in &node.drivers {
            let before = registered
                .drivers
                .get(name)
                .map(|b| (b.detected, b.healthy));
            if before != Some((d.detected, d.healthy)) {
                tracing::info!(driver = %name, detected = d.detected, healthy = d.healthy, reason = %d.health_description, "driver health changed");
            }
        }
        match servers
            .send(
                reqwest::Method::POST,
                "/v1/client/node/register",
                Some(&json!({ "Node": node })),
            )
            .await
        {
            Ok(_) => registered = node,
            Err(e) => {
                tracing::warn!(error = %e, "registering the node's new fingerprint failed; will retry")
            }
        }
    }
}

async fn heartbeat_ttl(resp: reqwest::Response) -> Duration {
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    body["HeartbeatTTL"]
        .as_i64()
        .filter(|n| *n > 0)
        .map_or(Duration::from_secs(10), |n| {
            Duration::from_nanos(n.unsigned_abs())
        })
}

/// Heartbeats at half the TTL the servers asked for.
async fn heartbeat(servers: Arc<Servers>, node_id: String, mut ttl: Duration) {
    loop {
        tokio::time::sleep(ttl / 2).await;
        match servers
            .send(
                reqwest::Method::PUT,
                &format!("/v1/client/node/{node_id}/heartbeat"),
                Some(&json!({})),
            )
            .await
        {
            Ok(resp) => ttl = heartbeat_ttl(resp).await,
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
    }
}

/// Sends allocation status in batches: the newest report per allocation, every 100 ms.
async fn report(servers: Arc<Servers>, mut rx: mpsc::UnboundedReceiver<AllocReport>) {
    let mut pending: BTreeMap<String, AllocReport> = BTreeMap::new();
    loop {
        let Some(first) = rx.recv().await else { return };
        pending.insert(first.alloc_id.clone(), first);
        tokio::time::sleep(Duration::from_millis(100)).await;
        while let Ok(r) = rx.try_recv() {
            pending.insert(r.alloc_id.clone(), r);
        }
        let allocs: Vec<serde_json::Value> = pending
            .values()
            .map(|r| {
                json!({
                    "ID": r.alloc_id,
                    "ClientStatus": r.client_status,
                    "ClientDescription": r.client_description,
                    "TaskStates": r.task_states,
                    "CheckResults": r.check_results,
                    "DeploymentStatus": r.deployment_health.as_ref().map(|h| json!({
                        "Healthy": h.healthy,
                        "Timestamp": h.at,
                    })),
                    "DeploymentID": r.deployment_health.as_ref().map(|h| &h.deployment),
                })
            })
            .collect();
        match servers
            .send(
                reqwest::Method::POST,
                "/v1/client/allocations/update",
                Some(&json!({ "Allocs": allocs })),
            )
            .await
        {
            Ok(_) => pending.clear(),
            Err(e) => {
                tracing::warn!(error = %e, "reporting allocation status failed; will retry");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Long-polls the node's allocations and starts or stops runners to match.
async fn watch_allocs(servers: Arc<Servers>, node_id: String, ctx: Arc<Context>) {
    let mut index: i64 = 0;
    let mut runners: HashMap<String, AllocRunner> = HashMap::new();
    loop {
        let path = format!("/v1/client/node/{node_id}/allocations?index={index}&wait=30s");
        let resp = match servers.send(reqwest::Method::GET, &path, None).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "watching allocations failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let next = resp
            .headers()
            .get("x-nomad-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(index);
        let allocs: Vec<Allocation> = match resp.json().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "allocations did not decode; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // An index that went backwards (a server restart) starts over.
        index = if next < index { 0 } else { next };
        // Forget finished runners whose allocations the servers no longer list.
        let listed: std::collections::HashSet<String> =
            allocs.iter().map(|a| a.id.to_string()).collect();
        runners.retain(|id, r| listed.contains(id) || !r.is_done());
        for alloc in allocs {
            let id = alloc.id.to_string();
            let wants_run = alloc.desired_status == DesiredStatus::Run;
            match runners.get(&id) {
                Some(runner) if !wants_run => runner.stop(),
                Some(runner) => runner.update(&alloc),
                None if wants_run && !alloc.client_status.is_terminal() => {
                    tracing::info!(alloc = %alloc.id.short(), name = %alloc.name, "starting allocation");
                    runners.insert(id, runner::spawn(Arc::clone(&ctx), alloc));
                }
                None => {}
            }
        }
    }
}
