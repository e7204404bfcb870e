//! `caravan agent`: run a server (and, later, a client) — `-dev` for both on one machine.

use super::CliError;
use crate::server::{Identity, Server};
use crate::store::StoreSpec;
use caravan_schemas::agent_config::{self, AgentConfigSpec};
use clap::Args;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use tracing::Instrument;

/// How long a stopping agent lets open HTTP requests finish.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, Clone, Default, Args)]
pub struct AgentArgs {
    /// Server and client in one process on the embedded store, data in a temporary directory.
    #[arg(long)]
    pub dev: bool,
    /// Run the server half: the API, the store, the controllers.
    #[arg(long)]
    pub server: bool,
    /// Run the client half: a node agent that runs tasks.
    #[arg(long)]
    pub client: bool,
    /// Configuration files (HCL or JSON), read in order; later ones win (repeatable).
    #[arg(long = "config", value_name = "FILE")]
    pub config: Vec<PathBuf>,
    /// Where state lives.
    #[arg(long = "data-dir")]
    pub data_dir: Option<PathBuf>,
    /// The address to listen on.
    #[arg(long)]
    pub bind: Option<IpAddr>,
    /// The HTTP API port (4646; 0 picks a free one).
    #[arg(long = "http-port")]
    pub http_port: Option<u16>,
    /// Answer DNS queries on this port (UDP and TCP; 0 picks a free one). Turns DNS on.
    #[arg(long = "dns-port")]
    pub dns_port: Option<u16>,
    /// The region (global).
    #[arg(long)]
    pub region: Option<String>,
    /// The datacenter (dc1).
    #[arg(long = "dc")]
    pub datacenter: Option<String>,
    /// This agent's name (the hostname).
    #[arg(long = "node")]
    pub name: Option<String>,
    /// The store: `embedded` or `etcd://host:port,host:port`.
    #[arg(long)]
    pub store: Option<String>,
    /// Servers a client registers with (comma-separated host:port).
    #[arg(long, value_delimiter = ',')]
    pub servers: Vec<String>,
    /// Log level: trace, debug, info, warn, error.
    #[arg(long = "log-level")]
    pub log_level: Option<String>,
}

/// The configuration in force: files, then flags.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub name: String,
    pub region: String,
    pub datacenter: String,
    pub data_dir: Option<PathBuf>,
    pub bind: IpAddr,
    pub http_port: u16,
    pub advertise: Option<String>,
    pub server: bool,
    pub client: bool,
    pub dev: bool,
    pub store: String,
    pub log_level: String,
    /// Node heartbeat TTL and grace.
    pub heartbeat: crate::server::writes_nodes::HeartbeatConfig,
    /// The `client { … }` block.
    pub client_spec: caravan_schemas::agent_config::ClientSpec,
    /// Servers a client-only agent registers with (`-servers`, or `client { servers }`).
    pub servers: Vec<String>,
    /// The `plugin "<driver>" { config { … } }` blocks.
    pub plugins: crate::drivers::PluginConfigs,
    /// The DNS interface (`dns { … }` or `-dns-port`), when on.
    pub dns: Option<DnsSettings>,
}

/// The DNS interface's settings; see docs/dns.md.
#[derive(Debug, Clone)]
pub struct DnsSettings {
    pub bind: IpAddr,
    pub port: u16,
    pub domain: String,
    pub ttl: std::time::Duration,
    /// How long a client-only agent keeps the servers' answer.
    pub cache: std::time::Duration,
}

/// The `client { options { … } }` map, Nomad's older way to configure drivers.
fn client_options(
    spec: &caravan_schemas::agent_config::ClientSpec,
) -> std::collections::BTreeMap<String, String> {
    spec.options
        .as_ref()
        .map(|o| o.0.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
        .unwrap_or_default()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "caravan".into())
}

impl AgentConfig {
    pub fn resolve(args: &AgentArgs) -> Result<AgentConfig, CliError> {
        let mut spec = AgentConfigSpec::default();
        for path in &args.config {
            let text = std::fs::read_to_string(path)
                .map_err(|e| CliError::new(1, format!("reading config {}: {e}", path.display())))?;
            let file = agent_config::parse(&path.display().to_string(), &text)
                .map_err(|e| CliError::new(1, format!("Error loading configuration:\n{e}")))?;
            merge(&mut spec, file);
        }
        let server_spec = spec.server.clone().map(|s| s.0).unwrap_or_default();
        let client_spec = spec.client.clone().map(|c| c.0).unwrap_or_default();
        let ports = spec.ports.clone().map(|p| p.0).unwrap_or_default();
        let bind = match (&args.bind, &spec.bind_addr) {
            (Some(ip), _) => *ip,
            (None, Some(text)) => text.parse().map_err(|_| {
                CliError::new(1, format!("bind_addr {text:?} is not an IP address"))
            })?,
            (None, None) if args.dev => IpAddr::V4(Ipv4Addr::LOCALHOST),
            (None, None) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        let dns_spec = spec.dns.clone().map(|d| d.0).unwrap_or_default();
        let dns = if args.dns_port.is_some() || dns_spec.enabled.unwrap_or(false) {
            Some(DnsSettings {
                bind: match &dns_spec.bind {
                    Some(text) => text.parse().map_err(|_| {
                        CliError::new(1, format!("dns {{ bind = {text:?} }} is not an IP address"))
                    })?,
                    None => bind,
                },
                port: args
                    .dns_port
                    .or(dns_spec.port)
                    .unwrap_or(crate::dns::DEFAULT_PORT),
                domain: dns_spec.domain.clone().unwrap_or_else(|| "caravan".into()),
                ttl: dns_spec
                    .ttl
                    .map_or(std::time::Duration::ZERO, |d| d.0.to_std()),
                cache: dns_spec
                    .cache
                    .map_or(std::time::Duration::from_secs(1), |d| d.0.to_std()),
            })
        } else {
            None
        };
        let server = args.dev || args.server || server_spec.enabled.unwrap_or(false);
        let client = args.dev || args.client || client_spec.enabled.unwrap_or(false);
        if !server && !client {
            return Err(CliError::new(
                1,
                "Must specify either server, client or dev mode for the agent (-server, -client or -dev).",
            ));
        }
        Ok(AgentConfig {
            name: args
                .name
                .clone()
                .or(spec.name.clone())
                .unwrap_or_else(hostname),
            region: args
                .region
                .clone()
                .or(spec.region.clone())
                .unwrap_or_else(|| "global".into()),
            datacenter: args
                .datacenter
                .clone()
                .or(spec.datacenter.clone())
                .unwrap_or_else(|| "dc1".into()),
            data_dir: args
                .data_dir
                .clone()
                .or(spec.data_dir.clone().map(PathBuf::from)),
            bind,
            http_port: args.http_port.or(ports.http).unwrap_or(4646),
            advertise: spec.advertise.clone().and_then(|a| a.0.http),
            server,
            client,
            dev: args.dev,
            store: args
                .store
                .clone()
                .or(server_spec.store)
                .unwrap_or_else(|| "embedded".into()),
            log_level: args
                .log_level
                .clone()
                .or(spec.log_level.clone())
                .unwrap_or_else(|| "info".into()),
            client_spec: client_spec.clone(),
            servers: if args.servers.is_empty() {
                client_spec.servers.clone().unwrap_or_default()
            } else {
                args.servers.clone()
            },
            plugins: {
                let mut plugins = crate::drivers::PluginConfigs::from_specs(&spec.plugin.0);
                plugins.apply_client_options(&client_options(&client_spec));
                // Dev mode runs raw_exec tasks, as Nomad's does.
                if args.dev {
                    plugins
                        .0
                        .entry("raw_exec".into())
                        .or_default()
                        .entry("enabled".into())
                        .or_insert(serde_json::Value::Bool(true));
                }
                plugins
            },
            dns,
            heartbeat: {
                let mut hb = crate::server::writes_nodes::HeartbeatConfig::default();
                if let Some(ttl) = server_spec.min_heartbeat_ttl {
                    hb.ttl = ttl.0.to_std();
                }
                if let Some(grace) = server_spec.heartbeat_grace {
                    hb.grace = grace.0.to_std();
                }
                hb
            },
        })
    }
}

/// Later files override earlier ones block by block.
fn merge(base: &mut AgentConfigSpec, next: AgentConfigSpec) {
    macro_rules! take {
        ($($f:ident),*) => {$( if next.$f.is_some() { base.$f = next.$f; } )*};
    }
    take!(
        name, region, datacenter, data_dir, bind_addr, log_level, ports, addresses, advertise,
        server, client, dns
    );
    base.plugin.0.extend(next.plugin.0);
}

pub(super) fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CARAVAN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("caravan={level},warn")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

pub fn run(args: AgentArgs) -> Result<i32, CliError> {
    let config = AgentConfig::resolve(&args)?;
    init_logging(&config.log_level);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::new(1, format!("starting the runtime: {e}")))?;
    runtime.block_on(agent(config))
}

async fn agent(config: AgentConfig) -> Result<i32, CliError> {
    if config.client && !config.server {
        return client_only(config).await;
    }
    // Dev mode keeps its data in a temporary directory that goes away with the agent.
    let temp = if config.data_dir.is_none() && config.dev {
        Some(
            tempfile::Builder::new()
                .prefix("caravan-dev-")
                .tempdir()
                .map_err(|e| CliError::new(1, format!("creating a data dir: {e}")))?,
        )
    } else {
        None
    };
    let data_dir = config
        .data_dir
        .clone()
        .or_else(|| temp.as_ref().map(|t| t.path().to_path_buf()))
        .ok_or_else(|| {
            CliError::new(
                1,
                "a data directory is required: -data-dir or data_dir in the config",
            )
        })?;
    let spec: StoreSpec = config
        .store
        .parse()
        .map_err(|e| CliError::new(1, format!("store {:?}: {e}", config.store)))?;
    let spec = spec.with_data_dir(data_dir.join("server"));
    let store = crate::store::open(&spec)
        .await
        .map_err(|e| CliError::new(1, format!("opening the store: {e}")))?;

    let (listener, bound, advertise) = bind_http(&config).await?;
    let identity = Identity {
        name: config.name.clone(),
        region: config.region.clone(),
        datacenter: config.datacenter.clone(),
        advertise: advertise.clone(),
    };
    let options = crate::server::Options {
        heartbeat: config.heartbeat,
        local_alloc_root: config
            .client
            .then(|| data_dir.join("client").join("allocs")),
    };
    let server = Server::start_with(Arc::clone(&store), identity, options).await;
    let leadership = server.start_membership();
    let _jobs =
        crate::server::job_controller::start(Arc::clone(&server), leadership.is_leader.clone());
    let _nodes =
        crate::server::node_controller::start(Arc::clone(&server), leadership.is_leader.clone());
    let _deployments = crate::server::deployment_controller::start(
        Arc::clone(&server),
        leadership.is_leader.clone(),
    );
    let _services =
        crate::server::service_controller::start(Arc::clone(&server), leadership.is_leader.clone());
    let _lb_config =
        crate::server::lb_controller::start(Arc::clone(&server), leadership.is_leader.clone());
    crate::server::compactor::start(
        Arc::clone(&server),
        leadership.is_leader.clone(),
        crate::server::compactor::INTERVAL,
    );

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let api = tokio::spawn(crate::api::serve(
        Arc::clone(&server),
        listener,
        async move {
            let _ = stop_rx.await;
        },
    ));
    let dns = start_dns(
        &config,
        Arc::new(crate::dns::CacheDirectory::new(Arc::clone(
            &server.cache.services,
        ))),
    )
    .await?;
    let client = if config.client {
        Some(start_client(&config, &data_dir, &advertise).await?)
    } else {
        None
    };

    println!("==> Caravan agent configuration:\n");
    println!("       Advertise Addrs: HTTP: {advertise}");
    println!("            Bind Addrs: HTTP: [{bound}]");
    print_dns(dns.as_ref());
    println!(
        "                Client: {}",
        client
            .as_ref()
            .map_or("false".to_owned(), |c| format!("true (node {})", c.node_id))
    );
    println!("             Data Dir: {}", data_dir.display());
    println!(
        "             Log Level: {}",
        config.log_level.to_uppercase()
    );
    println!(
        "                Region: {} (DC: {})",
        config.region, config.datacenter
    );
    println!("                Server: true");
    println!("                 Store: {}", store.kind());
    println!("               Version: {}", env!("CARGO_PKG_VERSION"));
    println!("\n==> Caravan agent started! Log data will stream in below:\n");
    shutdown_signal().await;
    println!("==> Caught signal: shutting down");
    let _ = stop_tx.send(());
    if let Some(dns) = dns {
        dns.shutdown().await;
    }
    // Open requests (blocking queries, followed logs) get a moment to finish, not forever.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, api).await;
    let _ = store.close().await;
    drop(temp);
    Ok(0)
}

/// A client-only agent (`-client -servers a,b`): no store; it registers with the servers and
/// runs what they place on it, and serves the node's own HTTP API (health, task logs) on
/// `bind:http_port`, registered as the node's `HTTPAddr` so servers forward logs requests to it.
async fn client_only(config: AgentConfig) -> Result<i32, CliError> {
    let data_dir = config.data_dir.clone().ok_or_else(|| {
        CliError::new(
            1,
            "a data directory is required: -data-dir or data_dir in the config",
        )
    })?;
    if config.servers.is_empty() {
        return Err(CliError::new(
            1,
            "a client needs servers to register with: -servers host:port[,host:port] or client { servers = [...] }",
        ));
    }
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| CliError::new(1, format!("creating {}: {e}", data_dir.display())))?;
    let (listener, bound, advertise) = bind_http(&config).await?;
    let node_id = crate::agent::fingerprint::node_id(&data_dir)
        .map_err(|e| CliError::new(1, e.to_string()))?;
    let api = crate::agent::http::ClientApi::new(
        data_dir.join("client").join("allocs"),
        node_id.to_string(),
        &config.servers,
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(
        crate::agent::http::serve(api, listener, async move {
            let _ = stop_rx.await;
        })
        .instrument(tracing::info_span!("client_api", addr = %bound)),
    );
    let client = start_client(&config, &data_dir, &advertise).await?;
    let dns = start_dns(
        &config,
        Arc::new(crate::dns::RemoteDirectory::new(
            reqwest::Client::new(),
            config.servers.iter().map(|s| server_url(s)).collect(),
            config
                .dns
                .as_ref()
                .map_or(std::time::Duration::from_secs(1), |d| d.cache),
        )),
    )
    .await?;
    println!("==> Caravan agent configuration:\n");
    println!("       Advertise Addrs: HTTP: {advertise}");
    println!("            Bind Addrs: HTTP: [{bound}]");
    print_dns(dns.as_ref());
    println!("                Client: true (node {})", client.node_id);
    println!("               Servers: {}", config.servers.join(", "));
    println!("             Data Dir: {}", data_dir.display());
    println!(
        "                Region: {} (DC: {})",
        config.region, config.datacenter
    );
    println!("                Server: false");
    println!("               Version: {}", env!("CARGO_PKG_VERSION"));
    println!("\n==> Caravan agent started! Log data will stream in below:\n");
    shutdown_signal().await;
    println!("==> Caught signal: shutting down");
    let _ = stop_tx.send(());
    if let Some(dns) = dns {
        dns.shutdown().await;
    }
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, http).await;
    Ok(0)
}

/// `host:port` or a URL → a base URL.
fn server_url(server: &str) -> String {
    if server.starts_with("http://") || server.starts_with("https://") {
        server.trim_end_matches('/').to_owned()
    } else {
        format!("http://{server}")
    }
}

/// Starts the DNS interface when it is on, answering from `directory`.
async fn start_dns(
    config: &AgentConfig,
    directory: Arc<dyn crate::dns::Directory>,
) -> Result<Option<crate::dns::DnsServer>, CliError> {
    let Some(dns) = &config.dns else {
        return Ok(None);
    };
    let settings = crate::dns::DnsConfig {
        bind: dns.bind,
        port: dns.port,
        domain: dns.domain.clone(),
        datacenter: config.datacenter.clone(),
        ttl: dns.ttl,
    };
    crate::dns::start(&settings, directory)
        .await
        .map(Some)
        .map_err(|e| CliError::new(1, format!("starting DNS: {e}")))
}

/// The banner's DNS line (the address tests and users read the port from).
fn print_dns(dns: Option<&crate::dns::DnsServer>) {
    if let Some(dns) = dns {
        println!("                   DNS: {} (udp, tcp)", dns.addr);
    }
}

/// Binds the HTTP API's listener (`bind:http_port`); returns it, the address it got, and the
/// address to advertise (the `advertise { http }` setting, else the bound address, with
/// 127.0.0.1 for an unspecified one).
async fn bind_http(
    config: &AgentConfig,
) -> Result<(tokio::net::TcpListener, SocketAddr, String), CliError> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(config.bind, config.http_port))
        .await
        .map_err(|e| {
            CliError::new(
                1,
                format!("binding {}:{}: {e}", config.bind, config.http_port),
            )
        })?;
    let bound = listener
        .local_addr()
        .map_err(|e| CliError::new(1, e.to_string()))?;
    let advertise = config.advertise.clone().unwrap_or_else(|| {
        let ip = if bound.ip().is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            bound.ip()
        };
        SocketAddr::new(ip, bound.port()).to_string()
    });
    Ok((listener, bound, advertise))
}

/// Starts the client half: fingerprint, register with the servers, run allocations.
async fn start_client(
    config: &AgentConfig,
    data_dir: &std::path::Path,
    advertise: &str,
) -> Result<crate::agent::client::Client, CliError> {
    use crate::agent::{client, fingerprint};
    let spec = &config.client_spec;
    let node_id = fingerprint::node_id(data_dir).map_err(|e| CliError::new(1, e.to_string()))?;
    let fp = fingerprint::FingerprintConfig {
        node_id,
        name: config.name.clone(),
        datacenter: config.datacenter.clone(),
        node_class: spec.node_class.clone().unwrap_or_default(),
        node_pool: spec.node_pool.clone().unwrap_or_else(|| "default".into()),
        meta: spec
            .meta
            .as_ref()
            .map(|m| m.0.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
            .unwrap_or_default(),
        data_dir: data_dir.to_path_buf(),
        http_addr: advertise.to_owned(),
        // Dev mode keeps tasks on the loopback interface, as Nomad's does.
        network_interface: spec
            .network_interface
            .clone()
            .or_else(|| config.dev.then(|| "lo".to_owned())),
        reserved: spec
            .reserved
            .as_ref()
            .map(|r| fingerprint::Reserved {
                cpu_mhz: r.0.cpu.unwrap_or(0),
                memory_mb: r.0.memory.unwrap_or(0),
                disk_mb: r.0.disk.unwrap_or(0),
                ports: r.0.reserved_ports.clone().unwrap_or_default(),
            })
            .unwrap_or_default(),
        cpu_total_compute: spec.cpu_total_compute,
        memory_total_mb: spec.memory_total_mb,
    };
    let servers = if config.server {
        vec![advertise.to_owned()]
    } else {
        config.servers.clone()
    };
    let mut drivers = crate::drivers::builtin(&config.plugins);
    let options = client_options(spec);
    let list = |key: &str| -> Option<Vec<String>> {
        options.get(key).map(|v| {
            v.split(',')
                .map(|d| d.trim().to_owned())
                .filter(|d| !d.is_empty())
                .collect()
        })
    };
    if let Some(allow) = list("driver.allowlist") {
        drivers.retain(|d| allow.iter().any(|a| a == d.name()));
    }
    if let Some(deny) = list("driver.denylist") {
        drivers.retain(|d| !deny.iter().any(|a| a == d.name()));
    }
    client::start(
        client::ClientConfig {
            servers,
            data_dir: data_dir.to_path_buf(),
            fingerprint: fp,
            refingerprint_interval: client::REFINGERPRINT_INTERVAL,
        },
        drivers,
    )
    .await
    .map_err(|e| CliError::new(1, format!("starting the client: {e}")))
}

pub(super) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}
