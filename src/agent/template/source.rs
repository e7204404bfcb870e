//! Where templates get their data: the service instances `nomadService` ranges over.
//!
//! [`ServerServices`] asks the servers (`GET /v1/service/:name`); [`FixedServices`] answers
//! from a table, for tests.

use caravan_schemas::service::ServiceRegistration;
use std::collections::BTreeMap;

/// Why a data source could not answer.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("asking {server} for service {name:?}: {message}")]
    Server {
        server: String,
        name: String,
        message: String,
    },
    #[error("no server to ask for service {name:?}")]
    NoServers { name: String },
}

/// One instance of a service, with the fields `nomadService` exposes (`.Address`, `.Port`…).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceInstance {
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub node_id: String,
    pub datacenter: String,
    pub job_id: String,
    pub alloc_id: String,
    pub tags: Vec<String>,
    pub address: String,
    pub port: i32,
}

impl From<ServiceRegistration> for ServiceInstance {
    fn from(r: ServiceRegistration) -> Self {
        ServiceInstance {
            id: r.id.to_string(),
            name: r.service_name,
            namespace: r.namespace.to_string(),
            node_id: r.node_id.to_string(),
            datacenter: r.datacenter,
            job_id: r.job_id.to_string(),
            alloc_id: r.alloc_id.to_string(),
            tags: r.tags,
            address: r.address,
            port: r.port,
        }
    }
}

/// The data templates read. The service-discovery work backs it with live registrations.
#[async_trait::async_trait]
pub trait TemplateSource: Send + Sync + std::fmt::Debug {
    /// The instances of service `name` in `namespace`; none when it is not registered.
    async fn services(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<ServiceInstance>, SourceError>;

    /// Waits until service `name` in `namespace` may have changed since `index` (a blocking
    /// query), and returns the index to wait from next. `index` 0 returns at once with the
    /// current index. A source whose data never changes never returns (the default).
    async fn wait_change(
        &self,
        namespace: &str,
        name: &str,
        index: u64,
    ) -> Result<u64, SourceError> {
        let _ = (namespace, name, index);
        std::future::pending().await
    }
}

/// How long one blocking query waits on the server before it is asked again.
const WATCH_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Asks the servers' HTTP API, each in turn until one answers.
#[derive(Debug, Clone)]
pub struct ServerServices {
    http: reqwest::Client,
    urls: Vec<String>,
}

impl ServerServices {
    /// `urls` are the servers' base URLs (`http://host:port`).
    pub fn new(http: reqwest::Client, urls: Vec<String>) -> Self {
        ServerServices { http, urls }
    }
}

#[async_trait::async_trait]
impl TemplateSource for ServerServices {
    async fn services(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<ServiceInstance>, SourceError> {
        let mut last = None;
        for base in &self.urls {
            let fail = |message: String| SourceError::Server {
                server: base.clone(),
                name: name.to_owned(),
                message,
            };
            let url = match reqwest::Url::parse_with_params(
                &format!("{base}/v1/service/{name}"),
                [("namespace", namespace)],
            ) {
                Ok(u) => u,
                Err(e) => return Err(fail(format!("bad server URL: {e}"))),
            };
            let resp = self.http.get(url).send().await;
            let resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    last = Some(fail(e.to_string()));
                    continue;
                }
            };
            let status = resp.status();
            if status == reqwest::StatusCode::NOT_FOUND {
                return Ok(Vec::new());
            }
            if !status.is_success() {
                let body = resp.text().await.unwrap_or_default();
                last = Some(fail(format!("{status}: {}", body.trim())));
                continue;
            }
            return match resp.json::<Vec<ServiceRegistration>>().await {
                Ok(regs) => Ok(regs.into_iter().map(ServiceInstance::from).collect()),
                Err(e) => Err(fail(format!("the answer did not decode: {e}"))),
            };
        }
        Err(last.unwrap_or_else(|| SourceError::NoServers {
            name: name.to_owned(),
        }))
    }

    async fn wait_change(
        &self,
        namespace: &str,
        name: &str,
        index: u64,
    ) -> Result<u64, SourceError> {
        loop {
            let mut last = None;
            let mut got = None;
            for base in &self.urls {
                match self.blocking_index(base, namespace, name, index).await {
                    Ok(i) => {
                        got = Some(i);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            match got {
                // The wait ran out with nothing new: ask again.
                Some(i) if i == index && index != 0 => continue,
                Some(i) => return Ok(i),
                None => {
                    return Err(last.unwrap_or_else(|| SourceError::NoServers {
                        name: name.to_owned(),
                    }));
                }
            }
        }
    }
}

impl ServerServices {
    /// One blocking query to `base`: the index of `GET /v1/service/:name` once past `index`
    /// (or once the server's wait is over).
    async fn blocking_index(
        &self,
        base: &str,
        namespace: &str,
        name: &str,
        index: u64,
    ) -> Result<u64, SourceError> {
        let fail = |message: String| SourceError::Server {
            server: base.to_owned(),
            name: name.to_owned(),
            message,
        };
        let wait = format!("{}s", WATCH_WAIT.as_secs());
        let index_text = index.to_string();
        let url = reqwest::Url::parse_with_params(
            &format!("{base}/v1/service/{name}"),
            [
                ("namespace", namespace),
                ("index", index_text.as_str()),
                ("wait", wait.as_str()),
            ],
        )
        .map_err(|e| fail(format!("bad server URL: {e}")))?;
        let resp = self
            .http
            .get(url)
            .timeout(WATCH_WAIT + std::time::Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        let status = resp.status();
        if !status.is_success() && status != reqwest::StatusCode::NOT_FOUND {
            let body = resp.text().await.unwrap_or_default();
            return Err(fail(format!("{status}: {}", body.trim())));
        }
        resp.headers()
            .get("x-nomad-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| fail("the answer has no X-Nomad-Index".into()))
    }
}

/// A fixed table of services (tests, and a source with nothing registered).
#[derive(Debug, Clone, Default)]
pub struct FixedServices {
    pub services: BTreeMap<String, Vec<ServiceInstance>>,
}

#[async_trait::async_trait]
impl TemplateSource for FixedServices {
    async fn services(
        &self,
        _namespace: &str,
        name: &str,
    ) -> Result<Vec<ServiceInstance>, SourceError> {
        Ok(self.services.get(name).cloned().unwrap_or_default())
    }
}
