//! The plan applier's re-check: do these allocations fit on this node together?

use super::ports::{PortUsage, alloc_mbits, alloc_ports, node_bandwidth, node_reserved_ports};
use caravan_schemas::alloc::Allocation;
use caravan_schemas::node::Node;
use caravan_schemas::resources::ComparableResources;

/// Whether `allocs` (the node's existing allocations plus the plan's new ones) fit on `node`
/// together, as Nomad's `AllocsFit`: cpu, memory and disk within the node's resources minus
/// its reserved ones, no host port held twice or reserved by the node, and the bandwidth
/// within what the node declares. Terminal allocations are skipped. The error names the
/// exhausted dimension (`cpu`, `memory`, `disk`, `bandwidth exceeded`) or the colliding port.
pub fn fits(node: &Node, allocs: &[&Allocation]) -> Result<(), String> {
    let capacity = node.comparable_resources();
    let mut used = ComparableResources::default();
    let mut ports = PortUsage::new(node_reserved_ports(node));
    let mut mbits = 0i64;
    let mut collision: Option<String> = None;
    let mut buf = Vec::new();
    for alloc in allocs {
        if alloc.is_terminal() {
            continue;
        }
        let Some(res) = &alloc.allocated_resources else {
            continue;
        };
        used.add(&res.comparable());
        mbits += alloc_mbits(res);
        buf.clear();
        alloc_ports(res, &mut buf);
        for &p in &buf {
            if collision.is_none() && ports.in_use(p) {
                let what = if ports.is_reserved(p) {
                    "is reserved by the node"
                } else {
                    "is already in use"
                };
                collision = Some(format!(
                    "reserved alloc port collision: collision when reserving port for alloc {}: port {p} {what}",
                    alloc.id
                ));
            }
            ports.add(p);
        }
    }
    used.fits_in(&capacity).map_err(str::to_owned)?;
    if let Some(c) = collision {
        return Err(c);
    }
    let bandwidth = node_bandwidth(node);
    if bandwidth > 0 && mbits > bandwidth {
        return Err("bandwidth exceeded".to_owned());
    }
    Ok(())
}
