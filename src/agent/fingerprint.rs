//! Host fingerprinting: the [`Node`] a client registers, built as Nomad's client builds it.
//!
//! Attributes carry Nomad's names (`kernel.name`, `os.name`, `cpu.arch` as Go's `GOARCH`,
//! `cpu.numcores`, `cpu.totalcompute`, `memory.totalbytes`, `unique.hostname`,
//! `unique.storage.*`, `unique.network.ip-address`, `nomad.version`, `driver.<name>`, …). Facts
//! come from `/proc`, `/sys`, `/etc/os-release` and a few syscalls (uname, statvfs,
//! getifaddrs, sched_getaffinity); whatever cannot be read is left out or falls back to a
//! documented default, so fingerprinting never fails. Only [`node_id`] can fail.

use crate::drivers::{Driver, Fingerprint};
use caravan_schemas::ids::NodeId;
use caravan_schemas::node::{DriverInfo, Node, SchedulingEligibility};
use caravan_schemas::resources::{
    NetworkResource, NodeCpuResources, NodeDiskResources, NodeMemoryResources, NodeNetworkAddress,
    NodeNetworkResource, NodeReservedCpuResources, NodeReservedDiskResources,
    NodeReservedMemoryResources, NodeReservedNetworkResources, NodeReservedResources,
    NodeResources,
};
use caravan_schemas::time::Timestamp;
use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// CPU frequency assumed when neither cpufreq nor `/proc/cpuinfo` tells it.
pub const DEFAULT_CPU_MHZ: i64 = 1000;
/// Link speed assumed when `/sys/class/net/<dev>/speed` does not tell it (Nomad's default).
pub const DEFAULT_NETWORK_MBITS: i32 = 1000;
/// Nomad's default dynamic port range.
pub const MIN_DYNAMIC_PORT: i32 = 20000;
pub const MAX_DYNAMIC_PORT: i32 = 32000;
/// How long one driver's fingerprint may take before it is reported undetected.
pub const DRIVER_FINGERPRINT_TIMEOUT: Duration = Duration::from_secs(10);
/// Set (to "true") when no usable IPv4 address was found and 127.0.0.1 is advertised.
pub const LOOPBACK_FALLBACK_ATTR: &str = "unique.network.loopback-fallback";

/// What the node holds back from the scheduler (`client { reserved { … } }`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reserved {
    pub cpu_mhz: i64,
    pub memory_mb: i64,
    pub disk_mb: i64,
    /// Reserved host ports as Nomad writes them: `"22,80,8000-8100"`.
    pub ports: String,
}

/// The agent's client configuration that fingerprinting needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FingerprintConfig {
    pub node_id: NodeId,
    pub name: String,
    pub datacenter: String,
    pub node_class: String,
    pub node_pool: String,
    pub meta: BTreeMap<String, String>,
    pub data_dir: PathBuf,
    /// `host:port` of the agent's HTTP API.
    pub http_addr: String,
    /// `client { network_interface = "eth0" }`.
    pub network_interface: Option<String>,
    pub reserved: Reserved,
    /// Overrides the detected `cores × MHz`.
    pub cpu_total_compute: Option<i64>,
    /// Overrides the detected memory size.
    pub memory_total_mb: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum FingerprintError {
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("node id file {} holds {value:?}, not a UUID; fix or remove it", path.display())]
    InvalidNodeId { path: PathBuf, value: String },
}

/// Builds the node as Nomad's client would register it: attributes with Nomad's names,
/// resources, reserved resources, drivers. `Status` is left at its default for the registering
/// code to decide.
pub async fn fingerprint(config: &FingerprintConfig, drivers: &[Arc<dyn Driver>]) -> Node {
    let host_config = config.clone();
    let host = tokio::task::spawn_blocking(move || Host::detect(&host_config));
    let driver_prints = futures::future::join_all(drivers.iter().map(|d| async move {
        let fp = tokio::time::timeout(DRIVER_FINGERPRINT_TIMEOUT, d.fingerprint())
            .await
            .unwrap_or_else(|_| Fingerprint::unhealthy(false, "fingerprint timed out"));
        (d.name(), fp)
    }));
    let (host, driver_prints) = tokio::join!(host, driver_prints);
    let host = host.unwrap_or_else(|_| Host::detect(config));

    let mut node = host.into_node(config);
    for (name, fp) in driver_prints {
        let key = format!("driver.{name}");
        if fp.detected {
            node.attributes
                .extend(fp.attributes.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        if fp.detected && fp.healthy {
            node.attributes.insert(key, "1".to_owned());
        } else {
            node.attributes.remove(&key);
        }
        let info = DriverInfo {
            attributes: fp.attributes,
            detected: fp.detected,
            healthy: fp.healthy,
            health_description: fp.description,
            update_time: Timestamp::now(),
        };
        node.drivers.insert(name.to_owned(), info);
    }
    node
}

/// Node id persisted in the data dir (`<data_dir>/client/node-id`): generated once (UUID v4),
/// reused after restarts. Concurrent first calls agree on one id.
pub fn node_id(data_dir: &Path) -> Result<NodeId, FingerprintError> {
    let dir = data_dir.join("client");
    let path = dir.join("node-id");
    let io = |action, path: &Path| {
        let path = path.to_owned();
        move |source| FingerprintError::Io {
            action,
            path,
            source,
        }
    };
    match std::fs::read_to_string(&path) {
        Ok(s) => return parse_node_id(&path, &s),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io("reading", &path)(e)),
    }
    std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    let id = NodeId::random();
    let tmp = dir.join(format!("node-id.{}.tmp", std::process::id()));
    std::fs::write(&tmp, format!("{id}\n")).map_err(io("writing", &tmp))?;
    // A hard link publishes the complete file, and only if no other process did first.
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(id),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            let s = std::fs::read_to_string(&path).map_err(io("reading", &path))?;
            parse_node_id(&path, &s)
        }
        Err(e) => Err(io("writing", &path)(e)),
    }
}

fn parse_node_id(path: &Path, s: &str) -> Result<NodeId, FingerprintError> {
    let id = s.trim();
    let hex_groups = id.split('-').map(str::len).collect::<Vec<_>>() == [8, 4, 4, 4, 12];
    if hex_groups && id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()) {
        Ok(NodeId::new(id.to_ascii_lowercase()))
    } else {
        Err(FingerprintError::InvalidNodeId {
            path: path.to_owned(),
            value: id.to_owned(),
        })
    }
}

/// Facts about the host, gathered with blocking reads.
#[derive(Debug)]
struct Host {
    kernel_version: String,
    kernel_arch: String,
    hostname: String,
    os_release: BTreeMap<String, String>,
    cores: Vec<u16>,
    cpu_mhz: Option<i64>,
    cpu_model: Option<String>,
    memory_bytes: u64,
    storage: Option<Storage>,
    network: Network,
}

#[derive(Debug)]
struct Storage {
    volume: Option<String>,
    total_bytes: u64,
    free_bytes: u64,
}

#[derive(Debug)]
struct Network {
    device: String,
    ip: Ipv4Addr,
    mac: String,
    mbits: i32,
    loopback_fallback: bool,
}

impl Host {
    fn detect(config: &FingerprintConfig) -> Host {
        let uts = nix::sys::utsname::uname().ok();
        let uts_field = |f: fn(&nix::sys::utsname::UtsName) -> &std::ffi::OsStr| {
            uts.as_ref()
                .map(|u| f(u).to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let cpuinfo = read("/proc/cpuinfo");
        let cpuinfo_field = |name: &str| {
            cpuinfo.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().to_owned())
            })
        };
        let cores = usable_cores();
        let first = cores.first().copied().unwrap_or(0);
        let max_freq = format!("/sys/devices/system/cpu/cpu{first}/cpufreq/cpuinfo_max_freq");
        let cpu_mhz = read(&max_freq)
            .trim()
            .parse::<i64>()
            .ok()
            .map(|khz| khz / 1000)
            .or_else(|| {
                cpuinfo_field("cpu MHz")?
                    .parse::<f64>()
                    .ok()
                    .map(|m| m.round() as i64)
            })
            .filter(|mhz| *mhz > 0);
        let memory_bytes = meminfo_total_bytes(&read("/proc/meminfo"))
            .or_else(|| nix::sys::sysinfo::sysinfo().ok().map(|s| s.ram_total()))
            .unwrap_or(0);
        let mut os_release = parse_os_release(&read("/etc/os-release"));
        if os_release.is_empty() {
            os_release = parse_os_release(&read("/usr/lib/os-release"));
        }
        Host {
            kernel_version: uts_field(|u| u.release()),
            kernel_arch: uts_field(|u| u.machine()),
            hostname: uts_field(|u| u.nodename()),
            os_release,
            cores,
            cpu_mhz,
            cpu_model: cpuinfo_field("model name"),
            memory_bytes,
            storage: storage(&config.data_dir),
            network: network(config.network_interface.as_deref()),
        }
    }

    fn into_node(self, config: &FingerprintConfig) -> Node {
        const MIB: u64 = 1024 * 1024;
        let mut attrs = BTreeMap::new();
        let mut set = |k: &str, v: String| {
            attrs.insert(k.to_owned(), v);
        };
        set("kernel.name", std::env::consts::OS.to_owned());
        set("kernel.version", self.kernel_version);
        set("kernel.arch", self.kernel_arch);
        set("cpu.arch", go_arch(std::env::consts::ARCH).to_owned());
        for (attr, key) in [("os.name", "ID"), ("os.version", "VERSION_ID")] {
            if let Some(v) = self.os_release.get(key) {
                set(attr, v.clone());
            }
        }
        set("os.signals", signals());
        let numcores = i64::try_from(self.cores.len()).unwrap_or(i64::MAX);
        let mhz = self.cpu_mhz.unwrap_or_else(|| {
            tracing::warn!("cannot detect the CPU frequency; assuming {DEFAULT_CPU_MHZ} MHz");
            DEFAULT_CPU_MHZ
        });
        let total_compute = config
            .cpu_total_compute
            .unwrap_or(numcores.saturating_mul(mhz));
        set("cpu.numcores", numcores.to_string());
        set("cpu.reservablecores", numcores.to_string());
        set("cpu.frequency", mhz.to_string());
        set("cpu.totalcompute", total_compute.to_string());
        if let Some(model) = self.cpu_model {
            set("cpu.modelname", model);
        }
        let memory_bytes = match config.memory_total_mb {
            Some(mb) => u64::try_from(mb).unwrap_or(0).saturating_mul(MIB),
            None => self.memory_bytes,
        };
        set("memory.totalbytes", memory_bytes.to_string());
        set("unique.hostname", self.hostname);
        let mut disk_mb = 0;
        if let Some(s) = &self.storage {
            if let Some(volume) = &s.volume {
                set("unique.storage.volume", volume.clone());
            }
            set("unique.storage.bytestotal", s.total_bytes.to_string());
            set("unique.storage.bytesfree", s.free_bytes.to_string());
            disk_mb = i64::try_from(s.free_bytes / MIB).unwrap_or(i64::MAX);
        }
        let net = self.network;
        let ip = net.ip.to_string();
        set("unique.network.ip-address", ip.clone());
        if net.loopback_fallback {
            set(LOOPBACK_FALLBACK_ATTR, "true".to_owned());
        }
        set("nomad.version", env!("CARGO_PKG_VERSION").to_owned());
        set("caravan.version", env!("CARGO_PKG_VERSION").to_owned());
        set("nomad.advertise.address", config.http_addr.clone());

        let resources = NodeResources {
            cpu: NodeCpuResources {
                cpu_shares: total_compute,
                total_cpu_cores: u16::try_from(self.cores.len()).unwrap_or(u16::MAX),
                reservable_cpu_cores: self.cores,
            },
            memory: NodeMemoryResources {
                memory_mb: i64::try_from(memory_bytes / MIB).unwrap_or(i64::MAX),
            },
            disk: NodeDiskResources { disk_mb },
            networks: vec![NetworkResource {
                mode: "host".to_owned(),
                device: net.device.clone(),
                cidr: format!("{ip}/32"),
                ip: ip.clone(),
                mbits: net.mbits,
                ..NetworkResource::default()
            }],
            node_networks: vec![NodeNetworkResource {
                mode: "host".to_owned(),
                device: net.device,
                mac_address: net.mac,
                speed: net.mbits,
                addresses: vec![NodeNetworkAddress {
                    family: "ipv4".to_owned(),
                    alias: "default".to_owned(),
                    address: ip,
                    ..NodeNetworkAddress::default()
                }],
            }],
            min_dynamic_port: MIN_DYNAMIC_PORT,
            max_dynamic_port: MAX_DYNAMIC_PORT,
        };
        let reserved = NodeReservedResources {
            cpu: NodeReservedCpuResources {
                cpu_shares: config.reserved.cpu_mhz,
                reserved_cpu_cores: Vec::new(),
            },
            memory: NodeReservedMemoryResources {
                memory_mb: config.reserved.memory_mb,
            },
            disk: NodeReservedDiskResources {
                disk_mb: config.reserved.disk_mb,
            },
            networks: NodeReservedNetworkResources {
                reserved_host_ports: config.reserved.ports.clone(),
            },
        };
        Node {
            id: config.node_id.clone(),
            name: config.name.clone(),
            datacenter: config.datacenter.clone(),
            node_class: config.node_class.clone(),
            node_pool: config.node_pool.clone(),
            meta: config.meta.clone(),
            http_addr: config.http_addr.clone(),
            attributes: attrs,
            node_resources: Some(resources),
            reserved_resources: Some(reserved),
            scheduling_eligibility: SchedulingEligibility::Eligible,
            ..Node::default()
        }
    }
}

/// A file's contents, empty when unreadable.
fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Go's `GOARCH` for a Rust target arch, as Nomad reports `cpu.arch`.
fn go_arch(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// The CPUs this process may run on (its affinity mask), else `0..available_parallelism`.
fn usable_cores() -> Vec<u16> {
    use nix::sched::{CpuSet, sched_getaffinity};
    let from_mask = sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map(|set| {
            (0..CpuSet::count())
                .filter(|&i| set.is_set(i).unwrap_or(false))
                .filter_map(|i| u16::try_from(i).ok())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    if !from_mask.is_empty() {
        return from_mask;
    }
    let n = std::thread::available_parallelism().map_or(1, usize::from);
    (0..u16::try_from(n).unwrap_or(u16::MAX)).collect()
}

fn meminfo_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb = line.split_whitespace().nth(1)?.parse::<u64>().ok()?;
    Some(kb.saturating_mul(1024))
}

/// `KEY=value` lines of os-release(5), quotes removed.
fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.trim().split_once('=')?;
            let v = v.trim();
            let v = [('"', '"'), ('\'', '\'')]
                .iter()
                .find_map(|(a, b)| v.strip_prefix(*a)?.strip_suffix(*b))
                .unwrap_or(v);
            (!k.starts_with('#')).then(|| (k.trim().to_owned(), v.to_owned()))
        })
        .collect()
}

/// The signals tasks may be sent, sorted, comma-separated (`SIGABRT,SIGALRM,…`).
fn signals() -> String {
    let mut names: Vec<&str> = nix::sys::signal::Signal::iterator()
        .map(|s| s.as_str())
        .collect();
    names.sort_unstable();
    names.join(",")
}

/// Size, free space and mount device of the filesystem holding `data_dir` (or its nearest
/// existing ancestor, before the agent creates it).
#[allow(clippy::useless_conversion)] // the statvfs fields are narrower than u64 on 32-bit targets
fn storage(data_dir: &Path) -> Option<Storage> {
    let existing = data_dir.ancestors().find(|p| p.exists())?;
    let path = std::fs::canonicalize(existing).unwrap_or_else(|_| existing.to_owned());
    let st = match nix::sys::statvfs::statvfs(&path) {
        Ok(st) => st,
        Err(e) => {
            tracing::warn!("statvfs {}: {e}; reporting no disk", path.display());
            return None;
        }
    };
    let frag = u64::from(st.fragment_size());
    Some(Storage {
        volume: mount_source(&read("/proc/self/mountinfo"), &path),
        total_bytes: u64::from(st.blocks()).saturating_mul(frag),
        free_bytes: u64::from(st.blocks_available()).saturating_mul(frag),
    })
}

/// The source (device) of the innermost mount holding `path`, from `/proc/self/mountinfo`.
fn mount_source(mountinfo: &str, path: &Path) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let (Some(mount_point), Some(source)) = (
            left.split(' ').nth(4).map(unescape_mount),
            right.split(' ').nth(1).map(unescape_mount),
        ) else {
            continue;
        };
        let depth = Path::new(&mount_point).components().count();
        if path.starts_with(&mount_point) && best.as_ref().is_none_or(|(d, _)| depth >= *d) {
            best = Some((depth, source));
        }
    }
    best.map(|(_, source)| source)
}

/// Undoes mountinfo's escapes of space, tab, newline and backslash (`\040` for a space).
fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The advertised interface and IPv4: the configured interface's first IPv4, else the default
/// route's interface, else the first up non-loopback interface, else 127.0.0.1 on `lo`.
fn network(configured: Option<&str>) -> Network {
    use nix::net::if_::InterfaceFlags;
    let addrs: Vec<(String, Ipv4Addr, bool)> = nix::ifaddrs::getifaddrs()
        .map(|it| {
            it.filter_map(|a| {
                let ip = a.address.as_ref()?.as_sockaddr_in()?.ip();
                let usable = a.flags.contains(InterfaceFlags::IFF_UP)
                    && !a.flags.contains(InterfaceFlags::IFF_LOOPBACK)
                    && !ip.is_loopback();
                Some((a.interface_name, ip, usable))
            })
            .collect()
        })
        .unwrap_or_default();
    let on = |dev: &str| addrs.iter().find(|(name, ..)| name == dev);
    let configured_addr = configured.and_then(|dev| {
        let found = on(dev);
        if found.is_none() {
            tracing::warn!("network_interface {dev:?} has no IPv4 address; picking another");
        }
        found
    });
    let chosen = configured_addr
        .or_else(|| {
            default_route_devices(&read("/proc/net/route"))
                .iter()
                .find_map(|dev| on(dev).filter(|(.., usable)| *usable))
        })
        .or_else(|| addrs.iter().find(|(.., usable)| *usable));
    let (device, ip, loopback_fallback) = match chosen {
        Some((dev, ip, _)) => (dev.clone(), *ip, false),
        None => {
            tracing::warn!("no non-loopback IPv4 address found; advertising 127.0.0.1");
            ("lo".to_owned(), Ipv4Addr::LOCALHOST, true)
        }
    };
    let sys = Path::new("/sys/class/net").join(&device);
    let mbits = read(sys.join("speed"))
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|s| *s > 0)
        .unwrap_or(DEFAULT_NETWORK_MBITS);
    Network {
        mac: read(sys.join("address")).trim().to_owned(),
        device,
        ip,
        mbits,
        loopback_fallback,
    }
}

/// Interfaces carrying a default route, from `/proc/net/route`.
fn default_route_devices(routes: &str) -> Vec<String> {
    routes
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_os_release_and_mountinfo() {
        let os = parse_os_release("# c\nID=debian\nVERSION_ID=\"12\"\nNAME='Debian GNU/Linux'\n");
        assert_eq!(os["ID"], "debian");
        assert_eq!(os["VERSION_ID"], "12");
        assert_eq!(os["NAME"], "Debian GNU/Linux");
        assert!(!os.contains_key("# c"));
        let mi = "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
                  30 22 8:2 / /srv/my\\040data rw shared:1 - xfs /dev/sdb1 rw\n";
        assert_eq!(
            mount_source(mi, Path::new("/srv/my data/x")).as_deref(),
            Some("/dev/sdb1")
        );
        assert_eq!(
            mount_source(mi, Path::new("/srv/other")).as_deref(),
            Some("/dev/sda1")
        );
    }

    #[test]
    fn finds_default_route_and_node_id_format() {
        let routes = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
                      eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\n\
                      eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n";
        assert_eq!(default_route_devices(routes), ["eth0"]);
        let p = Path::new("x");
        assert!(parse_node_id(p, "F7476465-4d6e-c0de-26d0-e383c49be941\n").is_ok());
        assert!(parse_node_id(p, "not-a-uuid").is_err());
        assert_eq!(go_arch("x86_64"), "amd64");
    }
}
