//! Resources in Nomad's API form: what a task asks for ([`Resources`]), what a node has
//! ([`NodeResources`], [`NodeReservedResources`]) and what an allocation was given
//! ([`AllocatedResources`]), plus [`ComparableResources`], the flat cpu/memory/disk sum the
//! scheduler compares.
//!
//! This module also holds the small serde helpers the other API types share:
//! [`null_as_default`] (Go writes a nil slice or map as `null`) and the `wire_enum!` macro for
//! closed sets of status strings.

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Deserializes `null` as the type's default.
///
/// Go encodes a nil slice or map as `null`, so JSON from Nomad (and from its CLI's `-output`)
/// is full of `"Networks": null`; serde's `default` only covers missing keys. Use it on every
/// `Vec` and map field: `#[serde(deserialize_with = "null_as_default")]`.
pub fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A string that is not one of a wire enum's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}; expected one of: {}", expected.join(", "))]
pub struct UnknownValue {
    /// The enum's name.
    pub kind: &'static str,
    /// What was given.
    pub value: String,
    /// The accepted wire strings.
    pub expected: &'static [&'static str],
}

/// Declares a closed set of wire strings as an enum with `as_str`, `Display`, `FromStr`,
/// serde (an empty string decodes as the default, as Go's zero value would) and a JSON Schema
/// `enum`.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $wire:tt, )+
        }
        default = $default:ident;
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// Every wire string, in declaration order.
            pub const WIRE: &'static [&'static str] = &[$($wire),+];

            /// The string Nomad's API uses.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $wire,)+
                }
            }
        }

        impl ::std::default::Default for $name {
            fn default() -> Self {
                $name::$default
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::resources::UnknownValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($wire => Ok($name::$variant),)+
                    _ => Err($crate::resources::UnknownValue {
                        kind: stringify!($name),
                        value: s.to_owned(),
                        expected: $name::WIRE,
                    }),
                }
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <::std::borrow::Cow<'de, str> as ::serde::Deserialize>::deserialize(d)?;
                if s.is_empty() {
                    return Ok(<$name as ::std::default::Default>::default());
                }
                s.parse()
                    .map_err(|_| <D::Error as ::serde::de::Error>::unknown_variant(&s, $name::WIRE))
            }
        }

        impl ::schemars::JsonSchema for $name {
            fn schema_name() -> ::std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut ::schemars::SchemaGenerator) -> ::schemars::Schema {
                ::schemars::json_schema!({ "type": "string", "enum": $name::WIRE })
            }
        }
    };
}
pub(crate) use wire_enum;

// ---------------------------------------------------------------------------------------------
// Task level: what a task asks for.
// ---------------------------------------------------------------------------------------------

/// What a task asks for (`resources { cpu = 500 memory = 256 }`); CPU in MHz, memory in MB.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct Resources {
    /// CPU in MHz (Nomad defaults it to 100 unless `cores` is set; applied by the jobspec).
    #[serde(rename = "CPU")]
    pub cpu: i32,
    /// Whole cores reserved for the task (instead of `cpu`).
    pub cores: i32,
    /// Memory in MB.
    #[serde(rename = "MemoryMB")]
    pub memory_mb: i32,
    /// Memory limit for oversubscription, in MB; 0 when unset.
    #[serde(rename = "MemoryMaxMB")]
    pub memory_max_mb: i32,
    /// Deprecated in Nomad (use `ephemeral_disk`), still on the wire.
    #[serde(rename = "DiskMB")]
    pub disk_mb: i32,
    /// Deprecated in Nomad, kept for wire compatibility.
    #[serde(rename = "IOPS")]
    pub iops: i32,
    /// Task-level networks (deprecated in Nomad in favour of group networks).
    #[serde(deserialize_with = "null_as_default")]
    pub networks: Vec<NetworkResource>,
    /// Devices (GPUs, …) the task asks for.
    #[serde(deserialize_with = "null_as_default")]
    pub devices: Vec<RequestedDevice>,
    /// NUMA placement request (Nomad Enterprise); `null` when unset.
    #[serde(rename = "NUMA")]
    pub numa: Option<NumaResource>,
    /// Size of the task's in-memory secrets directory, in MB.
    #[serde(rename = "SecretsMB")]
    pub secrets_mb: i32,
}

/// A NUMA affinity request (`numa { affinity = "require" }`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct NumaResource {
    /// `none`, `prefer` or `require`.
    pub affinity: String,
    /// Devices that must share the NUMA node with the task's cores.
    #[serde(deserialize_with = "null_as_default")]
    pub devices: Vec<String>,
}

/// A device request (`device "nvidia/gpu" { count = 2 }`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct RequestedDevice {
    /// `<type>`, `<vendor>/<type>` or `<vendor>/<type>/<model>`.
    pub name: String,
    /// How many (Nomad defaults it to 1 when unset).
    pub count: u64,
    /// Constraints on the device's attributes (Nomad `Constraint` objects, kept as JSON).
    #[serde(deserialize_with = "null_as_default")]
    pub constraints: Vec<serde_json::Value>,
    /// Affinities on the device's attributes (Nomad `Affinity` objects, kept as JSON).
    #[serde(deserialize_with = "null_as_default")]
    pub affinities: Vec<serde_json::Value>,
}

/// A network a group or task asks for, or one an allocation was given.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkResource {
    /// `host` (default), `bridge`, `none` or `cni/<name>`.
    pub mode: String,
    /// Host interface name.
    pub device: String,
    /// CIDR block of the addresses.
    #[serde(rename = "CIDR")]
    pub cidr: String,
    /// The address assigned on the node.
    #[serde(rename = "IP")]
    pub ip: String,
    /// Hostname inside the network namespace (omitted when empty, as Nomad does).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    /// Bandwidth in Mbit/s (deprecated in Nomad).
    #[serde(rename = "MBits")]
    pub mbits: i32,
    /// DNS settings for the namespace; `null` when unset.
    #[serde(rename = "DNS")]
    pub dns: Option<DnsConfig>,
    /// Ports with a fixed host port (`static = N`).
    #[serde(deserialize_with = "null_as_default")]
    pub reserved_ports: Vec<Port>,
    /// Ports whose host port the scheduler picks.
    #[serde(deserialize_with = "null_as_default")]
    pub dynamic_ports: Vec<Port>,
    /// CNI arguments; `null` when unset.
    #[serde(rename = "CNI")]
    pub cni: Option<CniConfig>,
}

impl NetworkResource {
    /// Every port, reserved first, then dynamic.
    pub fn ports(&self) -> impl Iterator<Item = &Port> {
        self.reserved_ports.iter().chain(self.dynamic_ports.iter())
    }

    /// The port with this label.
    pub fn port(&self, label: &str) -> Option<&Port> {
        self.ports().find(|p| p.label == label)
    }
}

/// DNS settings of a network namespace (`dns { servers = [...] }`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct DnsConfig {
    #[serde(deserialize_with = "null_as_default")]
    pub servers: Vec<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub searches: Vec<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub options: Vec<String>,
}

/// CNI arguments of a `cni/<name>` network.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct CniConfig {
    #[serde(deserialize_with = "null_as_default")]
    pub args: BTreeMap<String, String>,
}

/// A port (`port "http" { static = 8080  to = 80 }`): `Value` is the host port, `To` the port
/// inside the task's network namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct Port {
    pub label: String,
    /// Host port; 0 until assigned for a dynamic port.
    pub value: i32,
    /// Port inside the task; 0 means same as `Value`, -1 means none mapped.
    pub to: i32,
    /// The `host_network` the port binds to; empty for the default.
    pub host_network: String,
    /// Allow the static port to collide with another allocation's.
    pub ignore_collision: bool,
}

// ---------------------------------------------------------------------------------------------
// Node level: what a node has and keeps back.
// ---------------------------------------------------------------------------------------------

/// What a node offers, as fingerprinted by its agent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct NodeResources {
    pub cpu: NodeCpuResources,
    pub memory: NodeMemoryResources,
    pub disk: NodeDiskResources,
    /// Legacy network view (one entry per interface).
    #[serde(deserialize_with = "null_as_default")]
    pub networks: Vec<NetworkResource>,
    /// The node's networks with their addresses.
    #[serde(deserialize_with = "null_as_default")]
    pub node_networks: Vec<NodeNetworkResource>,
    /// Lowest port the scheduler may hand out (Caravan default 20000).
    pub min_dynamic_port: i32,
    /// Highest port the scheduler may hand out (Caravan default 32000).
    pub max_dynamic_port: i32,
}

impl NodeResources {
    /// CPU, memory and disk as one comparable value (reserved resources not subtracted; see
    /// `Node::comparable_resources`).
    pub fn comparable(&self) -> ComparableResources {
        ComparableResources {
            cpu_shares: self.cpu.cpu_shares,
            memory_mb: self.memory.memory_mb,
            disk_mb: self.disk.disk_mb,
        }
    }
}

/// A node's CPU: total compute in MHz and its cores.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct NodeCpuResources {
    /// Total compute in MHz (cores × clock).
    pub cpu_shares: i64,
    pub total_cpu_cores: u16,
    /// Core ids tasks may reserve whole.
    #[serde(deserialize_with = "null_as_default")]
    pub reservable_cpu_cores: Vec<u16>,
}

/// A node's memory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct NodeMemoryResources {
    #[serde(rename = "MemoryMB")]
    pub memory_mb: i64,
}

/// A node's disk available to allocations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct NodeDiskResources {
    #[serde(rename = "DiskMB")]
    pub disk_mb: i64,
}

/// One network of a node (an interface, or a CNI network).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct NodeNetworkResource {
    /// `host` for physical networks, `cni/<name>` for CNI ones.
    pub mode: String,
    /// Interface name.
    pub device: String,
    pub mac_address: String,
    /// Link speed in Mbit/s.
    pub speed: i32,
    #[serde(deserialize_with = "null_as_default")]
    pub addresses: Vec<NodeNetworkAddress>,
}

/// One address of a node network.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct NodeNetworkAddress {
    /// `ipv4` or `ipv6`.
    pub family: String,
    /// The host network name this address serves (`default` for the default one).
    pub alias: String,
    pub address: String,
    /// Ports not to hand out on this address (`"22,80-90"`).
    pub reserved_ports: String,
    /// Default route of this address.
    pub gateway: String,
}

/// What a node keeps back from the scheduler (`client { reserved { ... } }`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct NodeReservedResources {
    pub cpu: NodeReservedCpuResources,
    pub memory: NodeReservedMemoryResources,
    pub disk: NodeReservedDiskResources,
    pub networks: NodeReservedNetworkResources,
}

impl NodeReservedResources {
    /// CPU, memory and disk as one comparable value.
    pub fn comparable(&self) -> ComparableResources {
        ComparableResources {
            cpu_shares: self.cpu.cpu_shares,
            memory_mb: self.memory.memory_mb,
            disk_mb: self.disk.disk_mb,
        }
    }
}

/// Reserved CPU.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct NodeReservedCpuResources {
    /// Reserved compute in MHz.
    pub cpu_shares: i64,
    /// Core ids not offered to tasks.
    #[serde(deserialize_with = "null_as_default")]
    pub reserved_cpu_cores: Vec<u16>,
}

/// Reserved memory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct NodeReservedMemoryResources {
    #[serde(rename = "MemoryMB")]
    pub memory_mb: i64,
}

/// Reserved disk.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct NodeReservedDiskResources {
    #[serde(rename = "DiskMB")]
    pub disk_mb: i64,
}

/// Reserved host ports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct NodeReservedNetworkResources {
    /// Ports not to hand out, as a list of ports and ranges (`"22,80,8000-8100"`).
    pub reserved_host_ports: String,
}

// ---------------------------------------------------------------------------------------------
// Allocation level: what an allocation was given.
// ---------------------------------------------------------------------------------------------

/// What an allocation was given: per task, plus what the group shares.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct AllocatedResources {
    /// Task name → its resources.
    #[serde(deserialize_with = "null_as_default")]
    pub tasks: BTreeMap<String, AllocatedTaskResources>,
    /// Task name → its lifecycle; `null` for a main task (as Nomad writes it).
    #[serde(deserialize_with = "null_as_default")]
    pub task_lifecycles: BTreeMap<String, Option<TaskLifecycleConfig>>,
    /// Group-level networks, ports and disk.
    pub shared: AllocatedSharedResources,
}

impl AllocatedResources {
    /// The flat cpu/memory/disk footprint of the allocation, as Nomad's `Comparable` computes
    /// it: tasks that never run at the same time do not add up. Prestart (non-sidecar) and
    /// poststop tasks only count when they need more than the main tasks; sidecars and
    /// poststart tasks run alongside the main tasks. Tasks with reserved cores always count.
    pub fn comparable(&self) -> ComparableResources {
        let mut fixed = ComparableResources::default();
        let mut prestart = ComparableResources::default();
        let mut main = ComparableResources::default();
        let mut poststop = ComparableResources::default();
        for (name, task) in &self.tasks {
            let mut res = ComparableResources {
                cpu_shares: task.cpu.cpu_shares,
                memory_mb: task.memory.memory_mb,
                disk_mb: 0,
            };
            if !task.cpu.reserved_cores.is_empty() {
                fixed.cpu_shares = fixed.cpu_shares.saturating_add(res.cpu_shares);
                res.cpu_shares = 0;
            }
            let lifecycle = self.task_lifecycles.get(name).and_then(Option::as_ref);
            match lifecycle.map(|l| (l.hook.as_str(), l.sidecar)) {
                Some(("prestart", true)) => {
                    prestart.add(&res);
                    main.add(&res);
                }
                Some(("prestart", false)) => prestart.add(&res),
                Some(("poststop", _)) => poststop.add(&res),
                _ => main.add(&res),
            }
        }
        main = main.max(&prestart).max(&poststop);
        fixed.add(&main);
        fixed.disk_mb = fixed.disk_mb.saturating_add(self.shared.disk_mb);
        fixed
    }

    /// Every host port the allocation holds: group-level port mappings and task network ports.
    pub fn host_ports(&self) -> impl Iterator<Item = i32> + '_ {
        let shared = self.shared.ports.iter().map(|p| p.value);
        let nets = self
            .shared
            .networks
            .iter()
            .chain(self.tasks.values().flat_map(|t| t.networks.iter()))
            .flat_map(|n| n.ports().map(|p| p.value));
        shared.chain(nets).filter(|v| *v > 0)
    }
}

/// A task's lifecycle as recorded in [`AllocatedResources::task_lifecycles`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskLifecycleConfig {
    /// `prestart`, `poststart` or `poststop`.
    pub hook: String,
    /// Keeps running alongside the main tasks.
    pub sidecar: bool,
}

/// What one task was given.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct AllocatedTaskResources {
    pub cpu: AllocatedCpuResources,
    pub memory: AllocatedMemoryResources,
    /// Task-level networks (legacy).
    #[serde(deserialize_with = "null_as_default")]
    pub networks: Vec<NetworkResource>,
    #[serde(deserialize_with = "null_as_default")]
    pub devices: Vec<AllocatedDeviceResource>,
}

/// CPU given to a task.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct AllocatedCpuResources {
    /// MHz.
    pub cpu_shares: i64,
    /// Core ids reserved whole for the task.
    #[serde(deserialize_with = "null_as_default")]
    pub reserved_cores: Vec<u16>,
}

/// Memory given to a task.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct AllocatedMemoryResources {
    #[serde(rename = "MemoryMB")]
    pub memory_mb: i64,
    /// Oversubscription limit; 0 when unset.
    #[serde(rename = "MemoryMaxMB")]
    pub memory_max_mb: i64,
}

/// Devices given to a task.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct AllocatedDeviceResource {
    pub vendor: String,
    #[serde(rename = "Type")]
    pub kind: String,
    pub name: String,
    #[serde(rename = "DeviceIDs", deserialize_with = "null_as_default")]
    pub device_ids: Vec<String>,
}

/// What the group's tasks share: group networks, their port mappings, and the ephemeral disk.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct AllocatedSharedResources {
    #[serde(deserialize_with = "null_as_default")]
    pub networks: Vec<NetworkResource>,
    /// Ephemeral disk in MB.
    #[serde(rename = "DiskMB")]
    pub disk_mb: i64,
    #[serde(deserialize_with = "null_as_default")]
    pub ports: Vec<AllocatedPortMapping>,
}

impl AllocatedSharedResources {
    /// The mapping for a port label.
    pub fn port(&self, label: &str) -> Option<&AllocatedPortMapping> {
        self.ports.iter().find(|p| p.label == label)
    }
}

/// A port an allocation was given: host `Value` on `HostIP`, mapped to `To` inside the task.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct AllocatedPortMapping {
    pub label: String,
    pub value: i32,
    pub to: i32,
    #[serde(rename = "HostIP")]
    pub host_ip: String,
    pub ignore_collision: bool,
}

// ---------------------------------------------------------------------------------------------
// Comparison.
// ---------------------------------------------------------------------------------------------

/// CPU (MHz), memory (MB) and disk (MB) as plain numbers: what the scheduler adds up and
/// compares. Networks and ports are checked separately.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ComparableResources {
    pub cpu_shares: i64,
    pub memory_mb: i64,
    pub disk_mb: i64,
}

impl ComparableResources {
    /// Adds `other` (saturating).
    pub fn add(&mut self, other: &ComparableResources) {
        self.cpu_shares = self.cpu_shares.saturating_add(other.cpu_shares);
        self.memory_mb = self.memory_mb.saturating_add(other.memory_mb);
        self.disk_mb = self.disk_mb.saturating_add(other.disk_mb);
    }

    /// Subtracts `other` (saturating; the result may be negative, meaning overcommitted).
    pub fn subtract(&mut self, other: &ComparableResources) {
        self.cpu_shares = self.cpu_shares.saturating_sub(other.cpu_shares);
        self.memory_mb = self.memory_mb.saturating_sub(other.memory_mb);
        self.disk_mb = self.disk_mb.saturating_sub(other.disk_mb);
    }

    /// The larger of each dimension.
    pub fn max(self, other: &ComparableResources) -> ComparableResources {
        ComparableResources {
            cpu_shares: self.cpu_shares.max(other.cpu_shares),
            memory_mb: self.memory_mb.max(other.memory_mb),
            disk_mb: self.disk_mb.max(other.disk_mb),
        }
    }

    /// Whether this fits in `capacity`; otherwise the first exhausted dimension, named as in
    /// Nomad's `AllocMetric.DimensionExhausted`: `"cpu"`, `"memory"` or `"disk"`.
    pub fn fits_in(&self, capacity: &ComparableResources) -> Result<(), &'static str> {
        if self.cpu_shares > capacity.cpu_shares {
            Err("cpu")
        } else if self.memory_mb > capacity.memory_mb {
            Err("memory")
        } else if self.disk_mb > capacity.disk_mb {
            Err("disk")
        } else {
            Ok(())
        }
    }
}

impl fmt::Display for ComparableResources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cpu={}MHz memory={}MB disk={}MB",
            self.cpu_shares, self.memory_mb, self.disk_mb
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(v: &serde_json::Value) -> Vec<String> {
        v.as_object().unwrap().keys().cloned().collect()
    }

    #[test]
    fn task_resources_round_trip_nomad_json() {
        let nomad = json!({
            "CPU": 500, "Cores": 0, "MemoryMB": 256, "MemoryMaxMB": 512, "DiskMB": 0, "IOPS": 0,
            "Networks": [{
                "Mode": "host", "Device": "", "CIDR": "", "IP": "", "MBits": 10, "DNS": null,
                "ReservedPorts": [{"Label": "admin", "Value": 8080, "To": 0, "HostNetwork": "default", "IgnoreCollision": false}],
                "DynamicPorts": [{"Label": "http", "Value": 0, "To": 80, "HostNetwork": "default", "IgnoreCollision": false}],
                "CNI": null
            }],
            "Devices": [{"Name": "nvidia/gpu", "Count": 1, "Constraints": null, "Affinities": null}],
            "NUMA": null, "SecretsMB": 0
        });
        let r: Resources = serde_json::from_value(nomad.clone()).unwrap();
        assert_eq!((r.cpu, r.memory_mb, r.memory_max_mb), (500, 256, 512));
        assert_eq!(r.networks[0].port("http").unwrap().to, 80);
        assert_eq!(r.networks[0].port("admin").unwrap().value, 8080);
        assert!(r.devices[0].constraints.is_empty());
        let back = serde_json::to_value(&r).unwrap();
        assert_eq!(keys(&back), keys(&nomad));
        assert_eq!(keys(&back["Networks"][0]), keys(&nomad["Networks"][0]));
        assert_eq!(
            back["Networks"][0]["ReservedPorts"],
            nomad["Networks"][0]["ReservedPorts"]
        );
    }

    #[test]
    fn partial_and_null_input_decodes_to_defaults() {
        let r: Resources =
            serde_json::from_value(json!({"MemoryMB": 64, "Networks": null})).unwrap();
        assert_eq!(
            r,
            Resources {
                memory_mb: 64,
                ..Resources::default()
            }
        );
        let n: NetworkResource = serde_json::from_value(
            json!({"Hostname": "web", "DNS": {"Servers": ["1.1.1.1"], "Searches": null}}),
        )
        .unwrap();
        assert_eq!(n.dns.unwrap().servers, ["1.1.1.1"]);
        // Hostname is omitempty in Nomad.
        assert!(
            serde_json::to_value(NetworkResource::default())
                .unwrap()
                .get("Hostname")
                .is_none()
        );
    }

    #[test]
    fn node_resources_round_trip_and_compare() {
        let nomad = json!({
            "Cpu": {"CpuShares": 8000, "TotalCpuCores": 4, "ReservableCpuCores": [0, 1, 2, 3]},
            "Memory": {"MemoryMB": 16000},
            "Disk": {"DiskMB": 100000},
            "Networks": null,
            "NodeNetworks": [{"Mode": "host", "Device": "eth0", "MacAddress": "aa:bb:cc:dd:ee:ff", "Speed": 1000,
                "Addresses": [{"Family": "ipv4", "Alias": "default", "Address": "10.0.0.5", "ReservedPorts": "", "Gateway": ""}]}],
            "MinDynamicPort": 20000, "MaxDynamicPort": 32000
        });
        let n: NodeResources = serde_json::from_value(nomad.clone()).unwrap();
        assert_eq!(keys(&serde_json::to_value(&n).unwrap()), keys(&nomad));
        let reserved: NodeReservedResources = serde_json::from_value(json!({
            "Cpu": {"CpuShares": 500, "ReservedCpuCores": null}, "Memory": {"MemoryMB": 1000},
            "Disk": {"DiskMB": 0}, "Networks": {"ReservedHostPorts": "22"}
        }))
        .unwrap();
        let mut avail = n.comparable();
        avail.subtract(&reserved.comparable());
        assert_eq!(
            avail,
            ComparableResources {
                cpu_shares: 7500,
                memory_mb: 15000,
                disk_mb: 100000
            }
        );
    }

    #[test]
    fn comparable_arithmetic_and_fits_in_names_the_dimension() {
        let cap = ComparableResources {
            cpu_shares: 1000,
            memory_mb: 1024,
            disk_mb: 300,
        };
        let mut used = ComparableResources {
            cpu_shares: 500,
            memory_mb: 512,
            disk_mb: 150,
        };
        assert_eq!(used.fits_in(&cap), Ok(()));
        used.add(&ComparableResources {
            cpu_shares: 500,
            memory_mb: 0,
            disk_mb: 0,
        });
        assert_eq!(used.fits_in(&cap), Ok(()), "equal is a fit");
        used.add(&ComparableResources {
            cpu_shares: 1,
            memory_mb: 1000,
            disk_mb: 1000,
        });
        assert_eq!(used.fits_in(&cap), Err("cpu"), "cpu is checked first");
        used.subtract(&ComparableResources {
            cpu_shares: 1,
            ..Default::default()
        });
        assert_eq!(used.fits_in(&cap), Err("memory"));
        used.subtract(&ComparableResources {
            memory_mb: 1000,
            ..Default::default()
        });
        assert_eq!(used.fits_in(&cap), Err("disk"));
        let mut big = ComparableResources {
            cpu_shares: i64::MAX,
            ..Default::default()
        };
        big.add(&cap);
        assert_eq!(big.cpu_shares, i64::MAX, "saturates instead of overflowing");
        let mut neg = ComparableResources::default();
        neg.subtract(&cap);
        assert_eq!(neg.memory_mb, -1024);
    }

    #[test]
    fn allocated_comparable_follows_task_lifecycles() {
        let task = |cpu, mem| AllocatedTaskResources {
            cpu: AllocatedCpuResources {
                cpu_shares: cpu,
                reserved_cores: vec![],
            },
            memory: AllocatedMemoryResources {
                memory_mb: mem,
                memory_max_mb: 0,
            },
            ..Default::default()
        };
        let lc = |hook: &str, sidecar| {
            Some(TaskLifecycleConfig {
                hook: hook.into(),
                sidecar,
            })
        };
        let mut a = AllocatedResources::default();
        a.tasks.insert("web".into(), task(500, 256));
        a.task_lifecycles.insert("web".into(), None);
        a.tasks.insert("init".into(), task(1000, 100));
        a.task_lifecycles
            .insert("init".into(), lc("prestart", false));
        a.tasks.insert("proxy".into(), task(100, 64));
        a.task_lifecycles
            .insert("proxy".into(), lc("prestart", true));
        a.tasks.insert("cleanup".into(), task(50, 600));
        a.task_lifecycles
            .insert("cleanup".into(), lc("poststop", false));
        a.shared.disk_mb = 300;
        // main = web + proxy = (600, 320); prestart = init + proxy = (1100, 164);
        // poststop = (50, 600); max per dimension = (1100, 600).
        assert_eq!(
            a.comparable(),
            ComparableResources {
                cpu_shares: 1100,
                memory_mb: 600,
                disk_mb: 300
            }
        );

        let mut pinned = task(2000, 10);
        pinned.cpu.reserved_cores = vec![0];
        a.tasks.insert("pinned".into(), pinned);
        a.task_lifecycles
            .insert("pinned".into(), lc("prestart", false));
        // Reserved cores always add up, outside the lifecycle max.
        assert_eq!(a.comparable().cpu_shares, 3100);
        assert_eq!(a.comparable().memory_mb, 600);
    }

    #[test]
    fn allocated_resources_round_trip_with_null_lifecycles() {
        let nomad = json!({
            "Tasks": {"redis": {"Cpu": {"CpuShares": 500, "ReservedCores": null},
                "Memory": {"MemoryMB": 256, "MemoryMaxMB": 0}, "Networks": null, "Devices": null}},
            "TaskLifecycles": {"redis": null},
            "Shared": {"Networks": [{"Mode": "host", "Device": "", "CIDR": "", "IP": "10.0.0.5", "MBits": 0, "DNS": null,
                "ReservedPorts": null, "DynamicPorts": [{"Label": "db", "Value": 23456, "To": 6379, "HostNetwork": "default", "IgnoreCollision": false}], "CNI": null}],
                "DiskMB": 300,
                "Ports": [{"Label": "db", "Value": 23456, "To": 6379, "HostIP": "10.0.0.5", "IgnoreCollision": false}]}
        });
        let a: AllocatedResources = serde_json::from_value(nomad.clone()).unwrap();
        assert_eq!(a.task_lifecycles.get("redis"), Some(&None));
        assert_eq!(a.shared.port("db").unwrap().host_ip, "10.0.0.5");
        assert_eq!(a.host_ports().collect::<Vec<_>>(), [23456, 23456]);
        let back = serde_json::to_value(&a).unwrap();
        assert_eq!(keys(&back), keys(&nomad));
        assert_eq!(back["TaskLifecycles"], nomad["TaskLifecycles"]);
        assert_eq!(back["Shared"]["Ports"], nomad["Shared"]["Ports"]);
        assert_eq!(
            keys(&back["Tasks"]["redis"]),
            keys(&nomad["Tasks"]["redis"])
        );
    }
}
