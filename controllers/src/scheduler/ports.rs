//! Host port bookkeeping: which ports a node reserves, which its allocations hold, and which an
//! allocation would hold.

use caravan_schemas::node::Node;
use caravan_schemas::resources::AllocatedResources;

/// Nomad's default dynamic port range (Caravan's too).
pub const DEFAULT_MIN_DYNAMIC_PORT: u16 = 20000;
/// Upper end (inclusive) of the default dynamic port range.
pub const DEFAULT_MAX_DYNAMIC_PORT: u16 = 32000;

/// A port value as a host port, if it is one (1..=65535).
pub(crate) fn host_port(value: i32) -> Option<u16> {
    u16::try_from(value).ok().filter(|p| *p > 0)
}

/// Parses Nomad's port list syntax (`"22,80,8000-8100"`) into inclusive ranges, ignoring
/// malformed parts.
pub(crate) fn parse_port_ranges(spec: &str, out: &mut Vec<(u16, u16)>) {
    for part in spec.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let range = match part.split_once('-') {
            Some((a, b)) => a
                .trim()
                .parse::<u16>()
                .ok()
                .zip(b.trim().parse::<u16>().ok()),
            None => part.parse::<u16>().ok().map(|p| (p, p)),
        };
        if let Some((a, b)) = range
            && a <= b
        {
            out.push((a, b));
        }
    }
}

fn merge_ranges(ranges: &mut Vec<(u16, u16)>) {
    ranges.sort_unstable();
    let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
    for &(a, b) in ranges.iter() {
        match merged.last_mut() {
            Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    *ranges = merged;
}

/// The node's reserved host ports: `ReservedResources.Networks.ReservedHostPorts` and the
/// reserved ports of its default-network addresses.
pub(crate) fn node_reserved_ports(node: &Node) -> Vec<(u16, u16)> {
    let mut ranges = Vec::new();
    if let Some(r) = &node.reserved_resources {
        parse_port_ranges(&r.networks.reserved_host_ports, &mut ranges);
    }
    if let Some(res) = &node.node_resources {
        for net in &res.node_networks {
            for addr in &net.addresses {
                if addr.alias.is_empty() || addr.alias == "default" {
                    parse_port_ranges(&addr.reserved_ports, &mut ranges);
                }
            }
        }
    }
    merge_ranges(&mut ranges);
    ranges
}

/// The node's dynamic port range, inclusive (20000–32000 unless the node says otherwise).
pub(crate) fn dynamic_range(node: &Node) -> (u16, u16) {
    let (lo, hi) = node
        .node_resources
        .as_ref()
        .map_or((0, 0), |r| (r.min_dynamic_port, r.max_dynamic_port));
    match (host_port(lo), host_port(hi)) {
        (Some(lo), Some(hi)) if lo <= hi => (lo, hi),
        (Some(lo), None) if lo <= DEFAULT_MAX_DYNAMIC_PORT => (lo, DEFAULT_MAX_DYNAMIC_PORT),
        (None, Some(hi)) if hi >= DEFAULT_MIN_DYNAMIC_PORT => (DEFAULT_MIN_DYNAMIC_PORT, hi),
        _ => (DEFAULT_MIN_DYNAMIC_PORT, DEFAULT_MAX_DYNAMIC_PORT),
    }
}

/// The address allocations get on a node: the `unique.network.ip-address` attribute, else the
/// first host-network address.
pub(crate) fn node_host_ip(node: &Node) -> String {
    if let Some(ip) = node.attribute("unique.network.ip-address") {
        return ip.to_owned();
    }
    if let Some(res) = &node.node_resources {
        for net in &res.node_networks {
            if (net.mode.is_empty() || net.mode == "host")
                && let Some(addr) = net.addresses.first()
            {
                return addr.address.clone();
            }
        }
        for net in &res.networks {
            if (net.mode.is_empty() || net.mode == "host") && !net.ip.is_empty() {
                return net.ip.clone();
            }
        }
    }
    String::new()
}

/// The node's network bandwidth in Mbit/s (its host networks' `MBits`), 0 when it declares none.
pub(crate) fn node_bandwidth(node: &Node) -> i64 {
    node.node_resources.as_ref().map_or(0, |r| {
        r.networks
            .iter()
            .filter(|n| n.mode.is_empty() || n.mode == "host")
            .map(|n| i64::from(n.mbits.max(0)))
            .sum()
    })
}

/// The host ports an allocation holds, as Nomad's `NetworkIndex.AddAllocs` reads them: the group
/// port mappings (or, without any, the group networks' ports), plus the task networks' ports.
/// Ports marked `IgnoreCollision` are left out.
pub(crate) fn alloc_ports(res: &AllocatedResources, out: &mut Vec<u16>) {
    if res.shared.ports.is_empty() {
        for net in &res.shared.networks {
            out.extend(
                net.ports()
                    .filter(|p| !p.ignore_collision)
                    .filter_map(|p| host_port(p.value)),
            );
        }
    } else {
        out.extend(
            res.shared
                .ports
                .iter()
                .filter(|p| !p.ignore_collision)
                .filter_map(|p| host_port(p.value)),
        );
    }
    for task in res.tasks.values() {
        for net in &task.networks {
            out.extend(
                net.ports()
                    .filter(|p| !p.ignore_collision)
                    .filter_map(|p| host_port(p.value)),
            );
        }
    }
}

/// Bandwidth an allocation uses (Mbit/s).
pub(crate) fn alloc_mbits(res: &AllocatedResources) -> i64 {
    res.shared
        .networks
        .iter()
        .chain(res.tasks.values().flat_map(|t| t.networks.iter()))
        .map(|n| i64::from(n.mbits.max(0)))
        .sum()
}

/// The host ports in use on one node: a sorted multiset of allocation ports plus the node's
/// reserved ranges. `collisions` counts ports held twice (or held while reserved), which
/// makes the node unusable for new placements, as in Nomad.
#[derive(Clone, Debug, Default)]
pub(crate) struct PortUsage {
    used: Vec<(u16, u32)>,
    reserved: Vec<(u16, u16)>,
    collisions: u32,
}

impl PortUsage {
    pub(crate) fn new(reserved: Vec<(u16, u16)>) -> Self {
        PortUsage {
            used: Vec::new(),
            reserved,
            collisions: 0,
        }
    }

    pub(crate) fn set_reserved(&mut self, reserved: Vec<(u16, u16)>) {
        let before: u32 = self
            .used
            .iter()
            .filter(|(p, _)| self.is_reserved(*p))
            .map(|(_, c)| *c)
            .sum();
        self.reserved = reserved;
        let after: u32 = self
            .used
            .iter()
            .filter(|(p, _)| self.is_reserved(*p))
            .map(|(_, c)| *c)
            .sum();
        self.collisions = self.collisions.saturating_sub(before) + after;
    }

    pub(crate) fn collisions(&self) -> u32 {
        self.collisions
    }

    pub(crate) fn is_reserved(&self, port: u16) -> bool {
        let i = self.reserved.partition_point(|r| r.1 < port);
        self.reserved.get(i).is_some_and(|r| r.0 <= port)
    }

    fn is_held(&self, port: u16) -> bool {
        self.used.binary_search_by_key(&port, |e| e.0).is_ok()
    }

    /// Held by an allocation or reserved by the node.
    pub(crate) fn in_use(&self, port: u16) -> bool {
        self.is_held(port) || self.is_reserved(port)
    }

    pub(crate) fn add(&mut self, port: u16) {
        match self.used.binary_search_by_key(&port, |e| e.0) {
            Ok(i) => {
                self.used[i].1 += 1;
                self.collisions += 1;
            }
            Err(i) => self.used.insert(i, (port, 1)),
        }
        if self.is_reserved(port) {
            self.collisions += 1;
        }
    }

    pub(crate) fn remove(&mut self, port: u16) {
        if let Ok(i) = self.used.binary_search_by_key(&port, |e| e.0) {
            if self.is_reserved(port) {
                self.collisions = self.collisions.saturating_sub(1);
            }
            if self.used[i].1 > 1 {
                self.used[i].1 -= 1;
                self.collisions = self.collisions.saturating_sub(1);
            } else {
                self.used.remove(i);
            }
        }
    }

    /// Ports in `lo..=hi` neither held nor reserved.
    pub(crate) fn free_in_range(&self, lo: u16, hi: u16) -> u32 {
        if lo > hi {
            return 0;
        }
        let span = u32::from(hi) - u32::from(lo) + 1;
        let held = self.held_in(lo, hi);
        let mut reserved = 0u32;
        let mut overlap = 0u32;
        for &(a, b) in &self.reserved {
            let (a, b) = (a.max(lo), b.min(hi));
            if a <= b {
                reserved += u32::from(b) - u32::from(a) + 1;
                overlap += self.held_in(a, b);
            }
        }
        span.saturating_sub((held + reserved).saturating_sub(overlap))
    }

    fn held_in(&self, lo: u16, hi: u16) -> u32 {
        let start = self.used.partition_point(|e| e.0 < lo);
        let end = self.used.partition_point(|e| e.0 <= hi);
        (end - start) as u32
    }

    /// Every held port with its count.
    pub(crate) fn held(&self) -> &[(u16, u32)] {
        &self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ranges() {
        let mut r = Vec::new();
        parse_port_ranges("22, 80,8000-8002,bad,9-1,70000", &mut r);
        assert_eq!(r, [(22, 22), (80, 80), (8000, 8002)]);
        let mut m = vec![(5, 9), (1, 3), (4, 4), (20, 30)];
        merge_ranges(&mut m);
        assert_eq!(m, [(1, 9), (20, 30)]);
    }

    #[test]
    fn usage_counts_collisions_and_free_ports() {
        let mut u = PortUsage::new(vec![(100, 109)]);
        assert_eq!(u.free_in_range(100, 119), 10);
        u.add(110);
        u.add(111);
        assert_eq!(u.free_in_range(100, 119), 8);
        assert_eq!(u.collisions(), 0);
        u.add(110);
        assert_eq!(u.collisions(), 1);
        u.add(105);
        assert_eq!(u.collisions(), 2);
        assert_eq!(u.free_in_range(100, 119), 8);
        u.remove(105);
        u.remove(110);
        assert_eq!(u.collisions(), 0);
        assert!(u.in_use(110) && u.in_use(101) && !u.in_use(112));
        u.remove(110);
        u.remove(111);
        assert!(u.held().is_empty());
        u.add(50);
        u.set_reserved(vec![(50, 50)]);
        assert_eq!(u.collisions(), 1);
        u.set_reserved(vec![]);
        assert_eq!(u.collisions(), 0);
    }
}
