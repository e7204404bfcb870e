//! Output helpers shared by the commands, laid out as Nomad's CLI lays them out:
//! `Key = value` blocks, column tables with two-space gaps, `<none>` for empty values, ids
//! shortened to 8 characters, and times as `5m3s ago`.

use super::CliError;
use caravan_schemas::alloc::{AllocMetric, AllocationListStub};
use caravan_schemas::deployment::Deployment;
use caravan_schemas::job::JobListStub;
use caravan_schemas::time::Timestamp;
use serde::Serialize;
use std::fmt::Write as _;

/// What an empty value prints as.
pub const NONE: &str = "<none>";
/// How many characters of an id are shown without `-verbose`.
pub const SHORT_ID: usize = 8;
/// …and with it.
pub const FULL_ID: usize = 36;

/// The id length for `-verbose` or not.
pub fn id_length(verbose: bool) -> usize {
    if verbose { FULL_ID } else { SHORT_ID }
}

/// The first `n` characters of `s` (Nomad's `limit`).
pub fn limit(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// An id as shown: 8 characters, or all 36 with `-verbose`.
pub fn short_id(id: &str, verbose: bool) -> &str {
    limit(id, id_length(verbose))
}

fn width(s: &str) -> usize {
    s.chars().count()
}

fn cell(s: &str) -> &str {
    cell_or(s, NONE)
}

fn cell_or<'a>(s: &'a str, empty: &'a str) -> &'a str {
    if s.is_empty() { empty } else { s }
}

/// A `Key = value` block with the keys padded to one width. Empty values print `<none>`.
pub fn kv<K: AsRef<str>, V: AsRef<str>>(rows: &[(K, V)]) -> String {
    let w = rows
        .iter()
        .map(|(k, _)| width(k.as_ref()))
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        let k = k.as_ref();
        let _ = write!(
            out,
            "{k}{} = {}",
            " ".repeat(w - width(k)),
            cell(v.as_ref())
        );
        out.push('\n');
    }
    trim_lines(&out)
}

/// A table: columns padded to their widest cell and separated by two spaces; the last column
/// is not padded. Empty cells print `<none>`.
pub fn table<H: AsRef<str>>(header: &[H], rows: &[Vec<String>]) -> String {
    table_with(header, rows, NONE)
}

/// A table whose empty cells print `empty`.
pub fn table_with<H: AsRef<str>>(header: &[H], rows: &[Vec<String>], empty: &str) -> String {
    let all: Vec<Vec<&str>> = std::iter::once(header.iter().map(AsRef::as_ref).collect())
        .chain(
            rows.iter()
                .map(|r| r.iter().map(|c| cell_or(c.as_str(), empty)).collect()),
        )
        .collect();
    let columns = all.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            all.iter()
                .filter_map(|r| r.get(i))
                .map(|c| width(c))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &all {
        for (i, c) in row.iter().enumerate() {
            out.push_str(c);
            if i + 1 < row.len() {
                out.push_str(&" ".repeat(widths[i] - width(c) + 2));
            }
        }
        out.push('\n');
    }
    trim_lines(&out)
}

/// Drops trailing spaces on each line and the final newline.
fn trim_lines(s: &str) -> String {
    s.lines().map(str::trim_end).collect::<Vec<_>>().join("\n")
}

/// Unix nanoseconds now.
pub fn now_nanos() -> i64 {
    Timestamp::now().unix_nanos().unwrap_or(0)
}

/// A Unix-nanosecond time as `2024-05-01T12:00:00Z` (UTC, whole seconds).
pub fn format_time(nanos: i64) -> String {
    Timestamp::from_unix_nanos(nanos - nanos.rem_euclid(1_000_000_000)).to_rfc3339()
}

/// A `time.Time` field as `format_time` does, or `N/A` when unset (Nomad's `formatTaskTimes`).
pub fn format_timestamp(t: Timestamp) -> String {
    t.unix_nanos().map_or_else(|| "N/A".to_owned(), format_time)
}

fn round_secs(nanos: i64) -> i64 {
    (nanos + 500_000_000).div_euclid(1_000_000_000)
}

/// How long ago `then` was, as Nomad's `prettyTimeDiff`: rounded to seconds, at most the two
/// largest units (`5m3s ago`, `2d4h ago`, `3s from now`); empty for an unset (zero) time.
pub fn time_ago(then: i64, now: i64) -> String {
    if then == 0 {
        return String::new();
    }
    let (a, b) = (round_secs(then), round_secs(now));
    let (secs, suffix) = if b >= a {
        (b - a, " ago")
    } else {
        (a - b, " from now")
    };
    let parts = [
        (secs / 86_400, 'd'),
        ((secs / 3_600) % 24, 'h'),
        ((secs / 60) % 60, 'm'),
        (secs % 60, 's'),
    ];
    let text: String = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .take(2)
        .map(|(n, u)| format!("{n}{u}"))
        .collect();
    if text.is_empty() {
        format!("0s{suffix}")
    } else {
        format!("{text}{suffix}")
    }
}

/// Bytes in binary units as go-humanize's `IBytes`: `256 MiB`, `7.7 GiB`, `9 B`.
pub fn ibytes(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 10 {
        return format!("{bytes} B");
    }
    let mut e = 0;
    let mut scaled = bytes as f64;
    while scaled >= 1024.0 && e < UNITS.len() - 1 {
        scaled /= 1024.0;
        e += 1;
    }
    let val = (scaled * 10.0 + 0.5).floor() / 10.0;
    if val < 10.0 {
        format!("{val:.1} {}", UNITS[e])
    } else {
        format!("{val:.0} {}", UNITS[e])
    }
}

/// Megabytes as `ibytes` shows them.
pub fn mib(mb: i64) -> String {
    ibytes(u64::try_from(mb).unwrap_or(0).saturating_mul(1024 * 1024))
}

/// Why placements failed, one `* …` line each (Nomad's `formatAllocMetrics`).
pub fn alloc_metrics(m: &AllocMetric, prefix: &str) -> String {
    let mut out = Vec::new();
    if m.nodes_evaluated == 0 {
        out.push(format!("{prefix}* No nodes were eligible for evaluation"));
    }
    for (dc, n) in &m.nodes_available {
        if *n == 0 {
            out.push(format!(
                "{prefix}* No nodes are available in datacenter {dc:?}"
            ));
        }
    }
    for (class, n) in &m.class_filtered {
        out.push(format!(
            "{prefix}* Class {class:?}: {n} nodes excluded by filter"
        ));
    }
    for (c, n) in &m.constraint_filtered {
        out.push(format!(
            "{prefix}* Constraint {c:?}: {n} nodes excluded by filter"
        ));
    }
    if m.nodes_exhausted > 0 {
        out.push(format!(
            "{prefix}* Resources exhausted on {} nodes",
            m.nodes_exhausted
        ));
    }
    for (class, n) in &m.class_exhausted {
        out.push(format!("{prefix}* Class {class:?} exhausted on {n} nodes"));
    }
    for (dim, n) in &m.dimension_exhausted {
        out.push(format!(
            "{prefix}* Dimension {dim:?} exhausted on {n} nodes"
        ));
    }
    for q in &m.quota_exhausted {
        out.push(format!("{prefix}* Quota limit hit {q:?}"));
    }
    out.join("\n")
}

/// `Task Group "cache" (failed to place 2 allocations):` for a group's failure.
pub fn failed_group_header(group: &str, m: &AllocMetric) -> String {
    let noun = if m.coalesced_failures > 0 {
        "allocations"
    } else {
        "allocation"
    };
    format!(
        "Task Group {group:?} (failed to place {} {noun}):",
        m.coalesced_failures + 1
    )
}

/// Pretty JSON for `-json`.
pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<String, CliError> {
    serde_json::to_string_pretty(value).map_err(|e| CliError::new(1, format!("encoding JSON: {e}")))
}

/// A section title preceded by a blank line, as Nomad prints `\n[bold]Summary[reset]`.
pub fn section(out: &mut String, title: &str, body: &str) {
    let _ = write!(out, "\n\n{title}\n{body}");
}

/// A job's status as listed: `dead (stopped)` for a stopped job (Nomad's `getStatusString`).
pub fn job_status(status: &str, stop: bool) -> String {
    if stop {
        format!("{status} (stopped)")
    } else {
        status.to_owned()
    }
}

/// `ID  Type  Priority  Status  Submit Date`.
pub fn job_list(jobs: &[JobListStub]) -> String {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.to_string(),
                j.r#type.to_string(),
                j.priority.to_string(),
                job_status(&j.status, j.stop),
                format_time(j.submit_time),
            ]
        })
        .collect();
    table(&["ID", "Type", "Priority", "Status", "Submit Date"], &rows)
}

/// Allocations newest first: `ID  Node ID  Task Group  Version  Desired  Status  Created
/// Modified` (with `Eval ID` and `Node Name` under `-verbose`); `No allocations placed` when
/// there are none.
pub fn alloc_list(allocs: &[AllocationListStub], verbose: bool, now: i64) -> String {
    if allocs.is_empty() {
        return "No allocations placed".into();
    }
    let mut sorted: Vec<&AllocationListStub> = allocs.iter().collect();
    sorted.sort_by_key(|a| std::cmp::Reverse(a.create_index));
    let rows: Vec<Vec<String>> = sorted
        .iter()
        .map(|a| {
            let mut row = vec![short_id(a.id.as_str(), verbose).to_owned()];
            if verbose {
                row.push(short_id(a.eval_id.as_str(), verbose).to_owned());
            }
            row.push(short_id(a.node_id.as_str(), verbose).to_owned());
            if verbose {
                row.push(a.node_name.clone());
            }
            row.extend([
                a.task_group.clone(),
                a.job_version.to_string(),
                a.desired_status.to_string(),
                a.client_status.to_string(),
                time_ago(a.create_time, now),
                time_ago(a.modify_time, now),
            ]);
            row
        })
        .collect();
    let header: &[&str] = if verbose {
        &[
            "ID",
            "Eval ID",
            "Node ID",
            "Node Name",
            "Task Group",
            "Version",
            "Desired",
            "Status",
            "Created",
            "Modified",
        ]
    } else {
        &[
            "ID",
            "Node ID",
            "Task Group",
            "Version",
            "Desired",
            "Status",
            "Created",
            "Modified",
        ]
    };
    table(header, &rows)
}

/// A deployment's `ID/Status/Description` block and its `Deployed` table, as `job status`
/// shows the latest deployment (Nomad's `formatLatestDeployment`).
pub fn deployment_block(d: &Deployment, verbose: bool) -> String {
    let mut out = kv(&[
        ("ID", short_id(d.id.as_str(), verbose)),
        ("Status", d.status.as_str()),
        ("Description", d.status_description.as_str()),
    ]);
    if !d.task_groups.is_empty() {
        section(&mut out, "Deployed", &deployment_groups(d));
    }
    out
}

/// `deployment status <id>`: `ID/Job ID/Job Version/Status/Description` and the `Deployed`
/// table (Nomad's `formatDeployment`).
pub fn deployment_status(d: &Deployment, verbose: bool) -> String {
    let version = d.job_version.to_string();
    let mut out = kv(&[
        ("ID", short_id(d.id.as_str(), verbose)),
        ("Job ID", d.job_id.as_str()),
        ("Job Version", version.as_str()),
        ("Status", d.status.as_str()),
        ("Description", d.status_description.as_str()),
    ]);
    if !d.task_groups.is_empty() {
        section(&mut out, "Deployed", &deployment_groups(d));
    }
    out
}

/// Deployments newest first: `ID  Job ID  Job Version  Status  Description`; `No deployments
/// found` when there are none (Nomad's `formatDeployments`).
pub fn deployment_list(deployments: &[Deployment], verbose: bool) -> String {
    if deployments.is_empty() {
        return "No deployments found".into();
    }
    let mut sorted: Vec<&Deployment> = deployments.iter().collect();
    sorted.sort_by_key(|d| std::cmp::Reverse(d.create_index));
    let rows: Vec<Vec<String>> = sorted
        .iter()
        .map(|d| {
            vec![
                short_id(d.id.as_str(), verbose).to_owned(),
                d.job_id.to_string(),
                d.job_version.to_string(),
                d.status.to_string(),
                d.status_description.clone(),
            ]
        })
        .collect();
    table(
        &["ID", "Job ID", "Job Version", "Status", "Description"],
        &rows,
    )
}

/// The `Deployed` table, with the optional columns only when some group uses them (Nomad's
/// `formatDeploymentGroups`).
pub fn deployment_groups(d: &Deployment) -> String {
    let auto_revert = d.task_groups.values().any(|g| g.auto_revert);
    let canaries = d.task_groups.values().any(|g| g.desired_canaries > 0);
    let deadline = d
        .task_groups
        .values()
        .any(|g| g.progress_deadline.nanos() != 0);
    let mut header = vec!["Task Group"];
    if auto_revert {
        header.push("Auto Revert");
    }
    if canaries {
        header.push("Promoted");
    }
    header.push("Desired");
    if canaries {
        header.push("Canaries");
    }
    header.extend(["Placed", "Healthy", "Unhealthy"]);
    if deadline {
        header.push("Progress Deadline");
    }
    let rows: Vec<Vec<String>> = d
        .task_groups
        .iter()
        .map(|(name, g)| {
            let mut row = vec![name.clone()];
            if auto_revert {
                row.push(g.auto_revert.to_string());
            }
            if canaries {
                row.push(if g.desired_canaries > 0 {
                    g.promoted.to_string()
                } else {
                    "N/A".into()
                });
            }
            row.push(g.desired_total.to_string());
            if canaries {
                row.push(g.desired_canaries.to_string());
            }
            row.extend([
                g.placed_allocs.to_string(),
                g.healthy_allocs.to_string(),
                g.unhealthy_allocs.to_string(),
            ]);
            if deadline {
                row.push(format_timestamp(g.require_progress_by));
            }
            row
        })
        .collect();
    table(&header, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn ids_are_shortened_unless_verbose() {
        let id = "2bb3c3b4-5d6e-7f80-91a2-b3c4d5e6f708";
        assert_eq!(short_id(id, false), "2bb3c3b4");
        assert_eq!(short_id(id, true), id);
        assert_eq!(short_id("abc", false), "abc");
        assert_eq!(limit("ünïcode", 3), "ünï");
    }

    #[test]
    fn kv_aligns_keys_and_fills_empty_values() {
        let out = kv(&[("ID", "example"), ("Submit Date", ""), ("Type", "service")]);
        assert_eq!(
            out,
            "ID          = example\nSubmit Date = <none>\nType        = service"
        );
    }

    #[test]
    fn tables_use_two_space_gaps_and_do_not_pad_the_last_column() {
        let out = table(
            &["ID", "Type", "Priority", "Status"],
            &[
                vec![
                    "example".into(),
                    "service".into(),
                    "50".into(),
                    "running".into(),
                ],
                vec!["b".into(), "batch".into(), "100".into(), String::new()],
            ],
        );
        assert_eq!(
            out,
            "ID       Type     Priority  Status\nexample  service  50        running\nb        batch    100       <none>"
        );
        assert_eq!(table(&["A", "B"], &[]), "A  B");
    }

    #[test]
    fn time_ago_keeps_two_units() {
        let s = 1_000_000_000i64;
        let now = 1_700_000_000 * s;
        assert_eq!(time_ago(now - 303 * s, now), "5m3s ago");
        assert_eq!(
            time_ago(now - (2 * 86_400 + 4 * 3600 + 7) * s, now),
            "2d4h ago"
        );
        assert_eq!(time_ago(now - 3600 * s, now), "1h ago");
        assert_eq!(time_ago(now - 3601 * s, now), "1h1s ago");
        assert_eq!(time_ago(now, now), "0s ago");
        assert_eq!(time_ago(now - s / 3, now), "0s ago");
        assert_eq!(time_ago(now + 10 * s, now), "10s from now");
        assert_eq!(time_ago(0, now), "");
    }

    #[test]
    fn times_and_sizes() {
        assert_eq!(
            format_time(1_714_564_800_123_456_789),
            "2024-05-01T12:00:00Z"
        );
        assert_eq!(format_timestamp(Timestamp::ZERO), "N/A");
        assert_eq!(mib(256), "256 MiB");
        assert_eq!(mib(300), "300 MiB");
        assert_eq!(ibytes(7_900_000_000), "7.4 GiB");
        assert_eq!(ibytes(1024 * 1024 * 1024), "1.0 GiB");
        assert_eq!(ibytes(9), "9 B");
        assert_eq!(ibytes(0), "0 B");
    }

    #[test]
    fn placement_failures_read_like_nomads() {
        let m = AllocMetric {
            nodes_evaluated: 3,
            nodes_available: BTreeMap::from([("dc1".to_owned(), 3), ("dc2".to_owned(), 0)]),
            constraint_filtered: BTreeMap::from([("${attr.kernel.name} = windows".to_owned(), 3)]),
            nodes_exhausted: 1,
            dimension_exhausted: BTreeMap::from([("memory".to_owned(), 1)]),
            ..AllocMetric::default()
        };
        assert_eq!(
            alloc_metrics(&m, "  "),
            "  * No nodes are available in datacenter \"dc2\"\n  * Constraint \"${attr.kernel.name} = windows\": 3 nodes excluded by filter\n  * Resources exhausted on 1 nodes\n  * Dimension \"memory\" exhausted on 1 nodes"
        );
        assert_eq!(
            failed_group_header("cache", &m),
            "Task Group \"cache\" (failed to place 1 allocation):"
        );
        let two = AllocMetric {
            coalesced_failures: 1,
            ..AllocMetric::default()
        };
        assert_eq!(
            failed_group_header("web", &two),
            "Task Group \"web\" (failed to place 2 allocations):"
        );
        assert_eq!(
            alloc_metrics(&two, ""),
            "* No nodes were eligible for evaluation"
        );
    }
}
