//! `caravan node status|drain|eligibility`.

use super::CliError;
use super::conn::{self, Answer, ApiArgs, Resolved, block_on, check_id_length, err};
use super::format::{
    self, alloc_list, format_timestamp, ibytes, kv, now_nanos, section, short_id, table,
};
use crate::client::Client;
use caravan_schemas::alloc::Allocation;
use caravan_schemas::duration::{self, Duration};
use caravan_schemas::node::{DrainSpec, Node, NodeListStub};
use caravan_schemas::resources::ComparableResources;
use clap::{ArgGroup, Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes, or show one node with its allocations.
    Status(NodeStatusArgs),
    /// Move allocations off a node (-enable) or stop doing so (-disable).
    Drain(NodeDrainArgs),
    /// Allow (-enable) or forbid (-disable) new placements on a node.
    Eligibility(NodeEligibilityArgs),
}

#[derive(Debug, Args)]
pub struct NodeStatusArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Show full ids and more columns.
    #[arg(long)]
    pub verbose: bool,
    /// Print the API objects as JSON.
    #[arg(long)]
    pub json: bool,
    /// The node's ID or a prefix of it; none lists every node.
    pub id: Option<String>,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("mode").required(true).args(["enable", "disable"])))]
pub struct NodeDrainArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Start draining.
    #[arg(long)]
    pub enable: bool,
    /// Stop draining (and make the node eligible again unless -keep-ineligible).
    #[arg(long)]
    pub disable: bool,
    /// How long allocations may take to move before they are stopped (Go duration).
    #[arg(long, default_value = "1h", value_name = "DURATION")]
    pub deadline: String,
    /// Never force the remaining allocations off.
    #[arg(long = "no-deadline")]
    pub no_deadline: bool,
    /// Stop every allocation now.
    #[arg(long)]
    pub force: bool,
    /// Leave system jobs running.
    #[arg(long = "ignore-system")]
    pub ignore_system: bool,
    /// With -disable, keep the node ineligible.
    #[arg(long = "keep-ineligible")]
    pub keep_ineligible: bool,
    /// Return at once (the drain is not monitored).
    #[arg(long)]
    pub detach: bool,
    /// Do not ask for confirmation when the ID is a prefix.
    #[arg(long)]
    pub yes: bool,
    /// The node's ID or a prefix of it.
    pub id: String,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("mode").required(true).args(["enable", "disable"])))]
pub struct NodeEligibilityArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Make the node eligible for new placements.
    #[arg(long)]
    pub enable: bool,
    /// Make the node ineligible for new placements.
    #[arg(long)]
    pub disable: bool,
    /// The node's ID or a prefix of it.
    pub id: String,
}

pub fn run(cmd: NodeCommand) -> Result<i32, CliError> {
    match cmd {
        NodeCommand::Status(args) => block_on(async move {
            let client = args.api.client()?;
            status(&client, args.id.as_deref(), args.verbose, args.json).await
        }),
        NodeCommand::Drain(args) => block_on(drain(args)),
        NodeCommand::Eligibility(args) => block_on(eligibility(args)),
    }
}

/// `ID  Node Pool  DC  Name  Class  Drain  Eligibility  Status` (with `Address` and `Version`
/// under `-verbose`).
pub fn node_list(nodes: &[NodeListStub], verbose: bool) -> String {
    let mut header = vec!["ID", "Node Pool", "DC", "Name", "Class"];
    if verbose {
        header.extend(["Address", "Version"]);
    }
    header.extend(["Drain", "Eligibility", "Status"]);
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let mut row = vec![
                short_id(n.id.as_str(), verbose).to_owned(),
                n.node_pool.clone(),
                n.datacenter.clone(),
                n.name.clone(),
                n.node_class.clone(),
            ];
            if verbose {
                row.extend([n.address.clone(), n.version.clone()]);
            }
            row.extend([
                n.drain.to_string(),
                n.scheduling_eligibility.to_string(),
                n.status.to_string(),
            ]);
            row
        })
        .collect();
    table(&header, &rows)
}

/// The node an id or prefix names.
pub async fn resolve_node_id(client: &Client, given: &str) -> Result<String, CliError> {
    check_id_length(given)?;
    let nodes = client
        .nodes(given)
        .await
        .map_err(err("Error querying node info"))?;
    match conn::resolve(nodes, given, |n| n.id.as_str()) {
        Resolved::One(n) => Ok(n.id.to_string()),
        Resolved::None => Err(CliError::new(
            1,
            format!("No node(s) with prefix {given:?} found"),
        )),
        Resolved::Many(nodes) => Err(CliError::new(
            1,
            format!(
                "Prefix matched multiple nodes\n\n{}",
                node_list(&nodes, false)
            ),
        )),
    }
}

pub async fn status(
    client: &Client,
    id: Option<&str>,
    verbose: bool,
    json: bool,
) -> Result<i32, CliError> {
    let Some(given) = id else {
        let nodes = client
            .nodes("")
            .await
            .map_err(err("Error querying node status"))?;
        if json {
            println!("{}", format::json(&nodes)?);
        } else if nodes.is_empty() {
            println!("No nodes registered");
        } else {
            println!("{}", node_list(&nodes, verbose));
        }
        return Ok(0);
    };
    let id = resolve_node_id(client, given).await?;
    let node = client
        .node(&id)
        .await
        .map_err(err("Error querying node info"))?;
    if json {
        println!("{}", format::json(&node)?);
        return Ok(0);
    }
    let allocs = client
        .node_allocations(&id)
        .await
        .map_err(err("Error querying node allocations"))?;
    println!("{}", node_status_text(&node, &allocs, verbose, now_nanos()));
    Ok(0)
}

/// `Drain = true; 2024-05-01T13:00:00Z deadline; ignoring system jobs` (Nomad's `formatDrain`).
fn drain_text(n: &Node) -> String {
    let Some(s) = &n.drain_strategy else {
        return n.drain.to_string();
    };
    let mut out = "true".to_owned();
    if s.drain_spec.deadline.nanos() < 0 {
        out.push_str("; force drain");
    } else if s.force_deadline.is_zero() {
        out.push_str("; no deadline");
    } else {
        out.push_str(&format!(
            "; {} deadline",
            format_timestamp(s.force_deadline)
        ));
    }
    if s.drain_spec.ignore_system_jobs {
        out.push_str("; ignoring system jobs");
    }
    out
}

/// `node status <id>` as text.
pub fn node_status_text(n: &Node, allocs: &[Allocation], verbose: bool, now: i64) -> String {
    let mut drivers: Vec<&str> = n
        .drivers
        .iter()
        .filter(|(_, d)| d.detected && d.healthy)
        .map(|(name, _)| name.as_str())
        .collect();
    drivers.sort_unstable();
    let host_volumes: Vec<&str> = n.host_volumes.keys().map(String::as_str).collect();
    let host_networks: Vec<&str> = n.host_networks.keys().map(String::as_str).collect();
    let mut out = kv(&[
        ("ID", n.id.to_string()),
        ("Name", n.name.clone()),
        ("Node Pool", n.node_pool.clone()),
        ("Class", n.node_class.clone()),
        ("DC", n.datacenter.clone()),
        ("Drain", drain_text(n)),
        ("Eligibility", n.scheduling_eligibility.to_string()),
        ("Status", n.status.to_string()),
        ("Host Volumes", host_volumes.join(",")),
        ("Host Networks", host_networks.join(",")),
        ("Driver Status", drivers.join(",")),
    ]);
    if !n.events.is_empty() {
        let rows: Vec<Vec<String>> = n
            .events
            .iter()
            .rev()
            .map(|e| {
                vec![
                    format_timestamp(e.timestamp),
                    e.subsystem.clone(),
                    e.message.clone(),
                ]
            })
            .collect();
        section(
            &mut out,
            "Node Events",
            &table(&["Time", "Subsystem", "Message"], &rows),
        );
    }
    let total = n.comparable_resources();
    let mut used = ComparableResources::default();
    for a in allocs.iter().filter(|a| !a.is_terminal()) {
        if let Some(r) = &a.allocated_resources {
            used.add(&r.comparable());
        }
    }
    let mb = |v: i64| u64::try_from(v).unwrap_or(0).saturating_mul(1024 * 1024);
    section(
        &mut out,
        "Allocated Resources",
        &table(
            &["CPU", "Memory", "Disk"],
            &[vec![
                format!("{}/{} MHz", used.cpu_shares, total.cpu_shares),
                format!(
                    "{}/{}",
                    ibytes(mb(used.memory_mb)),
                    ibytes(mb(total.memory_mb))
                ),
                format!("{}/{}", ibytes(mb(used.disk_mb)), ibytes(mb(total.disk_mb))),
            ]],
        ),
    );
    let stubs: Vec<_> = allocs.iter().map(Allocation::stub).collect();
    section(&mut out, "Allocations", &alloc_list(&stubs, verbose, now));
    out
}

/// Asks before acting on a node named by a prefix, as Nomad does. `Some(code)` means stop.
fn confirm_prefix(
    given: &str,
    id: &str,
    yes: bool,
    question: &str,
    cancel: &'static str,
) -> Option<i32> {
    if given == id || yes {
        return None;
    }
    match conn::ask(question, cancel) {
        Answer::Yes => None,
        Answer::No(msg) => {
            println!("{msg}");
            Some(0)
        }
        Answer::Unclear(msg) => {
            println!("{msg}");
            Some(1)
        }
    }
}

/// The drain spec for `-deadline`/`-no-deadline`/`-force`/`-ignore-system`.
fn drain_spec(args: &NodeDrainArgs) -> Result<DrainSpec, CliError> {
    let deadline = if args.force {
        Duration(-1)
    } else if args.no_deadline {
        Duration::ZERO
    } else {
        let d = duration::parse(&args.deadline).map_err(|e| {
            CliError::new(
                1,
                format!("Failed to parse deadline {:?}: {e}", args.deadline),
            )
        })?;
        if d.nanos() <= 0 {
            return Err(CliError::new(1, "A positive drain deadline must be given"));
        }
        d
    };
    Ok(DrainSpec {
        deadline,
        ignore_system_jobs: args.ignore_system,
    })
}

async fn drain(args: NodeDrainArgs) -> Result<i32, CliError> {
    let spec = if args.enable {
        Some(drain_spec(&args)?)
    } else {
        None
    };
    let client = args.api.client()?;
    let id = resolve_node_id(&client, &args.id).await?;
    let verb = if args.enable { "enable" } else { "disable" };
    let question = format!("Are you sure you want to {verb} drain mode for node {id:?}? [y/N]");
    if let Some(code) = confirm_prefix(&args.id, &id, args.yes, &question, "Canceling drain toggle")
    {
        return Ok(code);
    }
    client
        .drain_node(&id, spec, !args.enable && !args.keep_ineligible)
        .await
        .map_err(err("Error updating drain specification"))?;
    if args.enable {
        println!("Node {id:?} drain strategy set");
    } else {
        println!("Node {id:?} drain strategy unset");
    }
    Ok(0)
}

async fn eligibility(args: NodeEligibilityArgs) -> Result<i32, CliError> {
    let client = args.api.client()?;
    let id = resolve_node_id(&client, &args.id).await?;
    client
        .set_node_eligibility(&id, args.enable)
        .await
        .map_err(err("Error updating scheduling eligibility"))?;
    let what = if args.enable {
        "eligible"
    } else {
        "ineligible"
    };
    println!("Node {id:?} scheduling eligibility set: {what} for scheduling");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use caravan_schemas::node::{DrainStrategy, DriverInfo, NodeEvent, NodeStatus};
    use caravan_schemas::resources::{
        NodeCpuResources, NodeDiskResources, NodeMemoryResources, NodeResources,
    };
    use caravan_schemas::time::Timestamp;
    use std::collections::BTreeMap;

    const NOW: i64 = 1_714_564_800_000_000_000;

    fn node() -> Node {
        Node {
            id: "f7ac6a8e-0000-1111-2222-333333333333".into(),
            name: "node1".into(),
            datacenter: "dc1".into(),
            node_pool: "default".into(),
            status: NodeStatus::Ready,
            drivers: BTreeMap::from([
                (
                    "docker".to_owned(),
                    DriverInfo {
                        detected: true,
                        healthy: true,
                        ..DriverInfo::default()
                    },
                ),
                (
                    "java".to_owned(),
                    DriverInfo {
                        detected: false,
                        ..DriverInfo::default()
                    },
                ),
                (
                    "raw_exec".to_owned(),
                    DriverInfo {
                        detected: true,
                        healthy: true,
                        ..DriverInfo::default()
                    },
                ),
            ]),
            node_resources: Some(NodeResources {
                cpu: NodeCpuResources {
                    cpu_shares: 4000,
                    ..Default::default()
                },
                memory: NodeMemoryResources { memory_mb: 8192 },
                disk: NodeDiskResources { disk_mb: 51200 },
                ..Default::default()
            }),
            events: vec![NodeEvent {
                message: "Node registered".into(),
                subsystem: "Cluster".into(),
                timestamp: Timestamp::from_unix_nanos(NOW),
                ..NodeEvent::default()
            }],
            ..Node::default()
        }
    }

    #[test]
    fn node_list_columns() {
        let n = node();
        let text = node_list(&[n.stub()], false);
        assert_eq!(
            text,
            "ID        Node Pool  DC   Name   Class   Drain  Eligibility  Status\nf7ac6a8e  default    dc1  node1  <none>  false  eligible     ready"
        );
    }

    #[test]
    fn node_detail() {
        let text = node_status_text(&node(), &[], false, NOW);
        let expected = "ID            = f7ac6a8e-0000-1111-2222-333333333333
Name          = node1
Node Pool     = default
Class         = <none>
DC            = dc1
Drain         = false
Eligibility   = eligible
Status        = ready
Host Volumes  = <none>
Host Networks = <none>
Driver Status = docker,raw_exec

Node Events
Time                  Subsystem  Message
2024-05-01T12:00:00Z  Cluster    Node registered

Allocated Resources
CPU         Memory       Disk
0/4000 MHz  0 B/8.0 GiB  0 B/50 GiB

Allocations
No allocations placed";
        assert_eq!(text, expected);
    }

    #[test]
    fn drain_descriptions() {
        let mut n = node();
        n.drain_strategy = Some(DrainStrategy {
            drain_spec: DrainSpec {
                deadline: Duration::from_hours(1),
                ignore_system_jobs: true,
            },
            force_deadline: Timestamp::from_unix_nanos(NOW),
            ..DrainStrategy::default()
        });
        assert_eq!(
            drain_text(&n),
            "true; 2024-05-01T12:00:00Z deadline; ignoring system jobs"
        );
        if let Some(s) = n.drain_strategy.as_mut() {
            s.drain_spec.deadline = Duration(-1);
            s.drain_spec.ignore_system_jobs = false;
        }
        assert_eq!(drain_text(&n), "true; force drain");
    }

    #[test]
    fn drain_specs_from_flags() {
        let args = |deadline: &str, no_deadline: bool, force: bool| NodeDrainArgs {
            api: ApiArgs::default(),
            enable: true,
            disable: false,
            deadline: deadline.into(),
            no_deadline,
            force,
            ignore_system: false,
            keep_ineligible: false,
            detach: false,
            yes: false,
            id: "x".into(),
        };
        assert_eq!(
            drain_spec(&args("30m", false, false)).unwrap().deadline,
            Duration::from_mins(30)
        );
        assert_eq!(
            drain_spec(&args("1h", true, false)).unwrap().deadline,
            Duration::ZERO
        );
        assert_eq!(
            drain_spec(&args("1h", false, true)).unwrap().deadline,
            Duration(-1)
        );
        assert!(drain_spec(&args("soon", false, false)).is_err());
    }
}
