//! Rollouts simulated end to end over random jobs and version changes: reconcile, apply the
//! plan, let clients report the new allocations' health, run the deployment watcher (and
//! sometimes the user's promotion), let time pass; repeat. Throughout:
//!
//! 1. a group never has more allocations desired to run than `count + canary`;
//! 2. once the first version was healthy, a rollout never takes away more than `max_parallel`
//!    of the serving allocations it started with (at most `count`, canaries not included): a
//!    serving allocation runs, was found healthy and not unhealthy since (an in-place update
//!    asks its health again, it keeps serving meanwhile);
//! 3. every plan is idempotent ([`World::apply_and_settle`]);
//! 4. in the end the job settles: a deployment of a good version succeeds; one of a bad version
//!    fails, and with `auto_revert` the stable version comes back and succeeds.

use super::fixtures::*;
use crate::deployment;
use caravan_schemas::alloc::{ClientStatus, DesiredStatus};
use caravan_schemas::deployment::DeploymentStatus;
use caravan_schemas::job::{Job, UpdateStrategy};
use caravan_schemas::{AllocId, Duration};
use proptest::prelude::*;
use std::collections::BTreeSet;

/// A new job version.
#[derive(Clone, Debug)]
enum Change {
    /// A new image (destructive); a bad one never turns healthy.
    Image { bad: bool },
    /// A new count (in place, plus placements or stops).
    Count(i32),
    /// A new image and a new count.
    ImageAndCount { bad: bool, count: i32 },
    /// Group metadata (in place).
    Meta,
}

#[derive(Clone, Debug)]
struct Spec {
    count: i32,
    max_parallel: i32,
    canary: i32,
    auto_promote: bool,
    auto_revert: bool,
    progress_deadline: bool,
    changes: Vec<Change>,
    seed: u64,
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        4 => any::<bool>().prop_map(|b| Change::Image { bad: b }),
        2 => (1..6i32).prop_map(Change::Count),
        2 => (any::<bool>(), 1..6i32).prop_map(|(bad, count)| Change::ImageAndCount { bad, count }),
        1 => Just(Change::Meta),
    ]
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        1..6i32,
        1..4i32,
        prop_oneof![2 => Just(0i32), 1 => 1..3i32],
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec(change(), 1..4),
        any::<u64>(),
    )
        .prop_map(
            |(
                count,
                max_parallel,
                canary,
                auto_promote,
                auto_revert,
                progress_deadline,
                changes,
                seed,
            )| {
                Spec {
                    count,
                    max_parallel,
                    canary,
                    auto_promote,
                    auto_revert,
                    progress_deadline,
                    changes,
                    seed,
                }
            },
        )
}

/// splitmix64: the clients' and the user's choices, from the case's seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// True with probability `n / d`.
    fn chance(&mut self, n: u64, d: u64) -> bool {
        self.next() % d < n
    }
}

fn first_version(spec: &Spec) -> Job {
    let mut job = service(spec.count);
    let update = UpdateStrategy {
        max_parallel: spec.max_parallel,
        canary: spec.canary,
        auto_promote: spec.auto_promote,
        auto_revert: spec.auto_revert,
        progress_deadline: if spec.progress_deadline {
            Duration::from_mins(10)
        } else {
            Duration::ZERO
        },
        ..caravan_schemas::canonical::update_strategy()
    };
    job.update = Some(update.clone());
    web(&mut job).update = Some(update);
    job
}

fn image(job: &Job) -> String {
    job.task_groups[0].tasks[0]
        .config
        .get("image")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned()
}

fn apply_change(job: &Job, change: &Change) -> Job {
    let n = job.version + 1;
    next_version(job, |j| match change {
        Change::Image { bad } => set_image(j, *bad, n),
        Change::Count(count) => web(j).count = *count,
        Change::ImageAndCount { bad, count } => {
            set_image(j, *bad, n);
            web(j).count = *count;
        }
        Change::Meta => {
            web(j).meta.insert("rev".into(), n.to_string());
        }
    })
}

fn set_image(job: &mut Job, bad: bool, n: u64) {
    let image = if bad {
        format!("redis:bad-{n}")
    } else {
        format!("redis:{n}")
    };
    app(job).config.insert("image".into(), image.into());
}

struct Sim {
    world: World,
    rng: Rng,
    max_parallel: usize,
    canary: usize,
    /// Allocations a client ever found healthy.
    ever_healthy: BTreeSet<AllocId>,
    /// The first version was healthy: capacity is watched from then on.
    watching: bool,
    /// The serving allocations when the version rolling out was registered (at most its
    /// count).
    baseline: usize,
}

impl Sim {
    fn count(&self) -> usize {
        self.world
            .job
            .as_ref()
            .map_or(0, |j| usize::try_from(j.task_groups[0].count).unwrap_or(0))
    }

    fn desired_running(&self) -> usize {
        self.world
            .allocs
            .iter()
            .filter(|a| a.desired_status == DesiredStatus::Run && !a.client_terminal_status())
            .count()
    }

    /// Serving allocations; `canaries`: counting canaries awaiting promotion too.
    fn serving(&self, canaries: bool) -> usize {
        self.world
            .allocs
            .iter()
            .filter(|a| {
                a.desired_status == DesiredStatus::Run
                    && a.client_status == ClientStatus::Running
                    && !a.is_unhealthy()
                    && (a.is_healthy() || self.ever_healthy.contains(&a.id))
                    && (canaries || !a.is_canary())
            })
            .count()
    }

    /// A new version was registered (by the user or by auto-revert). Canaries are capacity
    /// beyond the count, which a newer version stops when they were not promoted.
    fn registered(&mut self) {
        self.baseline = self.serving(false).min(self.count());
    }

    /// One round of every loop. `promote`: the user promotes when asked to.
    fn step(&mut self, promote: bool) -> Result<(), TestCaseError> {
        let plan = self.world.reconcile();
        self.world.apply_and_settle(&plan);

        // 1. Never more than count + canary desired to run.
        let running = self.desired_running();
        prop_assert!(
            running <= self.count() + self.canary,
            "{running} desired to run > {} + {}: {plan:#?}",
            self.count(),
            self.canary
        );
        // 2. Capacity during the rollout.
        if self.watching {
            let serving = self.serving(true);
            prop_assert!(
                serving + self.max_parallel >= self.baseline,
                "{serving} serving, started from {}, max_parallel {}: {plan:#?}\n{:#?}",
                self.baseline,
                self.max_parallel,
                self.world.deployment()
            );
        }

        // Clients report on what they run: most new allocations turn healthy, those of a bad
        // image unhealthy; some take longer.
        for id in self.world.unproven() {
            let bad = {
                let a = self.world.find(&id);
                a.job.as_deref().is_some_and(|j| image(j).contains("bad"))
            };
            if self.rng.chance(1, 5) {
                continue;
            }
            if bad {
                self.world.make_unhealthy(std::slice::from_ref(&id));
            } else {
                self.world.make_healthy(std::slice::from_ref(&id));
                self.ever_healthy.insert(id);
            }
        }

        let version = self.world.job.as_ref().map(|j| j.version);
        let out = self.world.watch();
        if self.world.job.as_ref().map(|j| j.version) != version {
            self.registered();
        }
        if out.stable_version.is_some() {
            self.watching = true;
        }
        if promote
            && self
                .world
                .deployment()
                .is_some_and(|d| d.requires_promotion() && !d.has_auto_promote())
            && self.rng.chance(1, 2)
        {
            let d = self.world.deployment().cloned().expect("a deployment");
            if let Ok(done) = deployment::promote(&d, &self.world.allocs, None, self.world.now) {
                self.world.apply_watch(&deployment::WatchOutcome {
                    deployment: Some(done.deployment),
                    promoted_canaries: done.promoted_canaries,
                    ..Default::default()
                });
            }
        }
        self.world.now += MIN;
        Ok(())
    }

    /// The rollout is over: nothing to do, no deployment running.
    fn settled(&self) -> bool {
        let plan = self.world.reconcile();
        plan.is_empty()
            && !plan.changes_deployments()
            && self.world.deployment().is_none_or(|d| !d.active())
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn rollouts_keep_within_bounds_and_settle(spec in spec()) {
        let job = first_version(&spec);
        let mut sim = Sim {
            world: World::new(Some(job), vec![], nodes(&[])),
            rng: Rng(spec.seed),
            max_parallel: usize::try_from(spec.max_parallel).unwrap_or(0),
            canary: usize::try_from(spec.canary).unwrap_or(0),
            ever_healthy: BTreeSet::new(),
            watching: false,
            baseline: 0,
        };
        sim.registered();
        for _ in 0..40 {
            sim.step(true)?;
            if sim.settled() {
                break;
            }
        }
        prop_assert!(sim.watching, "the first version never turned healthy: {:#?}", sim.world.deployment());

        for change in &spec.changes {
            let next = apply_change(sim.world.job.as_ref().expect("a job"), change);
            sim.world.register(next);
            sim.registered();
            // The next change may come before this rollout is over.
            let rounds = sim.rng.next() % 12;
            for _ in 0..rounds {
                sim.step(true)?;
            }
        }

        // Then the user waits (and promotes) until it is over.
        for _ in 0..60 {
            if sim.settled() {
                break;
            }
            sim.step(true)?;
        }
        prop_assert!(sim.settled(), "did not settle: {:#?}\n{:#?}", sim.world.deployment(), sim.world.reconcile());

        let job = sim.world.job.clone().expect("a job");
        let last = sim.world.deployment().expect("a deployment").clone();
        let bad = image(&job).contains("bad");
        if bad {
            // A bad version fails its deployment, and auto-revert would have moved on.
            prop_assert!(!spec.auto_revert, "a bad version stayed despite auto_revert: {last:#?}");
            prop_assert_eq!(last.status, DeploymentStatus::Failed);
        } else {
            // A good version (possibly restored by auto-revert) is fully rolled out.
            prop_assert_eq!(last.status, DeploymentStatus::Successful, "{:#?}", last);
            prop_assert_eq!(last.job_version, job.version);
            let live: Vec<_> = sim.world.allocs.iter().filter(|a| !a.is_terminal()).collect();
            prop_assert_eq!(live.len(), sim.count());
            for a in live {
                prop_assert!(a.job.as_deref().is_some_and(|j| j.version == job.version), "{} outdated", a.id);
                prop_assert!(a.is_healthy() && !a.is_canary(), "{} not healthy or still a canary", a.id);
            }
        }
    }
}
