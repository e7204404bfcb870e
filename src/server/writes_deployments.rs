//! Deployment writes: what users ask of a deployment (promote, fail, pause, resume, set
//! allocations' health), a job's revert and stability, and the change the deployment watcher
//! decides. The decisions are `caravan_controllers::deployment`'s; this is the I/O around them.
//!
//! Every change is one transaction guarded by the revisions it was computed from: the
//! deployment, each allocation it touches, and the job when it marks a version stable or
//! reverts to one. Losing a race recomputes from fresh state.

use super::Server;
use super::cache::decode;
use super::objects::{Index, JobVersion, Kind, Object, job_index};
use super::writes::{Registered, WriteError, new_eval, now_nanos};
use crate::store::{Compare, Op, Txn};
use caravan_controllers::deployment::{self as pure, DeploymentError};
use caravan_schemas::alloc::Allocation;
use caravan_schemas::deployment::Deployment;
use caravan_schemas::eval::TriggeredBy;
use caravan_schemas::ids::{AllocId, EvalId, JobId, Namespace};
use caravan_schemas::job::Job;
use std::sync::Arc;
use std::time::Duration;

/// How often a write is recomputed after losing a race before giving up.
const MAX_ATTEMPTS: usize = 16;
/// How long a write waits for the cache to show it (or the state that beat it).
const SETTLE: Duration = Duration::from_secs(5);

/// A change to one deployment and what goes with it, written in one transaction.
#[derive(Debug, Default)]
pub struct DeploymentChange {
    /// The deployment as it should be; guarded by its `modify_index` (as read).
    pub deployment: Option<Deployment>,
    /// Allocations as they should be; each guarded by its `modify_index` (as read).
    pub allocs: Vec<Allocation>,
    /// Mark this job version stable (the deployment succeeded).
    pub stable_version: Option<u64>,
    /// Register this job version's spec again as a new version (auto-revert).
    pub revert_to: Option<u64>,
    /// Create an evaluation for the job (a user's action, as Nomad answers one).
    pub eval: bool,
}

impl DeploymentChange {
    fn is_empty(&self) -> bool {
        self.deployment.is_none()
            && self.allocs.is_empty()
            && self.stable_version.is_none()
            && self.revert_to.is_none()
    }
}

/// What a deployment write answers (Nomad's `DeploymentUpdateResponse`).
#[derive(Clone, Debug, Default, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeploymentUpdated {
    #[serde(rename = "EvalID")]
    pub eval_id: EvalId,
    pub eval_create_index: i64,
    pub deployment_modify_index: i64,
    pub reverted_job_version: Option<u64>,
    pub index: i64,
}

/// What a user asks of a deployment.
#[derive(Clone, Debug)]
pub enum DeploymentAction {
    /// Promote the canaries of these groups (`None`: all).
    Promote(Option<Vec<String>>),
    Fail,
    /// Pause (`true`) or resume (`false`).
    Pause(bool),
    /// Allocations' health set by hand.
    SetHealth {
        healthy: Vec<AllocId>,
        unhealthy: Vec<AllocId>,
    },
}

impl From<DeploymentError> for WriteError {
    fn from(e: DeploymentError) -> Self {
        WriteError::Invalid(e.to_string())
    }
}

impl Server {
    /// A job's newest deployment (any status), from the cache.
    pub fn latest_deployment(&self, namespace: &str, job: &str) -> Option<Arc<Deployment>> {
        self.cache
            .deployments
            .snapshot()
            .by(Index::ByJob, &job_index(namespace, job))
            .max_by_key(|d| recency(d))
            .cloned()
    }

    /// A job's stored versions, oldest first, from the cache.
    pub fn job_versions(&self, namespace: &str, job: &str) -> Vec<Job> {
        let prefix = self.keys.job_versions(namespace, job);
        self.cache
            .job_versions
            .snapshot()
            .objects
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| v.0.clone())
            .collect()
    }

    /// A job's allocations, from the cache.
    fn job_allocs(&self, namespace: &str, job: &str) -> Vec<Allocation> {
        self.cache
            .allocs
            .snapshot()
            .by(Index::ByJob, &job_index(namespace, job))
            .map(|a| (**a).clone())
            .collect()
    }

    /// Promotes, fails, pauses or resumes a deployment, or sets its allocations' health
    /// (`POST /v1/deployment/{promote,fail,pause,allocation-health}/:id`).
    pub async fn deployment_action(
        &self,
        namespace: &str,
        id: &str,
        action: DeploymentAction,
    ) -> Result<DeploymentUpdated, WriteError> {
        for _ in 0..MAX_ATTEMPTS {
            let now = now_nanos();
            let Some(d) =
                self.cache
                    .deployments
                    .get(&self.keys.key(Kind::Deployment, namespace, id))
            else {
                return Err(WriteError::NotFound(format!("deployment {id:?} not found")));
            };
            let allocs = self.job_allocs(namespace, d.job_id.as_str());
            let by_id = |ids: &[AllocId]| -> Vec<Allocation> {
                allocs
                    .iter()
                    .filter(|a| ids.contains(&a.id))
                    .cloned()
                    .collect()
            };
            let job = || {
                self.cache
                    .jobs
                    .get(&self.keys.key(Kind::Job, namespace, d.job_id.as_str()))
                    .ok_or_else(|| WriteError::NotFound("job not found".into()))
            };
            let mut change = DeploymentChange {
                eval: true,
                ..DeploymentChange::default()
            };
            match &action {
                DeploymentAction::Promote(groups) => {
                    let p = pure::promote(&d, &allocs, groups.as_deref(), now)?;
                    change.allocs = by_id(&p.promoted_canaries)
                        .into_iter()
                        .map(|mut a| {
                            if let Some(s) = a.deployment_status.as_mut() {
                                s.canary = false;
                            }
                            a
                        })
                        .collect();
                    change.deployment = Some(p.deployment);
                }
                DeploymentAction::Fail => {
                    let job = job()?;
                    let versions = self.job_versions(namespace, job.id.as_str());
                    let f = pure::fail(&d, &job, &versions, now)?;
                    change.deployment = Some(f.deployment);
                    change.revert_to = f.revert_to;
                }
                DeploymentAction::Pause(pause) => {
                    change.deployment = Some(pure::pause(&d, *pause, now)?);
                }
                DeploymentAction::SetHealth { healthy, unhealthy } => {
                    let job = job()?;
                    let versions = self.job_versions(namespace, job.id.as_str());
                    let h = pure::set_alloc_health(
                        &d, &job, &versions, &allocs, healthy, unhealthy, now,
                    )?;
                    for (alloc_id, status) in h.allocs {
                        if let Some(mut a) = allocs.iter().find(|a| a.id == alloc_id).cloned() {
                            a.deployment_status = Some(status);
                            a.modify_time = now;
                            change.allocs.push(a);
                        }
                    }
                    change.deployment = Some(h.deployment);
                    change.revert_to = h.revert_to;
                }
            }
            match self.write_deployment_change(change, None).await? {
                Some(done) => return Ok(done),
                None => continue,
            }
        }
        Err(WriteError::Conflict(format!(
            "deployment {id:?} kept changing; try again"
        )))
    }

    /// Writes a deployment change in one transaction, fenced by `fence` when given (the
    /// watcher writes only while leading). `None`: something it was computed from changed
    /// meanwhile (the cache has caught up with the store when this returns).
    pub async fn write_deployment_change(
        &self,
        change: DeploymentChange,
        fence: Option<Compare>,
    ) -> Result<Option<DeploymentUpdated>, WriteError> {
        if change.is_empty() && !change.eval {
            return Ok(Some(DeploymentUpdated::default()));
        }
        let now = now_nanos();
        let mut compares: Vec<Compare> = fence.into_iter().collect();
        let mut ops = Vec::new();
        let mut reply = DeploymentUpdated::default();
        let d = change.deployment.as_ref();
        if let Some(d) = d {
            compares.push(Compare::unchanged(d.key(&self.keys), d.modify_index));
            ops.push(Op::put(d.key(&self.keys), json(d)?));
        }
        for a in &change.allocs {
            compares.push(Compare::unchanged(a.key(&self.keys), a.modify_index));
            ops.push(Op::put(a.key(&self.keys), json(a)?));
        }
        let job_ref = d.map(|d| (d.namespace.clone(), d.job_id.clone()));
        let needs_job =
            change.stable_version.is_some() || change.revert_to.is_some() || change.eval;
        if let (true, Some((ns, job_id))) = (needs_job, &job_ref) {
            let (key, existing) = self.read_job(ns.as_str(), job_id.as_str()).await?;
            let Some((mut job, rev)) = existing else {
                return Err(WriteError::NotFound("job not found".into()));
            };
            compares.push(Compare::unchanged(key, rev));
            if let Some(v) = change.stable_version {
                ops.extend(self.stability_ops(&mut job, v, true).await?);
            }
            if let Some(v) = change.revert_to {
                let target = self.stored_version(ns, job_id, v).await?;
                let next = reverted(&job, &target, now);
                ops.extend(self.new_version_ops(&next)?);
                let eval = new_eval(&next, TriggeredBy::JobRegister, now);
                ops.push(Op::put(eval.key(&self.keys), json(&eval)?));
                reply.reverted_job_version = Some(v);
                job = next;
            }
            if change.eval {
                let mut eval = new_eval(&job, TriggeredBy::DeploymentWatcher, now);
                if let Some(d) = d {
                    eval.deployment_id = d.id.clone();
                }
                reply.eval_id = eval.id.clone();
                ops.push(Op::put(eval.key(&self.keys), json(&eval)?));
            }
        }
        let resp = self
            .store
            .txn(Txn::new().when(compares).and_then(ops))
            .await?;
        self.cache.wait_for(resp.revision, SETTLE).await;
        if !resp.succeeded {
            return Ok(None);
        }
        reply.index = resp.revision;
        reply.deployment_modify_index = resp.revision;
        if !reply.eval_id.is_empty() {
            reply.eval_create_index = resp.revision;
        }
        Ok(Some(reply))
    }

    /// One stored version of a job, from the store.
    async fn stored_version(
        &self,
        namespace: &Namespace,
        id: &JobId,
        version: u64,
    ) -> Result<Job, WriteError> {
        let key = self
            .keys
            .job_version(namespace.as_str(), id.as_str(), version);
        self.store
            .get(&key)
            .await?
            .and_then(|kv| decode::<JobVersion>(&kv))
            .map(|v| v.0)
            .ok_or_else(|| {
                WriteError::NotFound(format!(
                    "job {:?} in namespace {:?} at version {version} not found",
                    id.as_str(),
                    namespace.as_str()
                ))
            })
    }

    /// Marks a version stable or not: its record, and the job when it is the current version.
    async fn stability_ops(
        &self,
        job: &mut Job,
        version: u64,
        stable: bool,
    ) -> Result<Vec<Op>, WriteError> {
        let mut record = self
            .stored_version(&job.namespace, &job.id, version)
            .await?;
        record.stable = stable;
        let mut ops = vec![Op::put(
            JobVersion(record.clone()).key(&self.keys),
            json(&record)?,
        )];
        if job.version == version {
            job.stable = stable;
            ops.push(Op::put(job.key(&self.keys), json(&*job)?));
        }
        Ok(ops)
    }

    /// Registers an earlier version's spec again as a new version (`POST /v1/job/:id/revert`).
    pub async fn revert_job(
        &self,
        namespace: &Namespace,
        id: &JobId,
        version: u64,
        enforce_prior_version: Option<u64>,
    ) -> Result<Registered, WriteError> {
        let (_, existing) = self.read_job(namespace.as_str(), id.as_str()).await?;
        let Some((current, _)) = existing else {
            return Err(WriteError::NotFound("job not found".into()));
        };
        if let Some(prior) = enforce_prior_version
            && prior != current.version
        {
            return Err(WriteError::Conflict(format!(
                "current job has version {}; enforcing version {prior}",
                current.version
            )));
        }
        if version == current.version {
            return Err(WriteError::Invalid(format!(
                "can't revert to current version {version}"
            )));
        }
        let target = self.stored_version(namespace, id, version).await?;
        self.register_job(super::writes::Register {
            job: target,
            enforce_index: true,
            job_modify_index: current.job_modify_index,
            preserve_counts: false,
        })
        .await
    }

    /// Marks a job version stable or unstable (`POST /v1/job/:id/stable`).
    pub async fn set_job_stability(
        &self,
        namespace: &Namespace,
        id: &JobId,
        version: u64,
        stable: bool,
    ) -> Result<i64, WriteError> {
        for _ in 0..MAX_ATTEMPTS {
            let (key, existing) = self.read_job(namespace.as_str(), id.as_str()).await?;
            let Some((mut job, rev)) = existing else {
                return Err(WriteError::NotFound("job not found".into()));
            };
            let ops = self.stability_ops(&mut job, version, stable).await?;
            let txn = Txn::new()
                .when([Compare::unchanged(key, rev)])
                .and_then(ops);
            let resp = self.store.txn(txn).await?;
            if resp.succeeded {
                self.cache.wait_for(resp.revision, SETTLE).await;
                return Ok(resp.revision);
            }
        }
        Err(WriteError::Conflict(format!(
            "job {:?} kept changing; try again",
            id.as_str()
        )))
    }
}

/// How a job's deployments order, newest last: by creation, then version.
pub fn recency(d: &Deployment) -> (i64, u64) {
    (d.create_index, d.job_version)
}

/// The job that reverting `current` to `target`'s spec registers: `target`'s spec as the next
/// version, unstable, submitted now.
fn reverted(current: &Job, target: &Job, now: i64) -> Job {
    Job {
        version: current.version + 1,
        status: current.status.clone(),
        stable: false,
        job_modify_index: 0,
        submit_time: now,
        create_index: current.create_index,
        modify_index: current.modify_index,
        ..target.clone()
    }
}

fn json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, WriteError> {
    serde_json::to_vec(value).map_err(|e| WriteError::Invalid(format!("encoding: {e}")))
}
