//! Following a deployment until it is done, or until it waits for someone to promote it,
//! printing what changes in the manner of Nomad's (non-terminal) deployment monitor:
//!
//! ```text
//! ==> 2024-05-01T12:00:00Z: Monitoring deployment "0f2a5b1e"
//!     2024-05-01T12:00:00Z: Deployment "0f2a5b1e" is "running": Deployment is running
//!     2024-05-01T12:00:00Z: Task group "web": 0/3 placed, 0 healthy, 0 unhealthy
//!     2024-05-01T12:00:11Z: Allocation "8ba85cef" of group "web" is healthy
//!     2024-05-01T12:00:11Z: Task group "web": 1/3 placed, 1 healthy, 0 unhealthy
//!     …
//!     2024-05-01T12:00:40Z: Deployment "0f2a5b1e" status "running" -> "successful": Deployment completed successfully
//! ==> 2024-05-01T12:00:40Z: Deployment "0f2a5b1e" successful
//! ```
//!
//! [`DeployMonitor`] is the pure part: it turns successive observations of the deployment (and,
//! when the server lists them, its allocations) into lines, and says when following is over and
//! with which exit status. [`monitor_deployment`] drives it with blocking queries
//! (`GET /v1/deployment/:id?index=N&wait=10s`). A deployment whose canaries are all placed and
//! healthy and wait for a manual promotion ends the monitor with a hint (exit 0) instead of
//! blocking until someone promotes it.

use super::CliError;
use super::conn::err;
use super::format::{limit, now_nanos};
use super::monitor::{BLOCKING_WAIT, Poll, info, output};
use crate::client::Client;
use caravan_schemas::alloc::AllocationListStub;
use caravan_schemas::deployment::{Deployment, DeploymentState, DeploymentStatus};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// How long to wait for a job's deployment to appear: the controller creates it right after
/// the evaluation that places the new version.
const DEPLOYMENT_PATIENCE: Duration = Duration::from_secs(5);
/// Exit status of a deployment that ended other than successfully (Nomad's `job run` code).
pub const DEPLOYMENT_FAILED: i32 = 2;

/// What the monitor last saw of one task group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct GroupSeen {
    desired_total: i32,
    desired_canaries: i32,
    placed_canaries: usize,
    healthy_canaries: i32,
    promoted: bool,
    placed: i32,
    healthy: i32,
    unhealthy: i32,
}

/// Health of one allocation of the deployment: `None` until decided.
#[derive(Clone, Debug, PartialEq, Eq)]
struct AllocHealthSeen {
    group: String,
    canary: bool,
    healthy: Option<bool>,
}

/// How following a deployment ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// It completed successfully.
    Successful,
    /// It ended otherwise: failed or cancelled.
    Unsuccessful,
    /// It runs, but every group with canaries waits for a manual promotion.
    AwaitingPromotion,
}

impl Ending {
    /// 0, or [`DEPLOYMENT_FAILED`] when the deployment did not succeed.
    pub fn exit_code(&self) -> i32 {
        match self {
            Ending::Successful | Ending::AwaitingPromotion => 0,
            Ending::Unsuccessful => DEPLOYMENT_FAILED,
        }
    }
}

/// Turns observations of a deployment into lines.
#[derive(Debug, Default)]
pub struct DeployMonitor {
    length: usize,
    first: bool,
    status: Option<DeploymentStatus>,
    description: String,
    groups: BTreeMap<String, GroupSeen>,
    allocs: BTreeMap<String, AllocHealthSeen>,
}

/// How many canaries of a group are healthy: counted on its allocations when they are known,
/// else the group's healthy count (before promotion only canaries of the version run), at most
/// the canaries placed.
fn healthy_canaries(g: &DeploymentState, allocs: Option<&[AllocationListStub]>) -> i32 {
    match allocs {
        Some(allocs) => {
            let canaries: BTreeSet<&str> = g.placed_canaries.iter().map(|a| a.as_str()).collect();
            let n = allocs
                .iter()
                .filter(|a| canaries.contains(a.id.as_str()))
                .filter(|a| !a.desired_status.is_terminal() && !a.client_status.is_terminal())
                .filter(|a| {
                    a.deployment_status
                        .as_ref()
                        .is_some_and(|s| s.healthy == Some(true))
                })
                .count();
            i32::try_from(n).unwrap_or(i32::MAX)
        }
        None => g
            .healthy_allocs
            .min(i32::try_from(g.placed_canaries.len()).unwrap_or(i32::MAX)),
    }
}

/// The deployment runs and nothing will move until someone promotes it: no group promotes
/// itself, and every group still to promote has all its canaries placed and healthy.
pub fn awaits_manual_promotion(d: &Deployment, allocs: Option<&[AllocationListStub]>) -> bool {
    if d.status != DeploymentStatus::Running || !d.requires_promotion() || d.has_auto_promote() {
        return false;
    }
    d.task_groups
        .values()
        .filter(|g| g.desired_canaries > 0 && !g.promoted)
        .all(|g| {
            i32::try_from(g.placed_canaries.len()).unwrap_or(i32::MAX) >= g.desired_canaries
                && healthy_canaries(g, allocs) >= g.desired_canaries
        })
}

impl DeployMonitor {
    /// `length` is how many characters of ids to show (8, or 36 with `-verbose`).
    pub fn new(length: usize) -> Self {
        DeployMonitor {
            length,
            first: true,
            ..DeployMonitor::default()
        }
    }

    fn id<'a>(&self, id: &'a str) -> &'a str {
        limit(id, self.length)
    }

    /// The first line.
    pub fn start(&self, deployment_id: &str, now: i64) -> String {
        info(
            now,
            &format!("Monitoring deployment {:?}", self.id(deployment_id)),
        )
    }

    /// One group's counts: `Task group "web": 1/1 canaries healthy, 1/3 placed, 1 healthy,
    /// 0 unhealthy` (the canary part only until the group is promoted).
    fn group_line(name: &str, g: &GroupSeen) -> String {
        let mut text = format!("Task group {name:?}: ");
        if g.desired_canaries > 0 && !g.promoted {
            text.push_str(&format!(
                "{}/{} canaries healthy, ",
                g.healthy_canaries, g.desired_canaries
            ));
        }
        text.push_str(&format!(
            "{}/{} placed, {} healthy, {} unhealthy",
            g.placed, g.desired_total, g.healthy, g.unhealthy
        ));
        text
    }

    /// Lines for what changed since the last observation. `allocs` are the deployment's
    /// allocations, when the server lists them.
    pub fn update(
        &mut self,
        d: &Deployment,
        allocs: Option<&[AllocationListStub]>,
        now: i64,
    ) -> Vec<String> {
        let id = self.id(d.id.as_str()).to_owned();
        let mut out = Vec::new();
        let first = std::mem::replace(&mut self.first, false);
        if first {
            out.push(output(
                now,
                &format!(
                    "Deployment {id:?} is {:?}: {}",
                    d.status.as_str(),
                    d.status_description
                ),
            ));
        }
        // Allocations whose health was decided since the last look (not on the first: the
        // group counts say it then).
        if let Some(allocs) = allocs {
            let mut next = BTreeMap::new();
            let mut sorted: Vec<&AllocationListStub> = allocs.iter().collect();
            sorted.sort_by_key(|a| (a.create_index, a.id.to_string()));
            for a in sorted {
                let status = a.deployment_status.as_ref();
                let seen = AllocHealthSeen {
                    group: a.task_group.clone(),
                    canary: status.is_some_and(|s| s.canary),
                    healthy: status.and_then(|s| s.healthy),
                };
                let before = self.allocs.get(a.id.as_str()).and_then(|s| s.healthy);
                if !first
                    && before != seen.healthy
                    && let Some(healthy) = seen.healthy
                {
                    let noun = if seen.canary { "Canary" } else { "Allocation" };
                    let word = if healthy { "healthy" } else { "unhealthy" };
                    out.push(output(
                        now,
                        &format!(
                            "{noun} {:?} of group {:?} is {word}",
                            self.id(a.id.as_str()),
                            seen.group
                        ),
                    ));
                }
                next.insert(a.id.to_string(), seen);
            }
            self.allocs = next;
        }
        // Promotions, then the groups whose counts moved.
        let mut groups = BTreeMap::new();
        for (name, g) in &d.task_groups {
            let seen = GroupSeen {
                desired_total: g.desired_total,
                desired_canaries: g.desired_canaries,
                placed_canaries: g.placed_canaries.len(),
                healthy_canaries: healthy_canaries(g, allocs),
                promoted: g.promoted,
                placed: g.placed_allocs,
                healthy: g.healthy_allocs,
                unhealthy: g.unhealthy_allocs,
            };
            let before = self.groups.get(name);
            if g.desired_canaries > 0 && g.promoted && before.is_some_and(|b| !b.promoted) {
                out.push(output(
                    now,
                    &format!("Task group {name:?}: canaries promoted"),
                ));
            }
            if before != Some(&seen) {
                out.push(output(now, &Self::group_line(name, &seen)));
            }
            groups.insert(name.clone(), seen);
        }
        self.groups = groups;
        if !first {
            let status_changed = self.status != Some(d.status);
            if status_changed {
                let before = self.status.map_or("", DeploymentStatus::as_str);
                out.push(output(
                    now,
                    &format!(
                        "Deployment {id:?} status {before:?} -> {:?}: {}",
                        d.status.as_str(),
                        d.status_description
                    ),
                ));
            } else if self.description != d.status_description {
                out.push(output(
                    now,
                    &format!(
                        "Deployment {id:?} is {:?}: {}",
                        d.status.as_str(),
                        d.status_description
                    ),
                ));
            }
        }
        self.status = Some(d.status);
        self.description.clone_from(&d.status_description);
        out
    }

    /// When following is over: the closing line and how it ended; `None` while the deployment
    /// is still under way.
    pub fn finish(
        &self,
        d: &Deployment,
        allocs: Option<&[AllocationListStub]>,
        now: i64,
    ) -> Option<(String, Ending)> {
        let id = self.id(d.id.as_str());
        if d.status == DeploymentStatus::Successful {
            return Some((
                info(now, &format!("Deployment {id:?} successful")),
                Ending::Successful,
            ));
        }
        if !d.active() {
            return Some((
                info(
                    now,
                    &format!(
                        "Deployment {id:?} {}: {}",
                        d.status.as_str(),
                        d.status_description
                    ),
                ),
                Ending::Unsuccessful,
            ));
        }
        if awaits_manual_promotion(d, allocs) {
            return Some((
                info(
                    now,
                    &format!(
                        "Deployment {id:?} requires manual promotion: caravan deployment promote {id}"
                    ),
                ),
                Ending::AwaitingPromotion,
            ));
        }
        None
    }
}

/// Follows deployment `id` (the full id) until it ends or waits for a manual promotion,
/// printing as it goes. With `since` above 0 the first look waits until the deployment is
/// past that index: after a write (promote, resume), the monitor starts from what it changed.
pub async fn monitor_deployment(
    client: &Client,
    id: &str,
    length: usize,
    since: i64,
) -> Result<Ending, CliError> {
    let mut monitor = DeployMonitor::new(length);
    println!("{}", monitor.start(id, now_nanos()));
    let mut poll = Poll::since(since);
    loop {
        let opts = poll.options(BLOCKING_WAIT);
        let (deployment, meta) = client
            .deployment(id, &opts)
            .await
            .map_err(err("Error fetching deployment"))?;
        // The allocations name the canaries and whose health changed; without them the group
        // counts still tell the story.
        let allocs = client.deployment_allocations(id).await.ok();
        let now = now_nanos();
        for line in monitor.update(&deployment, allocs.as_deref(), now) {
            println!("{line}");
        }
        if let Some((line, ending)) = monitor.finish(&deployment, allocs.as_deref(), now) {
            println!("{line}");
            return Ok(ending);
        }
        poll.seen(meta.last_index).await;
    }
}

/// Job `job_id`'s latest deployment once `wanted` accepts it, waiting (with blocking queries)
/// a few seconds for it to appear; `None` when it does not, e.g. when the change needed none.
pub async fn await_job_deployment(
    client: &Client,
    job_id: &str,
    wanted: impl Fn(&Deployment) -> bool,
) -> Result<Option<Deployment>, CliError> {
    let deadline = Instant::now() + DEPLOYMENT_PATIENCE;
    let mut poll = Poll::since(0);
    loop {
        let opts = poll.options(deadline.saturating_duration_since(Instant::now()));
        let (latest, meta) = match client.job_latest_deployment_query(job_id, &opts).await {
            Ok(answer) => answer,
            // The job is gone (purged meanwhile): there is nothing to follow.
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(err("Error fetching deployment")(e)),
        };
        if let Some(d) = latest.filter(|d| wanted(d)) {
            return Ok(Some(d));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        poll.seen(meta.last_index).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use caravan_schemas::alloc::AllocDeploymentStatus;
    use caravan_schemas::deployment::descriptions;

    const NOW: i64 = 1_714_564_800_000_000_000;
    const T: &str = "2024-05-01T12:00:00Z";
    const ID: &str = "0f2a5b1e-1111-2222-3333-444444444444";

    fn deployment(
        status: DeploymentStatus,
        desc: &str,
        groups: &[(&str, DeploymentState)],
    ) -> Deployment {
        Deployment {
            id: ID.into(),
            job_id: "web".into(),
            job_version: 1,
            status,
            status_description: desc.into(),
            task_groups: groups
                .iter()
                .map(|(n, g)| ((*n).to_owned(), g.clone()))
                .collect(),
            ..Deployment::default()
        }
    }

    fn group(desired: i32, placed: i32, healthy: i32, unhealthy: i32) -> DeploymentState {
        DeploymentState {
            desired_total: desired,
            placed_allocs: placed,
            healthy_allocs: healthy,
            unhealthy_allocs: unhealthy,
            ..DeploymentState::default()
        }
    }

    fn canary_group(canaries: &[&str], promoted: bool, healthy: i32) -> DeploymentState {
        DeploymentState {
            desired_total: 3,
            desired_canaries: 1,
            placed_canaries: canaries.iter().map(|c| (*c).into()).collect(),
            promoted,
            placed_allocs: i32::try_from(canaries.len()).unwrap(),
            healthy_allocs: healthy,
            ..DeploymentState::default()
        }
    }

    fn alloc(id: &str, index: i64, canary: bool, healthy: Option<bool>) -> AllocationListStub {
        AllocationListStub {
            id: id.into(),
            task_group: "web".into(),
            create_index: index,
            deployment_status: Some(AllocDeploymentStatus {
                healthy,
                canary,
                ..AllocDeploymentStatus::default()
            }),
            ..AllocationListStub::default()
        }
    }

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|l| format!("    {T}: {l}")).collect()
    }

    #[test]
    fn a_rolling_update_to_success() {
        let mut m = DeployMonitor::new(8);
        assert_eq!(
            m.start(ID, NOW),
            format!("==> {T}: Monitoring deployment \"0f2a5b1e\"")
        );
        let running = |g| {
            deployment(
                DeploymentStatus::Running,
                descriptions::RUNNING,
                &[("web", g)],
            )
        };
        let d = running(group(2, 1, 0, 0));
        let a = [alloc("aaaa1111-x", 10, false, None)];
        assert_eq!(
            m.update(&d, Some(&a), NOW),
            lines(&[
                "Deployment \"0f2a5b1e\" is \"running\": Deployment is running",
                "Task group \"web\": 1/2 placed, 0 healthy, 0 unhealthy",
            ])
        );
        assert_eq!(m.finish(&d, Some(&a), NOW), None);
        // Nothing new, nothing printed.
        assert!(m.update(&d, Some(&a), NOW).is_empty());
        let d = running(group(2, 2, 1, 0));
        let a = [
            alloc("aaaa1111-x", 10, false, Some(true)),
            alloc("bbbb2222-x", 11, false, None),
        ];
        assert_eq!(
            m.update(&d, Some(&a), NOW),
            lines(&[
                "Allocation \"aaaa1111\" of group \"web\" is healthy",
                "Task group \"web\": 2/2 placed, 1 healthy, 0 unhealthy",
            ])
        );
        let d = deployment(
            DeploymentStatus::Successful,
            descriptions::SUCCESSFUL,
            &[("web", group(2, 2, 2, 0))],
        );
        let a = [
            alloc("aaaa1111-x", 10, false, Some(true)),
            alloc("bbbb2222-x", 11, false, Some(true)),
        ];
        assert_eq!(
            m.update(&d, Some(&a), NOW),
            lines(&[
                "Allocation \"bbbb2222\" of group \"web\" is healthy",
                "Task group \"web\": 2/2 placed, 2 healthy, 0 unhealthy",
                "Deployment \"0f2a5b1e\" status \"running\" -> \"successful\": Deployment completed successfully",
            ])
        );
        let (line, ending) = m.finish(&d, Some(&a), NOW).unwrap();
        assert_eq!(line, format!("==> {T}: Deployment \"0f2a5b1e\" successful"));
        assert_eq!(
            (ending.clone(), ending.exit_code()),
            (Ending::Successful, 0)
        );
    }

    #[test]
    fn a_failure_exits_two_with_the_reason() {
        let mut m = DeployMonitor::new(8);
        let d = deployment(
            DeploymentStatus::Running,
            descriptions::RUNNING,
            &[("web", group(1, 1, 0, 0))],
        );
        m.update(&d, None, NOW);
        let reason = descriptions::rollback(descriptions::FAILED_ALLOCATIONS, 0);
        let d = deployment(
            DeploymentStatus::Failed,
            &reason,
            &[("web", group(1, 1, 0, 1))],
        );
        assert_eq!(
            m.update(&d, None, NOW),
            lines(&[
                "Task group \"web\": 1/1 placed, 0 healthy, 1 unhealthy",
                "Deployment \"0f2a5b1e\" status \"running\" -> \"failed\": Failed due to unhealthy allocations - rolling back to job version 0",
            ])
        );
        let (line, ending) = m.finish(&d, None, NOW).unwrap();
        assert_eq!(
            line,
            format!(
                "==> {T}: Deployment \"0f2a5b1e\" failed: Failed due to unhealthy allocations - rolling back to job version 0"
            )
        );
        assert_eq!(ending.exit_code(), 2);
        // A cancelled deployment did not succeed either.
        let d = deployment(DeploymentStatus::Cancelled, descriptions::NEWER_JOB, &[]);
        let (line, ending) = DeployMonitor::new(36).finish(&d, None, NOW).unwrap();
        assert_eq!(
            line,
            format!(
                "==> {T}: Deployment \"{ID}\" cancelled: Cancelled due to newer version of job"
            )
        );
        assert_eq!(ending, Ending::Unsuccessful);
    }

    #[test]
    fn canaries_waiting_for_promotion_end_the_monitor_with_a_hint() {
        let mut m = DeployMonitor::new(8);
        let waiting = |g| {
            deployment(
                DeploymentStatus::Running,
                descriptions::RUNNING_NEEDS_PROMOTION,
                &[("web", g)],
            )
        };
        // The canary is placed but its health is not decided yet: keep following.
        let d = waiting(canary_group(&["cccc3333-x"], false, 0));
        let a = [alloc("cccc3333-x", 20, true, None)];
        assert_eq!(
            m.update(&d, Some(&a), NOW),
            lines(&[
                "Deployment \"0f2a5b1e\" is \"running\": Deployment is running but requires manual promotion",
                "Task group \"web\": 0/1 canaries healthy, 1/3 placed, 0 healthy, 0 unhealthy",
            ])
        );
        assert_eq!(m.finish(&d, Some(&a), NOW), None);
        // Healthy: nothing moves until someone promotes.
        let d = waiting(canary_group(&["cccc3333-x"], false, 1));
        let a = [alloc("cccc3333-x", 20, true, Some(true))];
        assert_eq!(
            m.update(&d, Some(&a), NOW),
            lines(&[
                "Canary \"cccc3333\" of group \"web\" is healthy",
                "Task group \"web\": 1/1 canaries healthy, 1/3 placed, 1 healthy, 0 unhealthy",
            ])
        );
        let (line, ending) = m.finish(&d, Some(&a), NOW).unwrap();
        assert_eq!(
            line,
            format!(
                "==> {T}: Deployment \"0f2a5b1e\" requires manual promotion: caravan deployment promote 0f2a5b1e"
            )
        );
        assert_eq!(
            (ending.clone(), ending.exit_code()),
            (Ending::AwaitingPromotion, 0)
        );
        // Without the allocations, the group's counts decide.
        assert!(awaits_manual_promotion(&d, None));
        assert!(!awaits_manual_promotion(
            &waiting(canary_group(&["cccc3333-x"], false, 0)),
            None
        ));
    }

    #[test]
    fn promotion_is_shown_and_the_rollout_followed_to_the_end() {
        let mut m = DeployMonitor::new(8);
        let d = deployment(
            DeploymentStatus::Running,
            descriptions::RUNNING_NEEDS_PROMOTION,
            &[("web", canary_group(&["cccc3333-x"], false, 1))],
        );
        m.update(&d, None, NOW);
        let mut promoted = canary_group(&["cccc3333-x"], true, 1);
        promoted.placed_allocs = 2;
        let d = deployment(
            DeploymentStatus::Running,
            descriptions::RUNNING,
            &[("web", promoted)],
        );
        assert_eq!(
            m.update(&d, None, NOW),
            lines(&[
                "Task group \"web\": canaries promoted",
                "Task group \"web\": 2/3 placed, 1 healthy, 0 unhealthy",
                "Deployment \"0f2a5b1e\" is \"running\": Deployment is running",
            ])
        );
        assert_eq!(m.finish(&d, None, NOW), None, "promoted: keep following");
    }

    #[test]
    fn auto_promotion_and_pauses_keep_the_monitor_going() {
        let mut auto = canary_group(&["cccc3333-x"], false, 1);
        auto.auto_promote = true;
        let d = deployment(
            DeploymentStatus::Running,
            descriptions::RUNNING_AUTO_PROMOTION,
            &[("web", auto)],
        );
        assert!(!awaits_manual_promotion(&d, None));
        assert_eq!(DeployMonitor::new(8).finish(&d, None, NOW), None);
        let d = deployment(
            DeploymentStatus::Paused,
            descriptions::PAUSED,
            &[("web", canary_group(&["cccc3333-x"], false, 1))],
        );
        assert_eq!(DeployMonitor::new(8).finish(&d, None, NOW), None);
        // Two groups: one still short of healthy canaries holds the monitor.
        let d = deployment(
            DeploymentStatus::Running,
            descriptions::RUNNING_NEEDS_PROMOTION,
            &[
                ("api", canary_group(&["dddd4444-x"], false, 0)),
                ("web", canary_group(&["cccc3333-x"], false, 1)),
            ],
        );
        assert!(!awaits_manual_promotion(&d, None));
    }

    #[test]
    fn status_only_changes_and_unhealthy_allocations() {
        let mut m = DeployMonitor::new(8);
        let d = deployment(
            DeploymentStatus::Running,
            descriptions::RUNNING,
            &[("web", group(1, 1, 0, 0))],
        );
        let a = [alloc("aaaa1111-x", 10, false, None)];
        m.update(&d, Some(&a), NOW);
        let d = deployment(
            DeploymentStatus::Paused,
            descriptions::PAUSED,
            &[("web", group(1, 1, 0, 1))],
        );
        let a = [alloc("aaaa1111-x", 10, false, Some(false))];
        assert_eq!(
            m.update(&d, Some(&a), NOW),
            lines(&[
                "Allocation \"aaaa1111\" of group \"web\" is unhealthy",
                "Task group \"web\": 1/1 placed, 0 healthy, 1 unhealthy",
                "Deployment \"0f2a5b1e\" status \"running\" -> \"paused\": Deployment is paused",
            ])
        );
    }
}
