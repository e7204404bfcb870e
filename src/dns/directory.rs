//! Where the DNS server finds registrations: the server's own cache in an agent that runs a
//! server ([`CacheDirectory`]), or the servers' API in a client-only agent
//! ([`RemoteDirectory`], which keeps each answer for a moment so DNS stays fast).

use crate::server::cache::Informer;
use caravan_schemas::service::ServiceRegistration;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why registrations could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("asking {server} for service {name:?}: {message}")]
    Server {
        server: String,
        name: String,
        message: String,
    },
    #[error("no server to ask for service {name:?}")]
    NoServers { name: String },
}

/// The registrations of one service name in one namespace, every datacenter.
pub type Instances = Arc<[ServiceRegistration]>;

/// Reads the registrations DNS answers from.
#[async_trait::async_trait]
pub trait Directory: Send + Sync + std::fmt::Debug + 'static {
    /// Every registration of service `name` (lowercase) in `namespace`.
    async fn instances(&self, namespace: &str, name: &str) -> Result<Instances, DirectoryError>;
}

/// Reads the server's informer cache: always current, no I/O.
#[derive(Debug, Clone)]
pub struct CacheDirectory {
    services: Arc<Informer<ServiceRegistration>>,
}

impl CacheDirectory {
    pub fn new(services: Arc<Informer<ServiceRegistration>>) -> Self {
        CacheDirectory { services }
    }
}

#[async_trait::async_trait]
impl Directory for CacheDirectory {
    async fn instances(&self, namespace: &str, name: &str) -> Result<Instances, DirectoryError> {
        let snap = self.services.snapshot();
        Ok(snap
            .objects
            .values()
            .filter(|r| {
                r.namespace.as_str() == namespace && r.service_name.eq_ignore_ascii_case(name)
            })
            .map(|r| (**r).clone())
            .collect())
    }
}

/// At most this many names are kept; past it, stale entries are dropped.
const MAX_ENTRIES: usize = 4096;

/// Asks the servers (`GET /v1/service/:name?namespace=`), each in turn until one answers, and
/// keeps the answer for `fresh`. When the servers cannot be reached, an answer up to `stale`
/// old is served rather than failing.
#[derive(Debug)]
pub struct RemoteDirectory {
    http: reqwest::Client,
    urls: Vec<String>,
    fresh: Duration,
    stale: Duration,
    cache: Mutex<HashMap<(String, String), (Instant, Instances)>>,
}

impl RemoteDirectory {
    /// `urls` are the servers' base URLs (`http://host:port`).
    pub fn new(http: reqwest::Client, urls: Vec<String>, fresh: Duration) -> Self {
        RemoteDirectory {
            http,
            urls,
            fresh,
            stale: Duration::from_secs(60).max(fresh),
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, key: &(String, String), max_age: Duration) -> Option<Instances> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(key)
            .filter(|(at, _)| at.elapsed() <= max_age)
            .map(|(_, v)| Arc::clone(v))
    }

    fn remember(&self, key: (String, String), value: Instances) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_ENTRIES {
            let stale = self.stale;
            cache.retain(|_, (at, _)| at.elapsed() <= stale);
        }
        if cache.len() < MAX_ENTRIES {
            cache.insert(key, (Instant::now(), value));
        }
    }

    async fn fetch(&self, namespace: &str, name: &str) -> Result<Instances, DirectoryError> {
        let mut last = None;
        for base in &self.urls {
            let fail = |message: String| DirectoryError::Server {
                server: base.clone(),
                name: name.to_owned(),
                message,
            };
            let url = reqwest::Url::parse_with_params(
                &format!("{base}/v1/service/{name}"),
                [("namespace", namespace)],
            )
            .map_err(|e| fail(format!("bad server URL: {e}")))?;
            let resp = match self.http.get(url).send().await {
                Ok(r) => r,
                Err(e) => {
                    last = Some(fail(e.to_string()));
                    continue;
                }
            };
            let status = resp.status();
            if status == reqwest::StatusCode::NOT_FOUND {
                return Ok(Arc::from(Vec::new()));
            }
            if !status.is_success() {
                let body = resp.text().await.unwrap_or_default();
                last = Some(fail(format!("{status}: {}", body.trim())));
                continue;
            }
            return match resp.json::<Vec<ServiceRegistration>>().await {
                Ok(regs) => Ok(Arc::from(regs)),
                Err(e) => Err(fail(format!("the answer did not decode: {e}"))),
            };
        }
        Err(last.unwrap_or_else(|| DirectoryError::NoServers {
            name: name.to_owned(),
        }))
    }
}

#[async_trait::async_trait]
impl Directory for RemoteDirectory {
    async fn instances(&self, namespace: &str, name: &str) -> Result<Instances, DirectoryError> {
        let key = (namespace.to_owned(), name.to_owned());
        if let Some(hit) = self.cached(&key, self.fresh) {
            return Ok(hit);
        }
        match self.fetch(namespace, name).await {
            Ok(found) => {
                self.remember(key, Arc::clone(&found));
                Ok(found)
            }
            Err(e) => match self.cached(&key, self.stale) {
                Some(old) => {
                    tracing::debug!(error = %e, "serving a stale DNS answer");
                    Ok(old)
                }
                None => Err(e),
            },
        }
    }
}
