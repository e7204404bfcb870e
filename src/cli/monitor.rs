//! Following an evaluation until the scheduler is done with it, printing what happens as
//! Nomad's `monitor` does:
//!
//! ```text
//! ==> 2024-05-01T12:00:00Z: Monitoring evaluation "abcd1234"
//!     2024-05-01T12:00:00Z: Evaluation triggered by job "example"
//!     2024-05-01T12:00:01Z: Allocation "8ba85cef" created: node "171a583b", group "cache"
//!     2024-05-01T12:00:01Z: Evaluation status changed: "pending" -> "complete"
//! ==> 2024-05-01T12:00:01Z: Evaluation "abcd1234" finished with status "complete"
//! ```
//!
//! [`EvalMonitor`] is the pure part: it turns successive observations of the evaluation and its
//! allocations into lines. [`monitor_eval`] drives it with blocking queries. Its [`Outcome`]
//! carries the finished evaluation, whose deployment a deployment monitor can follow next.

use super::CliError;
use super::format::{alloc_metrics, failed_group_header, format_time, limit, now_nanos};
use crate::client::{Client, QueryOptions};
use caravan_schemas::alloc::AllocationListStub;
use caravan_schemas::eval::{EvalStatus, Evaluation};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long one blocking query waits for what a monitor follows to change.
pub const BLOCKING_WAIT: Duration = Duration::from_secs(10);
/// The shortest time between two polls, should the server answer without blocking.
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// The pacing every monitor's blocking queries share: the first look reads at once (unless an
/// index to wait past is given), later ones wait for a change past the index last seen, and
/// two looks are never closer than [`MIN_POLL_INTERVAL`] should a server answer at once.
#[derive(Debug)]
pub struct Poll {
    index: i64,
    started: Instant,
}

impl Poll {
    /// Starts polling; the first look waits past `index` when it is above 0.
    pub fn since(index: i64) -> Poll {
        Poll {
            index: index.max(0),
            started: Instant::now(),
        }
    }

    /// The options of the next look, waiting up to `wait`.
    pub fn options(&mut self, wait: Duration) -> QueryOptions {
        self.started = Instant::now();
        if self.index > 0 {
            QueryOptions::blocking(self.index, wait.max(MIN_POLL_INTERVAL))
        } else {
            QueryOptions::default()
        }
    }

    /// Records the index a look answered with, and paces the next look.
    pub async fn seen(&mut self, last_index: i64) {
        self.index = last_index.max(self.index);
        let elapsed = self.started.elapsed();
        if elapsed < MIN_POLL_INTERVAL {
            tokio::time::sleep(MIN_POLL_INTERVAL - elapsed).await;
        }
    }
}

/// An informational line (`==> `).
pub fn info(now: i64, text: &str) -> String {
    format!("==> {}: {text}", format_time(now))
}

/// A detail line (four spaces).
pub fn output(now: i64, text: &str) -> String {
    format!("    {}: {text}", format_time(now))
}

/// What the monitor last saw of one allocation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllocSeen {
    pub id: String,
    pub group: String,
    pub node: String,
    pub desired: String,
    pub client: String,
    pub client_desc: String,
    pub create_index: i64,
}

/// What the monitor last saw of the evaluation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EvalSeen {
    pub status: String,
    pub node: String,
    pub job: String,
    pub deployment: String,
    pub create_index: i64,
    pub allocs: BTreeMap<String, AllocSeen>,
}

impl EvalSeen {
    pub fn of(eval: &Evaluation, allocs: &[AllocationListStub]) -> EvalSeen {
        EvalSeen {
            status: eval.status.to_string(),
            node: eval.node_id.to_string(),
            job: eval.job_id.to_string(),
            deployment: eval.deployment_id.to_string(),
            create_index: eval.create_index,
            allocs: allocs
                .iter()
                .map(|a| {
                    (
                        a.id.to_string(),
                        AllocSeen {
                            id: a.id.to_string(),
                            group: a.task_group.clone(),
                            node: a.node_id.to_string(),
                            desired: a.desired_status.to_string(),
                            client: a.client_status.to_string(),
                            client_desc: a.client_description.clone(),
                            create_index: a.create_index,
                        },
                    )
                })
                .collect(),
        }
    }
}

/// How monitoring ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The evaluation as last seen (done). Its `DeploymentID` is where a deployment monitor
    /// takes over.
    pub eval: Evaluation,
    /// Some task group could not be placed.
    pub placement_failed: bool,
}

impl Outcome {
    /// 2 when placement failed (Nomad's dedicated code), else 0.
    pub fn exit_code(&self) -> i32 {
        if self.placement_failed { 2 } else { 0 }
    }
}

/// The evaluation is done as far as `run` is concerned: complete, failed, canceled, or blocked
/// (waiting for capacity, which may never come).
pub fn is_done(status: EvalStatus) -> bool {
    status.is_terminal() || status == EvalStatus::Blocked
}

/// Turns observations into lines.
#[derive(Debug, Default)]
pub struct EvalMonitor {
    length: usize,
    seen: EvalSeen,
}

impl EvalMonitor {
    /// `length` is how many characters of ids to show (8, or 36 with `-verbose`).
    pub fn new(length: usize) -> Self {
        EvalMonitor {
            length,
            seen: EvalSeen::default(),
        }
    }

    fn id<'a>(&self, id: &'a str) -> &'a str {
        limit(id, self.length)
    }

    /// The first line.
    pub fn start(&self, eval_id: &str, now: i64) -> String {
        info(
            now,
            &format!("Monitoring evaluation {:?}", self.id(eval_id)),
        )
    }

    /// Lines for what changed since the last observation (Nomad's `monitor.update`).
    pub fn update(&mut self, next: EvalSeen, now: i64) -> Vec<String> {
        let mut out = Vec::new();
        let prev = &self.seen;
        if prev.node.is_empty() && !next.node.is_empty() {
            out.push(output(
                now,
                &format!("Evaluation triggered by node {:?}", self.id(&next.node)),
            ));
        }
        if prev.job.is_empty() && !next.job.is_empty() {
            out.push(output(
                now,
                &format!("Evaluation triggered by job {:?}", next.job),
            ));
        }
        if prev.deployment.is_empty() && !next.deployment.is_empty() {
            out.push(output(
                now,
                &format!(
                    "Evaluation within deployment: {:?}",
                    self.id(&next.deployment)
                ),
            ));
        }
        for (id, alloc) in &next.allocs {
            match prev.allocs.get(id) {
                None if alloc.create_index < next.create_index => out.push(output(
                    now,
                    &format!(
                        "Allocation {:?} modified: node {:?}, group {:?}",
                        self.id(&alloc.id),
                        self.id(&alloc.node),
                        alloc.group
                    ),
                )),
                None if alloc.desired == "run" => out.push(output(
                    now,
                    &format!(
                        "Allocation {:?} created: node {:?}, group {:?}",
                        self.id(&alloc.id),
                        self.id(&alloc.node),
                        alloc.group
                    ),
                )),
                Some(before) if before.client != alloc.client => {
                    let desc = if alloc.client_desc.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", alloc.client_desc)
                    };
                    out.push(output(
                        now,
                        &format!(
                            "Allocation {:?} status changed: {:?} -> {:?}{desc}",
                            self.id(&alloc.id),
                            before.client,
                            alloc.client
                        ),
                    ));
                }
                _ => {}
            }
        }
        if !prev.status.is_empty() && next.status != "pending" && prev.status != next.status {
            out.push(output(
                now,
                &format!(
                    "Evaluation status changed: {:?} -> {:?}",
                    prev.status, next.status
                ),
            ));
        }
        self.seen = next;
        out
    }

    /// The closing lines for a finished evaluation, and whether placement failed.
    pub fn finish(&self, eval: &Evaluation, now: i64) -> (Vec<String>, bool) {
        let id = self.id(eval.id.as_str());
        if eval.failed_tg_allocs.is_empty() {
            return (
                vec![info(
                    now,
                    &format!(
                        "Evaluation {id:?} finished with status {:?}",
                        eval.status.as_str()
                    ),
                )],
                false,
            );
        }
        let mut out = vec![info(
            now,
            &format!(
                "Evaluation {id:?} finished with status {:?} but failed to place all allocations:",
                eval.status.as_str()
            ),
        )];
        for (group, m) in &eval.failed_tg_allocs {
            out.push(output(now, &failed_group_header(group, m)));
            let reasons = alloc_metrics(m, "  ");
            out.extend(reasons.lines().map(|l| format!("    {l}")));
        }
        if !eval.blocked_eval.is_empty() {
            out.push(output(
                now,
                &format!(
                    "Evaluation {:?} waiting for additional capacity to place remainder",
                    self.id(eval.blocked_eval.as_str())
                ),
            ));
        }
        (out, true)
    }
}

/// Follows evaluation `eval_id` until it is done, printing as it goes.
pub async fn monitor_eval(
    client: &Client,
    eval_id: &str,
    length: usize,
) -> Result<Outcome, CliError> {
    let mut monitor = EvalMonitor::new(length);
    println!("{}", monitor.start(eval_id, now_nanos()));
    let mut poll = Poll::since(0);
    loop {
        let opts = poll.options(BLOCKING_WAIT);
        let (eval, meta) = client
            .evaluation(eval_id, &opts)
            .await
            .map_err(super::conn::err("Error reading evaluation"))?;
        let allocs = client
            .evaluation_allocations(eval_id)
            .await
            .map_err(super::conn::err("Error reading allocations"))?;
        for line in monitor.update(EvalSeen::of(&eval, &allocs), now_nanos()) {
            println!("{line}");
        }
        if is_done(eval.status) {
            let (lines, placement_failed) = monitor.finish(&eval, now_nanos());
            for line in lines {
                println!("{line}");
            }
            return Ok(Outcome {
                eval,
                placement_failed,
            });
        }
        poll.seen(meta.last_index).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use caravan_schemas::alloc::{AllocMetric, ClientStatus, DesiredStatus};
    use caravan_schemas::eval::TriggeredBy;

    const NOW: i64 = 1_714_564_800_000_000_000;
    const T: &str = "2024-05-01T12:00:00Z";

    fn eval(status: EvalStatus) -> Evaluation {
        Evaluation {
            id: "abcd1234-5d6e-7f80-91a2-b3c4d5e6f708".into(),
            job_id: "example".into(),
            triggered_by: TriggeredBy::JobRegister,
            status,
            create_index: 10,
            ..Evaluation::default()
        }
    }

    fn alloc(id: &str, create_index: i64, client: ClientStatus) -> AllocationListStub {
        AllocationListStub {
            id: id.into(),
            node_id: "171a583b-aaaa-bbbb-cccc-dddddddddddd".into(),
            task_group: "cache".into(),
            desired_status: DesiredStatus::Run,
            client_status: client,
            create_index,
            ..AllocationListStub::default()
        }
    }

    #[test]
    fn a_successful_evaluation() {
        let mut m = EvalMonitor::new(8);
        assert_eq!(
            m.start("abcd1234-5d6e", NOW),
            format!("==> {T}: Monitoring evaluation \"abcd1234\"")
        );
        let pending = eval(EvalStatus::Pending);
        assert_eq!(
            m.update(EvalSeen::of(&pending, &[]), NOW),
            [format!("    {T}: Evaluation triggered by job \"example\"")]
        );
        let done = eval(EvalStatus::Complete);
        let placed = [alloc("8ba85cef-0000", 11, ClientStatus::Pending)];
        assert_eq!(
            m.update(EvalSeen::of(&done, &placed), NOW),
            [
                format!(
                    "    {T}: Allocation \"8ba85cef\" created: node \"171a583b\", group \"cache\""
                ),
                format!("    {T}: Evaluation status changed: \"pending\" -> \"complete\""),
            ]
        );
        // Nothing new, nothing printed.
        assert!(m.update(EvalSeen::of(&done, &placed), NOW).is_empty());
        let running = [alloc("8ba85cef-0000", 11, ClientStatus::Running)];
        assert_eq!(
            m.update(EvalSeen::of(&done, &running), NOW),
            [format!(
                "    {T}: Allocation \"8ba85cef\" status changed: \"pending\" -> \"running\""
            )]
        );
        let (lines, failed) = m.finish(&done, NOW);
        assert!(!failed);
        assert_eq!(
            lines,
            [format!(
                "==> {T}: Evaluation \"abcd1234\" finished with status \"complete\""
            )]
        );
        assert!(is_done(EvalStatus::Complete) && is_done(EvalStatus::Blocked));
        assert!(!is_done(EvalStatus::Pending));
    }

    #[test]
    fn older_allocations_are_reported_as_modified() {
        let mut m = EvalMonitor::new(8);
        let e = eval(EvalStatus::Complete);
        let lines = m.update(
            EvalSeen::of(&e, &[alloc("11112222-x", 3, ClientStatus::Running)]),
            NOW,
        );
        assert_eq!(
            lines[1],
            format!(
                "    {T}: Allocation \"11112222\" modified: node \"171a583b\", group \"cache\""
            )
        );
    }

    #[test]
    fn placement_failures_are_listed_and_exit_two() {
        let mut e = eval(EvalStatus::Complete);
        e.blocked_eval = "efgh5678-0000".into();
        e.failed_tg_allocs.insert(
            "cache".into(),
            AllocMetric {
                nodes_evaluated: 3,
                nodes_filtered: 3,
                constraint_filtered: BTreeMap::from([(
                    "${attr.kernel.name} = windows".to_owned(),
                    3,
                )]),
                ..AllocMetric::default()
            },
        );
        let m = EvalMonitor::new(8);
        let (lines, failed) = m.finish(&e, NOW);
        assert!(failed);
        assert_eq!(
            lines,
            [
                format!(
                    "==> {T}: Evaluation \"abcd1234\" finished with status \"complete\" but failed to place all allocations:"
                ),
                format!("    {T}: Task Group \"cache\" (failed to place 1 allocation):"),
                "      * Constraint \"${attr.kernel.name} = windows\": 3 nodes excluded by filter"
                    .to_owned(),
                format!(
                    "    {T}: Evaluation \"efgh5678\" waiting for additional capacity to place remainder"
                ),
            ]
        );
        let outcome = Outcome {
            eval: e,
            placement_failed: failed,
        };
        assert_eq!(outcome.exit_code(), 2);
    }

    #[test]
    fn node_and_deployment_triggers() {
        let mut m = EvalMonitor::new(36);
        let mut e = eval(EvalStatus::Pending);
        e.job_id = "".into();
        e.node_id = "n1".into();
        e.deployment_id = "d1".into();
        let lines = m.update(EvalSeen::of(&e, &[]), NOW);
        assert_eq!(
            lines,
            [
                format!("    {T}: Evaluation triggered by node \"n1\""),
                format!("    {T}: Evaluation within deployment: \"d1\""),
            ]
        );
    }
}
