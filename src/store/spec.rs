//! Which store to open: `embedded[:<data dir>]` or `etcd://host:port[,host:port…][?options]`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::error::StoreError;

/// The default etcd `--max-txn-ops`.
pub const ETCD_DEFAULT_MAX_TXN_OPS: usize = 128;

/// A parsed store specification.
///
/// Accepted strings:
/// - `embedded` — the embedded store; the data directory is given separately
///   ([`StoreSpec::with_data_dir`], e.g. from `-data-dir`);
/// - `embedded:/var/lib/caravan` (or `embedded:///var/lib/caravan`) — with its data directory;
/// - `etcd://127.0.0.1:2379,127.0.0.1:22379` — plain-text etcd endpoints (port defaults to 2379);
/// - `etcds://host:2379?ca=/etc/ca.pem&cert=/etc/client.pem&key=/etc/client-key.pem` — TLS.
///   `etcd://…?ca=…` also turns TLS on. Other options: `domain=` (the server name to verify),
///   `max-txn-ops=` (the cluster's `--max-txn-ops`, default 128). Paths are taken literally.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreSpec {
    Embedded(EmbeddedConfig),
    Etcd(EtcdConfig),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbeddedConfig {
    /// The directory holding `store.redb`. Required to open the store.
    pub data_dir: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `host:port` of each endpoint.
    pub endpoints: Vec<String>,
    pub tls: Option<TlsConfig>,
    /// The cluster's `--max-txn-ops`; transactions are checked against it before sending.
    pub max_txn_ops: usize,
    /// Bound on establishing a connection.
    pub connect_timeout: Duration,
    /// Bound on each unary request (not on watch streams).
    pub request_timeout: Duration,
}

/// Client TLS for etcd. Needs the `etcd-tls` cargo feature to be used (it is parsed and checked
/// without it, and opening fails with a clear error).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM CA bundle to verify the server (default: the system roots).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (with `key_file`) for mutual TLS.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Server name to verify instead of the endpoint host.
    pub domain: Option<String>,
}

impl EtcdConfig {
    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdConfig {
            endpoints,
            tls: None,
            max_txn_ops: ETCD_DEFAULT_MAX_TXN_OPS,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
        }
    }
}

impl StoreSpec {
    /// The embedded store in `data_dir`.
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        StoreSpec::Embedded(EmbeddedConfig {
            data_dir: Some(data_dir.into()),
        })
    }

    /// etcd at `host:port` endpoints, plain text.
    pub fn etcd<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        StoreSpec::Etcd(EtcdConfig::new(
            endpoints.into_iter().map(Into::into).collect(),
        ))
    }

    /// Sets the embedded data directory unless the spec already names one. No effect on etcd.
    pub fn with_data_dir(mut self, data_dir: impl Into<PathBuf>) -> Self {
        if let StoreSpec::Embedded(cfg) = &mut self
            && cfg.data_dir.is_none()
        {
            cfg.data_dir = Some(data_dir.into());
        }
        self
    }

    /// Sets etcd TLS options. No effect on the embedded store.
    pub fn with_tls(mut self, tls: TlsConfig) -> Self {
        if let StoreSpec::Etcd(cfg) = &mut self {
            cfg.tls = Some(tls);
        }
        self
    }
}

fn invalid(url: &str, reason: impl Into<String>) -> StoreError {
    StoreError::InvalidUrl {
        url: url.to_owned(),
        reason: reason.into(),
    }
}

impl FromStr for StoreSpec {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "embedded" {
            return Ok(StoreSpec::Embedded(EmbeddedConfig { data_dir: None }));
        }
        if let Some(rest) = s.strip_prefix("embedded:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(invalid(s, "empty data directory after `embedded:`"));
            }
            return Ok(StoreSpec::embedded(path));
        }
        let (tls_scheme, rest) = if let Some(rest) = s.strip_prefix("etcd://") {
            (false, rest)
        } else if let Some(rest) = s.strip_prefix("etcds://") {
            (true, rest)
        } else {
            return Err(invalid(
                s,
                "expected `embedded`, `embedded:<dir>`, `etcd://host:port[,host:port…]` or `etcds://…`",
            ));
        };
        let (hosts, query) = match rest.split_once('?') {
            Some((h, q)) => (h, Some(q)),
            None => (rest, None),
        };
        let hosts = hosts.strip_suffix('/').unwrap_or(hosts);
        let mut endpoints = Vec::new();
        for host in hosts.split(',') {
            endpoints.push(parse_endpoint(s, host.trim())?);
        }
        let mut cfg = EtcdConfig::new(endpoints);
        let mut tls = TlsConfig::default();
        let mut tls_wanted = tls_scheme;
        for pair in query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|p| !p.is_empty())
        {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| invalid(s, format!("option `{pair}` has no value")))?;
            if value.is_empty() {
                return Err(invalid(s, format!("option `{name}` has an empty value")));
            }
            match name {
                "ca" | "cacert" => {
                    tls.ca_file = Some(value.into());
                    tls_wanted = true;
                }
                "cert" => {
                    tls.cert_file = Some(value.into());
                    tls_wanted = true;
                }
                "key" => {
                    tls.key_file = Some(value.into());
                    tls_wanted = true;
                }
                "domain" => {
                    tls.domain = Some(value.to_owned());
                    tls_wanted = true;
                }
                "max-txn-ops" => {
                    cfg.max_txn_ops =
                        value
                            .parse::<usize>()
                            .ok()
                            .filter(|n| *n > 0)
                            .ok_or_else(|| {
                                invalid(
                                    s,
                                    format!("max-txn-ops `{value}` is not a positive integer"),
                                )
                            })?;
                }
                other => {
                    return Err(invalid(
                        s,
                        format!(
                            "unknown option `{other}` (known: ca, cert, key, domain, max-txn-ops)"
                        ),
                    ));
                }
            }
        }
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return Err(invalid(s, "`cert` and `key` go together"));
        }
        if tls_wanted {
            cfg.tls = Some(tls);
        }
        Ok(StoreSpec::Etcd(cfg))
    }
}

/// Checks `host[:port]` (IPv6 in brackets) and returns `host:port`.
fn parse_endpoint(url: &str, host: &str) -> Result<String, StoreError> {
    if host.is_empty() {
        return Err(invalid(url, "empty endpoint"));
    }
    if host.contains(['/', '@', ' ', '?', '#']) {
        return Err(invalid(url, format!("endpoint `{host}` is not host:port")));
    }
    let (name, port) = if let Some(v6) = host.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or_else(|| invalid(url, format!("endpoint `{host}`: missing `]`")))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| {
                invalid(
                    url,
                    format!("endpoint `{host}`: expected `:port` after `]`"),
                )
            })?),
        };
        (format!("[{addr}]"), port)
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (name.to_owned(), Some(port)),
            None => (host.to_owned(), None),
        }
    };
    if name.is_empty() || name == "[]" {
        return Err(invalid(url, format!("endpoint `{host}` has no host")));
    }
    if name.contains(':') && !name.starts_with('[') {
        return Err(invalid(
            url,
            format!("endpoint `{host}`: put IPv6 addresses in brackets"),
        ));
    }
    let port =
        match port {
            None => 2379,
            Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                invalid(url, format!("endpoint `{host}`: port `{p}` is not 1-65535"))
            })?,
        };
    Ok(format!("{name}:{port}"))
}

impl fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreSpec::Embedded(EmbeddedConfig { data_dir: None }) => f.write_str("embedded"),
            StoreSpec::Embedded(EmbeddedConfig {
                data_dir: Some(dir),
            }) => write!(f, "embedded:{}", dir.display()),
            StoreSpec::Etcd(cfg) => {
                let scheme = if cfg.tls.is_some() { "etcds" } else { "etcd" };
                write!(f, "{scheme}://{}", cfg.endpoints.join(","))?;
                let mut opts = Vec::new();
                if let Some(tls) = &cfg.tls {
                    if let Some(p) = &tls.ca_file {
                        opts.push(format!("ca={}", p.display()));
                    }
                    if let Some(p) = &tls.cert_file {
                        opts.push(format!("cert={}", p.display()));
                    }
                    if let Some(p) = &tls.key_file {
                        opts.push(format!("key={}", p.display()));
                    }
                    if let Some(d) = &tls.domain {
                        opts.push(format!("domain={d}"));
                    }
                }
                if cfg.max_txn_ops != ETCD_DEFAULT_MAX_TXN_OPS {
                    opts.push(format!("max-txn-ops={}", cfg.max_txn_ops));
                }
                if !opts.is_empty() {
                    write!(f, "?{}", opts.join("&"))?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_embedded() {
        assert_eq!(
            "embedded".parse::<StoreSpec>().unwrap(),
            StoreSpec::Embedded(EmbeddedConfig { data_dir: None })
        );
        assert_eq!(
            "embedded:/var/lib/caravan".parse::<StoreSpec>().unwrap(),
            StoreSpec::embedded("/var/lib/caravan")
        );
        assert_eq!(
            "embedded:///var/lib/caravan".parse::<StoreSpec>().unwrap(),
            StoreSpec::embedded("/var/lib/caravan")
        );
        assert!("embedded:".parse::<StoreSpec>().is_err());
        let spec = "embedded".parse::<StoreSpec>().unwrap().with_data_dir("/d");
        assert_eq!(spec, StoreSpec::embedded("/d"));
    }

    #[test]
    fn parses_etcd() {
        let spec: StoreSpec = "etcd://127.0.0.1:2379,127.0.0.1:22379".parse().unwrap();
        assert_eq!(spec, StoreSpec::etcd(["127.0.0.1:2379", "127.0.0.1:22379"]));
        let spec: StoreSpec = "etcd://etcd-1,[::1]:3000/".parse().unwrap();
        assert_eq!(spec, StoreSpec::etcd(["etcd-1:2379", "[::1]:3000"]));
        let spec: StoreSpec = "etcds://h:1?ca=/ca.pem&cert=/c.pem&key=/k.pem&max-txn-ops=256"
            .parse()
            .unwrap();
        let StoreSpec::Etcd(cfg) = &spec else {
            panic!("not etcd")
        };
        assert_eq!(cfg.max_txn_ops, 256);
        let tls = cfg.tls.as_ref().unwrap();
        assert_eq!(
            tls.ca_file.as_deref(),
            Some(std::path::Path::new("/ca.pem"))
        );
        assert_eq!(spec.to_string().parse::<StoreSpec>().unwrap(), spec);
        let spec: StoreSpec = "etcd://h:1?ca=/ca.pem".parse().unwrap();
        assert!(matches!(
            spec,
            StoreSpec::Etcd(EtcdConfig { tls: Some(_), .. })
        ));
    }

    #[test]
    fn rejects_bad_specs() {
        for bad in [
            "",
            "redis://x",
            "etcd://",
            "etcd://h:0",
            "etcd://h:99999",
            "etcd://h:x",
            "etcd://a,,b",
            "etcd://::1",
            "etcd://h?cert=/c",
            "etcd://h?bogus=1",
            "etcd://h?ca",
            "etcd://u@h",
            "etcd://h?max-txn-ops=0",
        ] {
            let err = bad.parse::<StoreSpec>().unwrap_err();
            assert!(matches!(err, StoreError::InvalidUrl { .. }), "{bad}: {err}");
        }
    }
}
