//! A typed client for Nomad's HTTP API (v1), as the `caravan` CLI and other tools use it.
//!
//! [`Config::from_env`] reads the address (`CARAVAN_ADDR`, then `NOMAD_ADDR`, default
//! `http://127.0.0.1:4646`), the token (`CARAVAN_TOKEN`/`NOMAD_TOKEN`, sent as `X-Nomad-Token`),
//! the namespace and the region. Reads return the value with the index it reflects
//! ([`QueryMeta`]); passing that index back in [`QueryOptions::index`] makes a blocking query
//! that returns once something changed past it (or `wait` ran out). Every failure is one
//! [`ClientError`], whose message reads well on a terminal.

pub mod types;

use caravan_schemas::alloc::{Allocation, AllocationListStub};
use caravan_schemas::deployment::Deployment;
use caravan_schemas::eval::Evaluation;
use caravan_schemas::job::{Job, JobListStub, JobSummary};
use caravan_schemas::lb::{RouteTable, TrafficSplit};
use caravan_schemas::node::{DrainSpec, Node, NodeListStub};
use caravan_schemas::plan::{JobPlanRequest, JobPlanResponse};
use caravan_schemas::service::{ServiceRegistration, ServiceRegistrationListStub};
use reqwest::{Method, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;
pub use types::*;

/// Where the API is when nothing says otherwise.
pub const DEFAULT_ADDRESS: &str = "http://127.0.0.1:4646";
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a plain request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Extra time a blocking query gets beyond its `wait`, as the server may answer a bit late.
const BLOCKING_SLACK: Duration = Duration::from_secs(30);

/// Where to connect and as whom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `http://host:port`.
    pub address: String,
    /// Sent as `X-Nomad-Token`.
    pub token: Option<String>,
    /// Added as `?namespace=` to every request.
    pub namespace: Option<String>,
    /// Added as `?region=` to every request.
    pub region: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            address: DEFAULT_ADDRESS.to_owned(),
            token: None,
            namespace: None,
            region: None,
        }
    }
}

impl Config {
    /// From the environment: `CARAVAN_*` first, then Nomad's `NOMAD_*`.
    pub fn from_env() -> Config {
        Config::from_lookup(|k| std::env::var(k).ok())
    }

    /// From any variable lookup (for tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Config {
        let var = |names: [&str; 2]| {
            names
                .iter()
                .find_map(|n| lookup(n).filter(|v| !v.trim().is_empty()))
        };
        Config {
            address: var(["CARAVAN_ADDR", "NOMAD_ADDR"]).unwrap_or_else(|| DEFAULT_ADDRESS.into()),
            token: var(["CARAVAN_TOKEN", "NOMAD_TOKEN"]),
            namespace: var(["CARAVAN_NAMESPACE", "NOMAD_NAMESPACE"]),
            region: var(["CARAVAN_REGION", "NOMAD_REGION"]),
        }
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address is not something we can connect to.
    #[error("invalid address {address:?}: {reason}")]
    InvalidAddress { address: String, reason: String },
    /// Nothing answered at the address.
    #[error("{method} \"{url}\": {detail}; is the agent running at {address}?")]
    Connect {
        method: String,
        url: String,
        address: String,
        detail: String,
    },
    /// The connection broke or timed out.
    #[error("{method} \"{url}\": {detail}")]
    Transport {
        method: String,
        url: String,
        detail: String,
    },
    /// The server refused: its status and plain-text explanation.
    #[error("Unexpected response code: {status} ({body})")]
    Status { status: u16, body: String },
    /// The server answered with something that is not what this endpoint returns.
    #[error("{method} \"{url}\": unexpected response: {detail}")]
    Decode {
        method: String,
        url: String,
        detail: String,
    },
}

impl ClientError {
    /// The HTTP status, when the server answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The server answered 404.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// The server's explanation of an error status.
    pub fn body(&self) -> Option<&str> {
        match self {
            ClientError::Status { body, .. } => Some(body),
            _ => None,
        }
    }
}

/// What a read reflects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueryMeta {
    /// `X-Nomad-Index`: pass it back as [`QueryOptions::index`] to wait for a change.
    pub last_index: i64,
}

/// Options of a read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryOptions {
    /// `?prefix=`: only ids starting with it.
    pub prefix: Option<String>,
    /// Blocking query: return once the index moves past this.
    pub index: Option<i64>,
    /// …or after this long (the server's default is 5 minutes).
    pub wait: Option<Duration>,
    /// Further query parameters.
    pub params: Vec<(String, String)>,
}

impl QueryOptions {
    /// Only ids starting with `prefix`.
    pub fn prefix(prefix: impl Into<String>) -> Self {
        QueryOptions {
            prefix: Some(prefix.into()),
            ..QueryOptions::default()
        }
    }

    /// A blocking query: wait until the index passes `index`, at most `wait`.
    pub fn blocking(index: i64, wait: Duration) -> Self {
        QueryOptions {
            index: Some(index),
            wait: Some(wait),
            ..QueryOptions::default()
        }
    }

    /// Adds a query parameter.
    pub fn param(mut self, key: &str, value: impl Into<String>) -> Self {
        self.params.push((key.to_owned(), value.into()));
        self
    }
}

/// The API client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    config: Config,
}

/// Turns `host:port` into `http://host:port` and checks the scheme.
fn parse_address(address: &str) -> Result<Url, ClientError> {
    let trimmed = address.trim();
    let with_scheme = if trimmed.contains("://") {
        trimmed.to_owned()
    } else {
        format!("http://{trimmed}")
    };
    let invalid = |reason: String| ClientError::InvalidAddress {
        address: address.to_owned(),
        reason,
    };
    let url = Url::parse(&with_scheme).map_err(|e| invalid(e.to_string()))?;
    match url.scheme() {
        "http" => {}
        "https" => {
            return Err(invalid(
                "https is not supported by this build; use http://".into(),
            ));
        }
        other => {
            return Err(invalid(format!(
                "unsupported scheme {other:?}; use http://"
            )));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host".into()));
    }
    Ok(url)
}

/// The most specific message in an error's chain, without the URL reqwest repeats.
fn root_cause(e: &reqwest::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    let mut last = None;
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
                std::io::ErrorKind::ConnectionReset => "connection reset by peer".into(),
                std::io::ErrorKind::TimedOut => "timed out".into(),
                _ => io.to_string(),
            };
        }
        last = Some(s.to_string());
        source = s.source();
    }
    if e.is_timeout() {
        return "timed out".into();
    }
    last.unwrap_or_else(|| e.to_string())
}

/// Go's `http.Client` spelling of a method in errors: `Get`, `Post`, `Delete`.
fn method_word(m: &Method) -> String {
    let s = m.as_str();
    let mut out = s.to_ascii_lowercase();
    if let Some(first) = out.get_mut(..1) {
        first.make_ascii_uppercase();
    }
    out
}

/// `{"Index": n}`: what the load balancer's writes answer.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WriteIndex {
    index: i64,
}

impl Client {
    /// A client for `config`; fails only on an unusable address.
    pub fn new(config: Config) -> Result<Client, ClientError> {
        let base = parse_address(&config.address)?;
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| ClientError::InvalidAddress {
                address: config.address.clone(),
                reason: root_cause(&e),
            })?;
        Ok(Client { http, base, config })
    }

    /// The address requests go to (`http://127.0.0.1:4646`).
    pub fn address(&self) -> String {
        self.base.as_str().trim_end_matches('/').to_owned()
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn url(&self, segments: &[&str], opts: &QueryOptions) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().push("v1").extend(segments);
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(ns) = &self.config.namespace {
                q.append_pair("namespace", ns);
            }
            if let Some(region) = &self.config.region {
                q.append_pair("region", region);
            }
            if let Some(prefix) = &opts.prefix {
                q.append_pair("prefix", prefix);
            }
            if let Some(index) = opts.index {
                q.append_pair("index", &index.to_string());
                if let Some(wait) = opts.wait {
                    q.append_pair("wait", &format!("{}ms", wait.as_millis()));
                }
            }
            for (k, v) in &opts.params {
                q.append_pair(k, v);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        url
    }

    /// Sends a request and decodes the JSON answer with its index.
    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        opts: &QueryOptions,
        body: Option<Vec<u8>>,
    ) -> Result<(T, QueryMeta), ClientError> {
        let word = method_word(&method);
        let url = self.url(segments, opts);
        let (bytes, meta) = self.send_raw(method, segments, opts, body).await?;
        let value = if bytes.iter().all(u8::is_ascii_whitespace) {
            serde_json::from_slice(b"null")
        } else {
            serde_json::from_slice(&bytes)
        }
        .map_err(|e| ClientError::Decode {
            method: word.clone(),
            url: url.to_string(),
            detail: e.to_string(),
        })?;
        Ok((value, meta))
    }

    /// A plain-text read (`/v1/client/fs/logs/…?plain=true`).
    pub async fn get_text(
        &self,
        segments: &[&str],
        opts: &QueryOptions,
    ) -> Result<String, ClientError> {
        let (bytes, _) = self.send_raw(Method::GET, segments, opts, None).await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// A raw read (`/v1/client/fs/logs/…?plain=true`), bytes as they are.
    pub async fn get_bytes(
        &self,
        segments: &[&str],
        opts: &QueryOptions,
    ) -> Result<bytes::Bytes, ClientError> {
        Ok(self.send_raw(Method::GET, segments, opts, None).await?.0)
    }

    /// A streamed read (`/v1/client/fs/logs/…?follow=true`): `sink` gets each piece of the body
    /// as it arrives, until the server ends it or `sink` returns false. No overall timeout.
    pub async fn stream(
        &self,
        segments: &[&str],
        opts: &QueryOptions,
        mut sink: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), ClientError> {
        let mut resp = self.start(Method::GET, segments, opts, None, None).await?;
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if !sink(&chunk) {
                        return Ok(());
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => {
                    return Err(ClientError::Transport {
                        method: method_word(&Method::GET),
                        url: self.url(segments, opts).to_string(),
                        detail: root_cause(&e),
                    });
                }
            }
        }
    }

    /// Sends a request; a non-2xx answer becomes [`ClientError::Status`] with the server's text.
    async fn send_raw(
        &self,
        method: Method,
        segments: &[&str],
        opts: &QueryOptions,
        body: Option<Vec<u8>>,
    ) -> Result<(bytes::Bytes, QueryMeta), ClientError> {
        let timeout = match (opts.index, opts.wait) {
            (Some(_), Some(wait)) => wait + BLOCKING_SLACK,
            (Some(_), None) => Duration::from_secs(300) + BLOCKING_SLACK,
            _ => REQUEST_TIMEOUT,
        };
        let word = method_word(&method);
        let url = self.url(segments, opts);
        let resp = self
            .start(method, segments, opts, body, Some(timeout))
            .await?;
        let index = resp
            .headers()
            .get("X-Nomad-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let bytes = resp.bytes().await.map_err(|e| ClientError::Transport {
            method: word,
            url: url.to_string(),
            detail: root_cause(&e),
        })?;
        Ok((bytes, QueryMeta { last_index: index }))
    }

    /// Sends a request and returns the answer once its headers are in; a non-2xx answer becomes
    /// [`ClientError::Status`] with the server's text.
    async fn start(
        &self,
        method: Method,
        segments: &[&str],
        opts: &QueryOptions,
        body: Option<Vec<u8>>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, ClientError> {
        let url = self.url(segments, opts);
        let mut req = self.http.request(method.clone(), url.clone());
        if let Some(timeout) = timeout {
            req = req.timeout(timeout);
        }
        if let Some(token) = &self.config.token {
            req = req.header("X-Nomad-Token", token);
        }
        if let Some(body) = body {
            req = req.header("Content-Type", "application/json").body(body);
        }
        let word = method_word(&method);
        let transport = |e: reqwest::Error| {
            if e.is_connect() {
                ClientError::Connect {
                    method: word.clone(),
                    url: url.to_string(),
                    address: self.address(),
                    detail: root_cause(&e),
                }
            } else {
                ClientError::Transport {
                    method: word.clone(),
                    url: url.to_string(),
                    detail: root_cause(&e),
                }
            }
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp.bytes().await.map_err(transport)?;
            let text = String::from_utf8_lossy(&bytes).trim().to_owned();
            let body = if text.is_empty() {
                status.canonical_reason().unwrap_or("").to_owned()
            } else {
                text
            };
            return Err(ClientError::Status {
                status: status.as_u16(),
                body,
            });
        }
        Ok(resp)
    }

    /// A read with options (prefix, blocking).
    pub async fn query<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        opts: &QueryOptions,
    ) -> Result<(T, QueryMeta), ClientError> {
        self.send(Method::GET, segments, opts, None).await
    }

    /// A plain read.
    pub async fn get<T: DeserializeOwned>(&self, segments: &[&str]) -> Result<T, ClientError> {
        Ok(self.query(segments, &QueryOptions::default()).await?.0)
    }

    /// A write with a JSON body.
    pub async fn write<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        opts: &QueryOptions,
        body: &B,
    ) -> Result<T, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::Decode {
            method: method_word(&method),
            url: self.url(segments, opts).to_string(),
            detail: format!("encoding the request: {e}"),
        })?;
        Ok(self.send(method, segments, opts, Some(bytes)).await?.0)
    }

    // ---- jobs ----

    /// `GET /v1/jobs?prefix=`.
    pub async fn jobs(&self, prefix: &str) -> Result<Vec<JobListStub>, ClientError> {
        let opts = QueryOptions::prefix(prefix);
        Ok(self.query(&["jobs"], &opts).await?.0)
    }

    /// `GET /v1/job/:id`.
    pub async fn job(&self, id: &str) -> Result<Job, ClientError> {
        self.get(&["job", id]).await
    }

    /// `POST /v1/jobs`; `enforce_index` is `-check-index`.
    pub async fn register_job(
        &self,
        job: &Job,
        enforce_index: Option<i64>,
    ) -> Result<JobRegisterResponse, ClientError> {
        let body = JobRegisterRequest {
            job,
            enforce_index: enforce_index.is_some(),
            job_modify_index: enforce_index.unwrap_or(0),
            policy_override: false,
            preserve_counts: false,
        };
        self.write(Method::POST, &["jobs"], &QueryOptions::default(), &body)
            .await
    }

    /// `POST /v1/job/:id/plan`.
    pub async fn plan_job(&self, job: &Job, diff: bool) -> Result<JobPlanResponse, ClientError> {
        let body = JobPlanRequest {
            job: Some(job.clone()),
            diff,
            policy_override: false,
        };
        self.write(
            Method::POST,
            &["job", job.id.as_str(), "plan"],
            &QueryOptions::default(),
            &body,
        )
        .await
    }

    /// `DELETE /v1/job/:id?purge=`.
    pub async fn deregister_job(
        &self,
        id: &str,
        purge: bool,
    ) -> Result<JobRegisterResponse, ClientError> {
        let opts = QueryOptions::default().param("purge", purge.to_string());
        Ok(self
            .send(Method::DELETE, &["job", id], &opts, None)
            .await?
            .0)
    }

    /// `GET /v1/job/:id/versions?diffs=`.
    pub async fn job_versions(
        &self,
        id: &str,
        diffs: bool,
    ) -> Result<JobVersionsResponse, ClientError> {
        let opts = QueryOptions::default().param("diffs", diffs.to_string());
        Ok(self.query(&["job", id, "versions"], &opts).await?.0)
    }

    /// `GET /v1/job/:id/allocations?all=`.
    pub async fn job_allocations(
        &self,
        id: &str,
        all: bool,
    ) -> Result<Vec<AllocationListStub>, ClientError> {
        let opts = QueryOptions::default().param("all", all.to_string());
        Ok(self.query(&["job", id, "allocations"], &opts).await?.0)
    }

    /// `GET /v1/job/:id/evaluations`.
    pub async fn job_evaluations(&self, id: &str) -> Result<Vec<Evaluation>, ClientError> {
        self.get(&["job", id, "evaluations"]).await
    }

    /// `GET /v1/job/:id/deployment`: the latest deployment, if any.
    pub async fn job_latest_deployment(&self, id: &str) -> Result<Option<Deployment>, ClientError> {
        self.get(&["job", id, "deployment"]).await
    }

    /// `GET /v1/job/:id/deployment` with options: blocking when `opts.index` is set.
    pub async fn job_latest_deployment_query(
        &self,
        id: &str,
        opts: &QueryOptions,
    ) -> Result<(Option<Deployment>, QueryMeta), ClientError> {
        self.query(&["job", id, "deployment"], opts).await
    }

    /// `POST /v1/job/:id/revert`: registers `version` again as the newest version;
    /// `enforce_prior` reverts only if the current version is still that one.
    pub async fn revert_job(
        &self,
        id: &str,
        version: u64,
        enforce_prior: Option<u64>,
    ) -> Result<JobRegisterResponse, ClientError> {
        let body = JobRevertRequest {
            job_id: id.to_owned(),
            job_version: version,
            enforce_prior_version: enforce_prior,
        };
        self.write(
            Method::POST,
            &["job", id, "revert"],
            &QueryOptions::default(),
            &body,
        )
        .await
    }

    /// `POST /v1/job/:id/stable`: marks a version stable (or not).
    pub async fn set_job_stability(
        &self,
        id: &str,
        version: u64,
        stable: bool,
    ) -> Result<JobStabilityResponse, ClientError> {
        let body = JobStabilityRequest {
            job_id: id.to_owned(),
            job_version: version,
            stable,
        };
        self.write(
            Method::POST,
            &["job", id, "stable"],
            &QueryOptions::default(),
            &body,
        )
        .await
    }

    /// `GET /v1/job/:id/summary`.
    pub async fn job_summary(&self, id: &str) -> Result<JobSummary, ClientError> {
        self.get(&["job", id, "summary"]).await
    }

    /// `POST /v1/job/:id/scale`.
    pub async fn scale_job(
        &self,
        id: &str,
        group: &str,
        count: i64,
        message: &str,
    ) -> Result<JobRegisterResponse, ClientError> {
        let body = ScalingRequest {
            count: Some(count),
            target: [("Job", id), ("Group", group)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            message: message.to_owned(),
            error: false,
            policy_override: false,
        };
        self.write(
            Method::POST,
            &["job", id, "scale"],
            &QueryOptions::default(),
            &body,
        )
        .await
    }

    // ---- allocations ----

    /// `GET /v1/allocations?prefix=`.
    pub async fn allocations(&self, prefix: &str) -> Result<Vec<AllocationListStub>, ClientError> {
        Ok(self
            .query(&["allocations"], &QueryOptions::prefix(prefix))
            .await?
            .0)
    }

    /// `GET /v1/allocation/:id`.
    pub async fn allocation(&self, id: &str) -> Result<Allocation, ClientError> {
        self.get(&["allocation", id]).await
    }

    // ---- evaluations ----

    /// `GET /v1/evaluations?prefix=`.
    pub async fn evaluations(&self, prefix: &str) -> Result<Vec<Evaluation>, ClientError> {
        Ok(self
            .query(&["evaluations"], &QueryOptions::prefix(prefix))
            .await?
            .0)
    }

    /// `GET /v1/evaluation/:id`, blocking when `opts.index` is set.
    pub async fn evaluation(
        &self,
        id: &str,
        opts: &QueryOptions,
    ) -> Result<(Evaluation, QueryMeta), ClientError> {
        self.query(&["evaluation", id], opts).await
    }

    /// `GET /v1/evaluation/:id/allocations`.
    pub async fn evaluation_allocations(
        &self,
        id: &str,
    ) -> Result<Vec<AllocationListStub>, ClientError> {
        self.get(&["evaluation", id, "allocations"]).await
    }

    // ---- deployments ----

    /// `GET /v1/deployments?prefix=`.
    pub async fn deployments(&self, prefix: &str) -> Result<Vec<Deployment>, ClientError> {
        Ok(self
            .query(&["deployments"], &QueryOptions::prefix(prefix))
            .await?
            .0)
    }

    /// `GET /v1/deployment/:id`, blocking when `opts.index` is set.
    pub async fn deployment(
        &self,
        id: &str,
        opts: &QueryOptions,
    ) -> Result<(Deployment, QueryMeta), ClientError> {
        self.query(&["deployment", id], opts).await
    }

    /// `GET /v1/deployment/allocations/:id` (the full id).
    pub async fn deployment_allocations(
        &self,
        id: &str,
    ) -> Result<Vec<AllocationListStub>, ClientError> {
        self.get(&["deployment", "allocations", id]).await
    }

    /// `POST /v1/deployment/promote/:id`: every group with canaries, or only `groups`.
    pub async fn promote_deployment(
        &self,
        id: &str,
        groups: Option<&[String]>,
    ) -> Result<DeploymentUpdateResponse, ClientError> {
        let body = DeploymentPromoteRequest {
            deployment_id: id.to_owned(),
            all: groups.is_none(),
            groups: groups.map(<[String]>::to_vec).unwrap_or_default(),
        };
        self.write(
            Method::POST,
            &["deployment", "promote", id],
            &QueryOptions::default(),
            &body,
        )
        .await
    }

    /// `POST /v1/deployment/fail/:id`.
    pub async fn fail_deployment(&self, id: &str) -> Result<DeploymentUpdateResponse, ClientError> {
        let body = DeploymentFailRequest {
            deployment_id: id.to_owned(),
        };
        self.write(
            Method::POST,
            &["deployment", "fail", id],
            &QueryOptions::default(),
            &body,
        )
        .await
    }

    /// `POST /v1/deployment/pause/:id`: pause (`true`) or resume (`false`).
    pub async fn pause_deployment(
        &self,
        id: &str,
        pause: bool,
    ) -> Result<DeploymentUpdateResponse, ClientError> {
        let body = DeploymentPauseRequest {
            deployment_id: id.to_owned(),
            pause,
        };
        self.write(
            Method::POST,
            &["deployment", "pause", id],
            &QueryOptions::default(),
            &body,
        )
        .await
    }

    /// `POST /v1/deployment/allocation-health/:id`: marks allocations of the deployment healthy
    /// or unhealthy by hand.
    pub async fn set_alloc_health(
        &self,
        id: &str,
        healthy: &[String],
        unhealthy: &[String],
    ) -> Result<DeploymentUpdateResponse, ClientError> {
        let body = DeploymentAllocHealthRequest {
            deployment_id: id.to_owned(),
            healthy_allocation_ids: healthy.to_vec(),
            unhealthy_allocation_ids: unhealthy.to_vec(),
        };
        self.write(
            Method::POST,
            &["deployment", "allocation-health", id],
            &QueryOptions::default(),
            &body,
        )
        .await
    }

    // ---- nodes ----

    /// `GET /v1/nodes?prefix=`.
    pub async fn nodes(&self, prefix: &str) -> Result<Vec<NodeListStub>, ClientError> {
        Ok(self
            .query(&["nodes"], &QueryOptions::prefix(prefix))
            .await?
            .0)
    }

    /// `GET /v1/node/:id`.
    pub async fn node(&self, id: &str) -> Result<Node, ClientError> {
        self.get(&["node", id]).await
    }

    /// `GET /v1/node/:id/allocations`.
    pub async fn node_allocations(&self, id: &str) -> Result<Vec<Allocation>, ClientError> {
        self.get(&["node", id, "allocations"]).await
    }

    /// `POST /v1/node/:id/drain`: a drain spec starts a drain, `None` ends it.
    pub async fn drain_node(
        &self,
        id: &str,
        spec: Option<DrainSpec>,
        mark_eligible: bool,
    ) -> Result<NodeUpdateResponse, ClientError> {
        let body = NodeDrainRequest {
            node_id: id.to_owned(),
            drain_spec: spec,
            mark_eligible,
        };
        self.write(
            Method::POST,
            &["node", id, "drain"],
            &QueryOptions::default(),
            &body,
        )
        .await
    }

    /// `POST /v1/node/:id/eligibility`.
    pub async fn set_node_eligibility(
        &self,
        id: &str,
        eligible: bool,
    ) -> Result<NodeUpdateResponse, ClientError> {
        let body = NodeEligibilityRequest {
            node_id: id.to_owned(),
            eligibility: if eligible { "eligible" } else { "ineligible" }.to_owned(),
        };
        self.write(
            Method::POST,
            &["node", id, "eligibility"],
            &QueryOptions::default(),
            &body,
        )
        .await
    }

    // ---- services ----

    /// `GET /v1/services`: each namespace's service names and tags, blocking when
    /// `opts.index` is set.
    pub async fn services(
        &self,
        opts: &QueryOptions,
    ) -> Result<(Vec<ServiceRegistrationListStub>, QueryMeta), ClientError> {
        let (list, meta): (Option<Vec<ServiceRegistrationListStub>>, QueryMeta) =
            self.query(&["services"], opts).await?;
        Ok((list.unwrap_or_default(), meta))
    }

    /// `GET /v1/service/:name`: the service's registrations (none when it is unknown).
    pub async fn service(
        &self,
        name: &str,
        opts: &QueryOptions,
    ) -> Result<(Vec<ServiceRegistration>, QueryMeta), ClientError> {
        let (list, meta): (Option<Vec<ServiceRegistration>>, QueryMeta) =
            self.query(&["service", name], opts).await?;
        Ok((list.unwrap_or_default(), meta))
    }

    /// `DELETE /v1/service/:name/:id`.
    pub async fn delete_service_registration(
        &self,
        name: &str,
        id: &str,
    ) -> Result<(), ClientError> {
        let _: (serde_json::Value, QueryMeta) = self
            .send(
                Method::DELETE,
                &["service", name, id],
                &QueryOptions::default(),
                None,
            )
            .await?;
        Ok(())
    }

    // ---- load balancer (Caravan extensions) ----

    /// `GET /v1/traffic-splits`: the splits of the configured namespace (`*`: all), blocking
    /// when `opts.index` is set.
    pub async fn traffic_splits(
        &self,
        opts: &QueryOptions,
    ) -> Result<(Vec<TrafficSplit>, QueryMeta), ClientError> {
        let (list, meta): (Option<Vec<TrafficSplit>>, QueryMeta) =
            self.query(&["traffic-splits"], opts).await?;
        Ok((list.unwrap_or_default(), meta))
    }

    /// `GET /v1/traffic-split/:name` (`opts` may name another namespace than the configured
    /// one with `param("namespace", …)`).
    pub async fn traffic_split(
        &self,
        name: &str,
        opts: &QueryOptions,
    ) -> Result<TrafficSplit, ClientError> {
        Ok(self.query(&["traffic-split", name], opts).await?.0)
    }

    /// `PUT /v1/traffic-split/:name`: creates or replaces the split; its ModifyIndex after the
    /// write (the old one when nothing changed).
    pub async fn put_traffic_split(&self, split: &TrafficSplit) -> Result<i64, ClientError> {
        let resp: WriteIndex = self
            .write(
                Method::PUT,
                &["traffic-split", &split.name],
                &QueryOptions::default(),
                split,
            )
            .await?;
        Ok(resp.index)
    }

    /// `DELETE /v1/traffic-split/:name`: the index of the deletion.
    pub async fn delete_traffic_split(&self, name: &str) -> Result<i64, ClientError> {
        let (resp, _): (WriteIndex, QueryMeta) = self
            .send(
                Method::DELETE,
                &["traffic-split", name],
                &QueryOptions::default(),
                None,
            )
            .await?;
        Ok(resp.index)
    }

    /// `GET /v1/lb/routes`: the route table, blocking on its ModifyIndex when `opts.index` is
    /// set.
    pub async fn lb_routes(
        &self,
        opts: &QueryOptions,
    ) -> Result<(RouteTable, QueryMeta), ClientError> {
        self.query(&["lb", "routes"], opts).await
    }

    // ---- agent and status ----

    /// `GET /v1/agent/members`.
    pub async fn members(&self) -> Result<AgentMembers, ClientError> {
        self.get(&["agent", "members"]).await
    }

    /// `GET /v1/status/leader`: `ip:port` of the leader, empty when there is none.
    pub async fn leader(&self) -> Result<String, ClientError> {
        self.get(&["status", "leader"]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Config {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_lookup(|k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn config_prefers_caravan_variables_then_nomad_ones() {
        assert_eq!(env(&[]), Config::default());
        let c = env(&[
            ("NOMAD_ADDR", "http://nomad:4646"),
            ("NOMAD_TOKEN", "n-token"),
            ("CARAVAN_TOKEN", "c-token"),
            ("CARAVAN_NAMESPACE", "prod"),
            ("NOMAD_REGION", "eu"),
        ]);
        assert_eq!(c.address, "http://nomad:4646");
        assert_eq!(c.token.as_deref(), Some("c-token"));
        assert_eq!(c.namespace.as_deref(), Some("prod"));
        assert_eq!(c.region.as_deref(), Some("eu"));
        let c = env(&[
            ("NOMAD_ADDR", "http://nomad:4646"),
            ("CARAVAN_ADDR", "http://caravan:4646"),
        ]);
        assert_eq!(c.address, "http://caravan:4646");
    }

    #[test]
    fn addresses_get_a_scheme_and_https_is_refused() {
        assert_eq!(
            parse_address("127.0.0.1:4646").unwrap().as_str(),
            "http://127.0.0.1:4646/"
        );
        assert_eq!(
            parse_address("http://localhost:1/").unwrap().as_str(),
            "http://localhost:1/"
        );
        let err = parse_address("https://x:4646").unwrap_err().to_string();
        assert!(err.contains("https is not supported"), "{err}");
        assert!(parse_address("ftp://x").is_err());
        assert!(parse_address("http://").is_err());
    }

    #[test]
    fn urls_escape_ids_and_carry_namespace_prefix_and_blocking() {
        let client = Client::new(Config {
            address: "http://127.0.0.1:4646".into(),
            namespace: Some("prod".into()),
            ..Config::default()
        })
        .unwrap();
        let url = client.url(
            &["job", "my job/1", "versions"],
            &QueryOptions::blocking(42, Duration::from_secs(5)).param("diffs", "true"),
        );
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:4646/v1/job/my%20job%2F1/versions?namespace=prod&index=42&wait=5000ms&diffs=true"
        );
        let plain = Client::new(Config::default()).unwrap();
        assert_eq!(
            plain.url(&["jobs"], &QueryOptions::default()).as_str(),
            "http://127.0.0.1:4646/v1/jobs"
        );
        assert_eq!(
            plain.url(&["jobs"], &QueryOptions::prefix("ex")).as_str(),
            "http://127.0.0.1:4646/v1/jobs?prefix=ex"
        );
    }

    #[test]
    fn errors_read_like_nomads() {
        let e = ClientError::Status {
            status: 404,
            body: "job not found".into(),
        };
        assert_eq!(
            e.to_string(),
            "Unexpected response code: 404 (job not found)"
        );
        assert!(e.is_not_found());
        assert_eq!(method_word(&Method::DELETE), "Delete");
    }

    #[tokio::test]
    async fn connection_refused_names_the_address() {
        // Bind then drop a listener so the port is (very likely) closed.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let client = Client::new(Config {
            address: format!("http://127.0.0.1:{port}"),
            ..Config::default()
        })
        .unwrap();
        let err = client.jobs("").await.unwrap_err().to_string();
        assert!(err.contains("connection refused"), "{err}");
        assert!(
            err.contains(&format!("is the agent running at http://127.0.0.1:{port}?")),
            "{err}"
        );
        assert!(err.starts_with("Get \""), "{err}");
    }
}
