//! `caravan alloc status`.

use super::CliError;
use super::conn::{self, ApiArgs, Resolved, block_on, check_id_length, err};
use super::format::{
    self, alloc_list, format_time, format_timestamp, kv, limit, mib, now_nanos, section, short_id,
    table, table_with, time_ago,
};
use crate::client::Client;
use caravan_schemas::alloc::{Allocation, TaskState};
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum AllocCommand {
    /// Show an allocation: where it runs, its tasks, their resources and recent events.
    Status(AllocStatusArgs),
    /// Print a task's stdout (or stderr), optionally following it.
    Logs(AllocLogsArgs),
}

#[derive(Debug, Args)]
pub struct AllocLogsArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Keep printing what the task writes.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Print stderr instead of stdout.
    #[arg(long)]
    pub stderr: bool,
    /// Print only the end of the log (the last -n lines, 10 by default).
    #[arg(long)]
    pub tail: bool,
    /// How many lines -tail prints.
    #[arg(short = 'n', value_name = "LINES")]
    pub lines: Option<usize>,
    /// The allocation's ID or a prefix of it.
    pub id: String,
    /// The task (needed when the group has several).
    pub task: Option<String>,
}

#[derive(Debug, Args)]
pub struct AllocStatusArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Show full ids and the placement metrics.
    #[arg(long)]
    pub verbose: bool,
    /// Print the allocation as JSON.
    #[arg(long)]
    pub json: bool,
    /// The allocation's ID or a prefix of it.
    pub id: String,
}

pub fn run(cmd: AllocCommand) -> Result<i32, CliError> {
    match cmd {
        AllocCommand::Status(args) => block_on(async move {
            let client = args.api.client()?;
            status(&client, &args.id, args.verbose, args.json).await
        }),
        AllocCommand::Logs(args) => block_on(async move {
            let client = args.api.client()?;
            logs(&client, &args).await
        }),
    }
}

/// `alloc logs`: the log as plain text, its tail, and with -f whatever comes after, printed as
/// it arrives; -f ends when the task is done and all its output was printed.
async fn logs(client: &Client, args: &AllocLogsArgs) -> Result<i32, CliError> {
    use std::io::Write;
    let id = resolve_alloc_id(client, &args.id).await?;
    let kind = if args.stderr { "stderr" } else { "stdout" };
    let segments = ["client", "fs", "logs", id.as_str()];
    let opts = |pairs: &[(&str, String)]| {
        let mut params = vec![("type".to_owned(), kind.to_owned())];
        if let Some(task) = &args.task {
            params.push(("task".to_owned(), task.clone()));
        }
        params.extend(pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        crate::client::QueryOptions {
            params,
            ..Default::default()
        }
    };
    let failed = err("Error reading the logs");
    let mut stdout = std::io::stdout();
    let mut print = |bytes: &[u8]| {
        // A closed stdout (`| head`) ends the command quietly.
        stdout
            .write_all(bytes)
            .and_then(|()| stdout.flush())
            .is_ok()
    };
    if !(args.tail || args.lines.is_some()) {
        let query = opts(&[
            ("plain", "true".into()),
            ("origin", "start".into()),
            ("follow", args.follow.to_string()),
        ]);
        client
            .stream(&segments, &query, print)
            .await
            .map_err(failed)?;
        return Ok(0);
    }
    // The last n lines: read back from the end, further until there are enough.
    let n = args.lines.unwrap_or(10);
    let mut want = u64::try_from(n)
        .unwrap_or(u64::MAX)
        .saturating_mul(128)
        .max(4096);
    let text = loop {
        let query = opts(&[
            ("plain", "true".into()),
            ("origin", "end".into()),
            ("offset", want.to_string()),
        ]);
        let text = client.get_bytes(&segments, &query).await.map_err(&failed)?;
        if has_lines(&text, n) || (text.len() as u64) < want || want >= MAX_TAIL_BYTES {
            break text;
        }
        want = want.saturating_mul(4);
    };
    if !args.follow {
        print(tail_lines(&text, n));
        return Ok(0);
    }
    // Followed: one stream of frames from as far back; what comes before its first heartbeat is
    // the backlog, of which the last n lines are printed, then everything after as it comes.
    let query = opts(&[
        ("origin", "end".into()),
        ("offset", want.to_string()),
        ("follow", "true".into()),
    ]);
    let mut frames = FrameReader::default();
    let mut backlog: Option<Vec<u8>> = Some(Vec::new());
    client
        .stream(&segments, &query, |chunk| {
            for frame in frames.push(chunk) {
                match (frame, &mut backlog) {
                    (Frame::Data(data), Some(pending)) => pending.extend_from_slice(&data),
                    (Frame::Data(data), None) => {
                        if !print(&data) {
                            return false;
                        }
                    }
                    (Frame::Heartbeat, Some(pending)) => {
                        let caught_up = std::mem::take(pending);
                        backlog = None;
                        if !print(tail_lines(&caught_up, n)) {
                            return false;
                        }
                    }
                    (Frame::Heartbeat, None) => {}
                }
            }
            true
        })
        .await
        .map_err(failed)?;
    if let Some(pending) = backlog {
        // The log ended before the stream caught up (the task was already done).
        print(tail_lines(&pending, n));
    }
    Ok(0)
}

/// -tail reads back at most this far.
const MAX_TAIL_BYTES: u64 = 1 << 30;

/// Whether `text` holds `n` whole lines after some earlier line break (so its last `n` lines
/// are known), not counting a final newline.
fn has_lines(text: &[u8], n: usize) -> bool {
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    body.iter().filter(|b| **b == b'\n').count() >= n
}

/// The last `n` lines of `text` (a last line without a newline counts).
fn tail_lines(text: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &[];
    }
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &text[i + 1..];
            }
        }
    }
    text
}

/// One frame of a JSON logs stream.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    Data(Vec<u8>),
    Heartbeat,
}

/// Splits a JSON logs stream (frames one a line, cut anywhere by the network) into frames.
#[derive(Debug, Default)]
struct FrameReader {
    pending: Vec<u8>,
}

impl FrameReader {
    fn push(&mut self, chunk: &[u8]) -> Vec<Frame> {
        use base64::Engine;
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(&line) else {
                continue;
            };
            match value.get("Data").and_then(|d| d.as_str()) {
                Some(data) => {
                    if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(data) {
                        out.push(Frame::Data(bytes));
                    }
                }
                None if value.get("File").is_none() => out.push(Frame::Heartbeat),
                None => {}
            }
        }
        out
    }
}

/// The allocation an id or prefix names.
pub async fn resolve_alloc_id(client: &Client, given: &str) -> Result<String, CliError> {
    check_id_length(given)?;
    let allocs = client
        .allocations(given)
        .await
        .map_err(err("Error querying allocation"))?;
    match conn::resolve(allocs, given, |a| a.id.as_str()) {
        Resolved::One(a) => Ok(a.id.to_string()),
        Resolved::None => Err(CliError::new(
            1,
            format!("No allocation(s) with prefix or id {given:?} found"),
        )),
        Resolved::Many(allocs) => Err(CliError::new(
            1,
            format!(
                "Prefix matched multiple allocations\n\n{}",
                alloc_list(&allocs, false, now_nanos())
            ),
        )),
    }
}

pub async fn status(
    client: &Client,
    given: &str,
    verbose: bool,
    json: bool,
) -> Result<i32, CliError> {
    let id = resolve_alloc_id(client, given).await?;
    let alloc = client
        .allocation(&id)
        .await
        .map_err(err("Error querying allocation"))?;
    if json {
        println!("{}", format::json(&alloc)?);
    } else {
        println!("{}", alloc_status_text(&alloc, verbose, now_nanos()));
    }
    Ok(0)
}

/// Nomad's `formatAllocBasicInfo`.
fn basic_info(a: &Allocation, verbose: bool, now: i64) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("ID", a.id.to_string()),
        ("Eval ID", short_id(a.eval_id.as_str(), verbose).to_owned()),
        ("Name", a.name.clone()),
        ("Node ID", short_id(a.node_id.as_str(), verbose).to_owned()),
        ("Node Name", a.node_name.clone()),
        ("Job ID", a.job_id.to_string()),
        (
            "Job Version",
            a.job
                .as_ref()
                .map(|j| j.version)
                .unwrap_or_default()
                .to_string(),
        ),
        ("Client Status", a.client_status.to_string()),
        ("Client Description", a.client_description.clone()),
        ("Desired Status", a.desired_status.to_string()),
        ("Desired Description", a.desired_description.clone()),
        ("Created", time_ago(a.create_time, now)),
        ("Modified", time_ago(a.modify_time, now)),
    ];
    if !a.deployment_id.is_empty() {
        let health = match a.deployment_status.as_ref().and_then(|d| d.healthy) {
            Some(true) => "healthy",
            Some(false) => "unhealthy",
            None => "unset",
        };
        rows.push((
            "Deployment ID",
            short_id(a.deployment_id.as_str(), verbose).to_owned(),
        ));
        rows.push(("Deployment Health", health.to_owned()));
        if a.is_canary() {
            rows.push(("Canary", "true".to_owned()));
        }
    }
    if !a.next_allocation.is_empty() {
        rows.push((
            "Replacement Alloc ID",
            short_id(a.next_allocation.as_str(), verbose).to_owned(),
        ));
    }
    if !a.followup_eval_id.is_empty() {
        rows.push((
            "Follow-up Eval ID",
            short_id(a.followup_eval_id.as_str(), verbose).to_owned(),
        ));
    }
    kv(&rows)
}

/// The order Nomad lists tasks in: prestart, main, poststart, poststop; by name within each.
fn task_order(a: &Allocation) -> Vec<(&str, &TaskState, String)> {
    let hook = |task: &str| -> (u8, String) {
        let lifecycle = a
            .job
            .as_ref()
            .and_then(|j| j.group(&a.task_group))
            .and_then(|g| g.task(task))
            .and_then(|t| t.lifecycle.as_ref());
        match lifecycle {
            None => (1, String::new()),
            Some(l) => {
                let rank = match l.hook.as_str() {
                    "prestart" => 0,
                    "poststart" => 2,
                    "poststop" => 3,
                    _ => 1,
                };
                let label = if l.sidecar {
                    format!(" ({} sidecar)", l.hook)
                } else {
                    format!(" ({})", l.hook)
                };
                (rank, label)
            }
        }
    };
    let mut tasks: Vec<(u8, &str, &TaskState, String)> = a
        .task_states
        .iter()
        .map(|(name, state)| {
            let (rank, label) = hook(name);
            (rank, name.as_str(), state, label)
        })
        .collect();
    tasks.sort_by(|x, y| (x.0, x.1).cmp(&(y.0, y.1)));
    tasks.into_iter().map(|(_, n, s, l)| (n, s, l)).collect()
}

/// Nomad's `Nomad Service Checks:` table (`Service  Task  Name  Mode  Status`), with each
/// check's output (its first line, cut to 60 characters unless `-verbose`).
fn service_checks(a: &Allocation, verbose: bool) -> String {
    let mut rows: Vec<Vec<String>> = a
        .check_results
        .values()
        .map(|r| {
            let task = if r.task.is_empty() {
                "(group)".to_owned()
            } else {
                r.task.clone()
            };
            let output = if verbose {
                r.output.trim().replace('\n', " ")
            } else {
                limit(r.output.trim().lines().next().unwrap_or_default(), 60).to_owned()
            };
            vec![
                r.service.clone(),
                task,
                r.check.clone(),
                r.mode.to_string(),
                r.status.to_string(),
                output,
            ]
        })
        .collect();
    rows.sort();
    table(
        &["Service", "Task", "Name", "Mode", "Status", "Output"],
        &rows,
    )
}

/// `Task Resources:` for one task: CPU, memory and disk reserved, and its addresses.
fn task_resources(a: &Allocation, task: &str) -> String {
    let allocated = a.allocated_resources.as_ref();
    let from_job = a
        .job
        .as_ref()
        .and_then(|j| j.group(&a.task_group))
        .and_then(|g| g.task(task))
        .map(|t| &t.resources);
    let (cpu, mem, mem_max) = match allocated.and_then(|r| r.tasks.get(task)) {
        Some(t) => (t.cpu.cpu_shares, t.memory.memory_mb, t.memory.memory_max_mb),
        None => from_job.map_or((0, 0, 0), |r| {
            (
                i64::from(r.cpu),
                i64::from(r.memory_mb),
                i64::from(r.memory_max_mb),
            )
        }),
    };
    let disk = allocated.map(|r| r.shared.disk_mb).unwrap_or_else(|| {
        a.job
            .as_ref()
            .and_then(|j| j.group(&a.task_group))
            .and_then(|g| g.ephemeral_disk.as_ref())
            .map_or(0, |d| i64::from(d.size_mb))
    });
    // The task's own networks (the older task-level `network` block); the group's ports are
    // under "Allocation Addresses", as Nomad shows them.
    let mut addrs: Vec<String> = Vec::new();
    if let Some(r) = allocated {
        let task_networks = r
            .tasks
            .get(task)
            .map(|t| t.networks.as_slice())
            .unwrap_or(&[]);
        for n in task_networks {
            for p in n.dynamic_ports.iter().chain(&n.reserved_ports) {
                let addr = format!("{}: {}:{}", p.label, n.ip, p.value);
                if !addrs.contains(&addr) {
                    addrs.push(addr);
                }
            }
        }
    }
    let memory = if mem_max != 0 && mem_max != mem {
        format!("{} (max {})", mib(mem), mib(mem_max))
    } else {
        mib(mem)
    };
    let mut rows = vec![vec![
        format!("{cpu} MHz"),
        memory,
        mib(disk),
        addrs
            .first()
            .cloned()
            .unwrap_or_else(|| format::NONE.to_owned()),
    ]];
    for addr in addrs.iter().skip(1) {
        rows.push(vec![
            String::new(),
            String::new(),
            String::new(),
            addr.clone(),
        ]);
    }
    // Further addresses go on rows of their own, under the first.
    let text = table_with(&["CPU", "Memory", "Disk", "Addresses"], &rows, "");
    format!("Task Resources:\n{text}")
}

/// `Allocation Addresses:` (Nomad's `formatAllocNetworkInfo`): every port of the group's
/// network (`*label` when taken from the allocation's port mappings), whether the scheduler
/// picked it (Nomad prints `yes` even for static ports; here they read `no`), its host address
/// and `-> to`, the port inside the task, when one is set. `None` when the group has no ports.
fn network_info(a: &Allocation) -> Option<String> {
    let shared = &a.allocated_resources.as_ref()?.shared;
    let network = shared.networks.first();
    let row = |label: String, port: &str, ip: &str, value: i32, to: i32| {
        let is_static = network.is_some_and(|n| n.reserved_ports.iter().any(|p| p.label == port));
        let address = if to > 0 {
            format!("{ip}:{value} -> {to}")
        } else {
            format!("{ip}:{value}")
        };
        vec![
            label,
            if is_static { "no" } else { "yes" }.to_owned(),
            address,
        ]
    };
    let rows: Vec<Vec<String>> = if shared.ports.is_empty() {
        let n = network?;
        n.dynamic_ports
            .iter()
            .chain(&n.reserved_ports)
            .map(|p| row(p.label.clone(), &p.label, &n.ip, p.value, p.to))
            .collect()
    } else {
        shared
            .ports
            .iter()
            .map(|p| row(format!("*{}", p.label), &p.label, &p.host_ip, p.value, p.to))
            .collect()
    };
    if rows.is_empty() {
        return None;
    }
    let mode = network
        .filter(|n| !n.mode.is_empty())
        .map(|n| format!(" (mode = {:?})", n.mode))
        .unwrap_or_default();
    Some(format!(
        "Allocation Addresses{mode}:\n{}",
        table(&["Label", "Dynamic", "Address"], &rows)
    ))
}

/// `Task Events:` and `Recent Events:` (newest first).
fn task_events(state: &TaskState) -> String {
    let basic = kv(&[
        ("Started At", format_timestamp(state.started_at)),
        ("Finished At", format_timestamp(state.finished_at)),
        ("Total Restarts", state.restarts.to_string()),
        ("Last Restart", format_timestamp(state.last_restart)),
    ]);
    let rows: Vec<Vec<String>> = state
        .events
        .iter()
        .rev()
        .map(|e| {
            let msg = if e.display_message.is_empty() {
                e.describe()
            } else {
                e.display_message.clone()
            };
            vec![format_time(e.time), e.kind.clone(), msg]
        })
        .collect();
    format!(
        "Task Events:\n{basic}\n\nRecent Events:\n{}",
        table(&["Time", "Type", "Description"], &rows)
    )
}

/// `alloc status <id>` as text.
pub fn alloc_status_text(a: &Allocation, verbose: bool, now: i64) -> String {
    let mut out = basic_info(a, verbose, now);
    if let Some(addresses) = network_info(a) {
        out.push_str("\n\n");
        out.push_str(&addresses);
    }
    if verbose && let Some(m) = &a.metrics {
        let metrics = kv(&[
            ("Evaluated Nodes", m.nodes_evaluated.to_string()),
            ("Filtered Nodes", m.nodes_filtered.to_string()),
            ("Exhausted Nodes", m.nodes_exhausted.to_string()),
            ("Allocation Time", m.allocation_time.to_string()),
            ("Failures", m.coalesced_failures.to_string()),
        ]);
        section(&mut out, "Placement Metrics", &metrics);
    }
    if !a.check_results.is_empty() {
        section(
            &mut out,
            "Nomad Service Checks:",
            &service_checks(a, verbose),
        );
    }
    for (task, state, label) in task_order(a) {
        out.push_str(&format!(
            "\n\nTask {task:?}{label} is {:?}\n{}\n\n{}",
            state.state.as_str(),
            task_resources(a, task),
            task_events(state)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use caravan_schemas::alloc::{ClientStatus, TaskEvent, TaskStatus};
    use caravan_schemas::resources::{
        AllocatedCpuResources, AllocatedMemoryResources, AllocatedPortMapping, AllocatedResources,
        AllocatedSharedResources, AllocatedTaskResources, NetworkResource, Port,
    };
    use caravan_schemas::time::Timestamp;
    use std::collections::BTreeMap;

    const NOW: i64 = 1_714_564_800_000_000_000;
    const SEC: i64 = 1_000_000_000;

    fn alloc() -> Allocation {
        let t0 = NOW - 60 * SEC;
        let state = TaskState {
            state: TaskStatus::Running,
            started_at: Timestamp::from_unix_nanos(t0 + 2 * SEC),
            events: vec![
                TaskEvent::new("Received", t0),
                TaskEvent::new("Task Setup", t0 + SEC).with_message("Building Task Directory"),
                TaskEvent::new("Started", t0 + 2 * SEC),
            ],
            ..TaskState::default()
        };
        Allocation {
            id: "8ba85cef-1111-2222-3333-444444444444".into(),
            eval_id: "abcd1234-0000-0000-0000-000000000000".into(),
            name: "example.cache[0]".into(),
            node_id: "171a583b-0000-0000-0000-000000000000".into(),
            node_name: "node1".into(),
            job_id: "example".into(),
            task_group: "cache".into(),
            client_status: ClientStatus::Running,
            client_description: "Tasks are running".into(),
            create_time: NOW - 328 * SEC,
            modify_time: NOW - 312 * SEC,
            task_states: BTreeMap::from([("redis".to_owned(), state)]),
            allocated_resources: Some(AllocatedResources {
                tasks: BTreeMap::from([(
                    "redis".to_owned(),
                    AllocatedTaskResources {
                        cpu: AllocatedCpuResources {
                            cpu_shares: 500,
                            ..Default::default()
                        },
                        memory: AllocatedMemoryResources {
                            memory_mb: 256,
                            ..Default::default()
                        },
                        ..Default::default()
                    },
                )]),
                shared: AllocatedSharedResources {
                    disk_mb: 300,
                    networks: vec![NetworkResource {
                        mode: "host".into(),
                        ip: "127.0.0.1".into(),
                        dynamic_ports: vec![Port {
                            label: "db".into(),
                            value: 23456,
                            to: 6379,
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    ports: vec![AllocatedPortMapping {
                        label: "db".into(),
                        value: 23456,
                        to: 6379,
                        host_ip: "127.0.0.1".into(),
                        ..Default::default()
                    }],
                },
                ..Default::default()
            }),
            ..Allocation::default()
        }
    }

    #[test]
    fn tails_are_whole_lines_from_the_end() {
        assert_eq!(tail_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail_lines(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(tail_lines(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(tail_lines(b"a\nb\n", 0), b"");
        assert!(has_lines(b"x\nb\nc\n", 2));
        assert!(
            !has_lines(b"b\nc\n", 2),
            "b may be the end of a longer line"
        );
    }

    #[test]
    fn frames_are_read_across_chunk_boundaries() {
        let mut r = FrameReader::default();
        assert_eq!(r.push(b"{\"Offset\":3,\"Data\":\"aGk"), vec![]);
        assert_eq!(
            r.push(b"K\",\"File\":\"alloc/logs/t.stdout.0\"}\n{}\n{\"Fi"),
            vec![Frame::Data(b"hi\n".to_vec()), Frame::Heartbeat]
        );
        assert_eq!(
            r.push(b"le\":\"x\",\"FileEvent\":\"file deleted\"}\n"),
            vec![]
        );
    }

    #[test]
    fn alloc_status_reads_like_nomad() {
        let text = alloc_status_text(&alloc(), false, NOW);
        let expected = "ID                  = 8ba85cef-1111-2222-3333-444444444444
Eval ID             = abcd1234
Name                = example.cache[0]
Node ID             = 171a583b
Node Name           = node1
Job ID              = example
Job Version         = 0
Client Status       = running
Client Description  = Tasks are running
Desired Status      = run
Desired Description = <none>
Created             = 5m28s ago
Modified            = 5m12s ago

Allocation Addresses (mode = \"host\"):
Label  Dynamic  Address
*db    yes      127.0.0.1:23456 -> 6379

Task \"redis\" is \"running\"
Task Resources:
CPU      Memory   Disk     Addresses
500 MHz  256 MiB  300 MiB  <none>

Task Events:
Started At     = 2024-05-01T11:59:02Z
Finished At    = N/A
Total Restarts = 0
Last Restart   = N/A

Recent Events:
Time                  Type        Description
2024-05-01T11:59:02Z  Started     Task started by client
2024-05-01T11:59:01Z  Task Setup  Building Task Directory
2024-05-01T11:59:00Z  Received    Task received by client";
        assert_eq!(text, expected);
    }

    #[test]
    fn deployment_fields_and_several_addresses() {
        let mut a = alloc();
        a.deployment_id = "d0d0d0d0-1".into();
        if let Some(r) = a.allocated_resources.as_mut() {
            r.shared.networks[0].reserved_ports.push(Port {
                label: "http".into(),
                value: 8080,
                ..Default::default()
            });
            r.shared.ports.push(AllocatedPortMapping {
                label: "http".into(),
                value: 8080,
                host_ip: "127.0.0.1".into(),
                ..Default::default()
            });
            // The older task-level network block shows under the task's resources.
            if let Some(t) = r.tasks.get_mut("redis") {
                t.networks.push(NetworkResource {
                    ip: "10.0.0.5".into(),
                    dynamic_ports: vec![Port {
                        label: "a".into(),
                        value: 21000,
                        ..Default::default()
                    }],
                    reserved_ports: vec![Port {
                        label: "b".into(),
                        value: 22000,
                        ..Default::default()
                    }],
                    ..Default::default()
                });
            }
        }
        let text = alloc_status_text(&a, false, NOW);
        assert!(
            text.contains("Deployment ID       = d0d0d0d0\nDeployment Health   = unset"),
            "{text}"
        );
        assert!(
            text.contains(
                "Allocation Addresses (mode = \"host\"):\nLabel  Dynamic  Address\n\
                 *db    yes      127.0.0.1:23456 -> 6379\n\
                 *http  no       127.0.0.1:8080\n\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("500 MHz  256 MiB  300 MiB  a: 10.0.0.5:21000\n                           b: 10.0.0.5:22000\n"),
            "{text}"
        );
    }

    #[test]
    fn service_checks_are_listed_after_the_basic_info() {
        use caravan_schemas::alloc::{CheckMode, CheckQueryResult, CheckStatus};
        let mut a = alloc();
        let result = |id: &str, task: &str, check: &str, status, output: &str| {
            (
                id.into(),
                CheckQueryResult {
                    id: id.into(),
                    mode: CheckMode::Healthiness,
                    status,
                    output: output.into(),
                    group: "cache".into(),
                    task: task.into(),
                    service: "redis-cache".into(),
                    check: check.into(),
                    ..CheckQueryResult::default()
                },
            )
        };
        a.check_results = BTreeMap::from([
            result("b", "", "alive", CheckStatus::Success, "nomad: tcp ok"),
            result(
                "a",
                "redis",
                "ping",
                CheckStatus::Failure,
                "redis-cli: connection refused\nsecond line",
            ),
        ]);
        let text = alloc_status_text(&a, false, NOW);
        let expected = "*db    yes      127.0.0.1:23456 -> 6379

Nomad Service Checks:
Service      Task     Name   Mode         Status   Output
redis-cache  (group)  alive  healthiness  success  nomad: tcp ok
redis-cache  redis    ping   healthiness  failure  redis-cli: connection refused

Task \"redis\" is \"running\"";
        assert!(text.contains(expected), "{text}");
        assert!(!alloc_status_text(&alloc(), false, NOW).contains("Checks"));
    }

    #[test]
    fn no_addresses_section_without_ports_and_the_network_when_unmapped() {
        let mut a = alloc();
        if let Some(r) = a.allocated_resources.as_mut() {
            r.shared.ports.clear();
        }
        // Without port mappings the group network's own ports are listed, unstarred.
        let text = alloc_status_text(&a, false, NOW);
        assert!(
            text.contains("Label  Dynamic  Address\ndb     yes      127.0.0.1:23456 -> 6379\n"),
            "{text}"
        );
        if let Some(r) = a.allocated_resources.as_mut() {
            r.shared.networks.clear();
        }
        let text = alloc_status_text(&a, false, NOW);
        assert!(!text.contains("Allocation Addresses"), "{text}");
    }
}
