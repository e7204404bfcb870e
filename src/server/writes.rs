//! The write side: every change a user or an agent asks for becomes one store transaction,
//! guarded by the revisions it was computed from, and retried from fresh state on conflict.

use super::Server;
use super::cache::decode;
use super::objects::{JobVersion, Kind, Object};
use crate::store::{Compare, Op, StoreError, Txn};
use caravan_schemas::eval::{EvalStatus, Evaluation, TriggeredBy};
use caravan_schemas::ids::{EvalId, JobId, Namespace};
use caravan_schemas::job::Job;
use std::time::Duration;

/// How many versions of a job are kept (Nomad's `JobTrackedVersions`).
pub const TRACKED_VERSIONS: u64 = 6;
/// How often a write is recomputed after losing a race before giving up.
const MAX_ATTEMPTS: usize = 16;
/// How long a write waits for the cache to show it before answering.
const READ_YOUR_WRITES: Duration = Duration::from_secs(5);

/// Why a write was refused.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// Unix nanoseconds now.
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// What `POST /v1/jobs` asks for.
#[derive(Debug, Default)]
pub struct Register {
    pub job: Job,
    pub enforce_index: bool,
    pub job_modify_index: i64,
    pub preserve_counts: bool,
}

/// What a register or deregister did.
#[derive(Debug, Clone, Default)]
pub struct Registered {
    pub eval_id: EvalId,
    pub eval_create_index: i64,
    pub job_modify_index: i64,
    pub index: i64,
    pub warnings: String,
}

/// The fields the servers own; two jobs whose other fields match are the same spec.
pub fn spec_of(job: &Job) -> Job {
    Job {
        status: String::new(),
        status_description: String::new(),
        stable: false,
        version: 0,
        submit_time: 0,
        create_index: 0,
        modify_index: 0,
        job_modify_index: 0,
        ..job.clone()
    }
}

/// A new evaluation for a job.
pub fn new_eval(job: &Job, trigger: TriggeredBy, now: i64) -> Evaluation {
    Evaluation {
        id: EvalId::random(),
        namespace: job.namespace.clone(),
        priority: job.priority,
        kind: job.r#type.as_str().to_owned(),
        triggered_by: trigger,
        job_id: job.id.clone(),
        status: EvalStatus::Pending,
        create_time: now,
        modify_time: now,
        ..Evaluation::default()
    }
}

fn json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, WriteError> {
    serde_json::to_vec(value).map_err(|e| WriteError::Invalid(format!("encoding: {e}")))
}

impl Server {
    /// Writing a new version of a job: the job, its version record, and dropping the version
    /// that falls out of the tracked history.
    pub(super) fn new_version_ops(&self, next: &Job) -> Result<Vec<Op>, WriteError> {
        let mut ops = vec![
            Op::put(next.key(&self.keys), json(next)?),
            Op::put(JobVersion(next.clone()).key(&self.keys), json(next)?),
        ];
        if next.version >= TRACKED_VERSIONS {
            ops.push(Op::delete(self.keys.job_version(
                next.namespace.as_str(),
                next.id.as_str(),
                next.version - TRACKED_VERSIONS,
            )));
        }
        Ok(ops)
    }

    pub(super) async fn read_job(
        &self,
        namespace: &str,
        id: &str,
    ) -> Result<(String, Option<(Job, i64)>), WriteError> {
        let key = self.keys.key(Kind::Job, namespace, id);
        let kv = self.store.get(&key).await?;
        Ok((
            key,
            kv.and_then(|kv| decode::<Job>(&kv).map(|j| (j, kv.mod_revision))),
        ))
    }

    /// Registers (creates or updates) a job: a new version when its spec changed, and an
    /// evaluation either way.
    pub async fn register_job(&self, req: Register) -> Result<Registered, WriteError> {
        let mut job = req.job;
        job.canonicalize();
        let problems = caravan_schemas::validate::job(&job);
        if !problems.is_empty() {
            let lines: Vec<String> = problems
                .into_iter()
                .map(|(p, m)| {
                    let path = caravan_schemas::jobspec::tree::display_path(&p);
                    if path.is_empty() {
                        m
                    } else {
                        format!("{path}: {m}")
                    }
                })
                .collect();
            return Err(WriteError::Invalid(format!(
                "Job validation failed: {}",
                lines.join("; ")
            )));
        }
        for _ in 0..MAX_ATTEMPTS {
            let now = now_nanos();
            let (key, existing) = self
                .read_job(job.namespace.as_str(), job.id.as_str())
                .await?;
            if req.enforce_index {
                match (&existing, req.job_modify_index) {
                    (Some(_), 0) => {
                        return Err(WriteError::Conflict(
                            "Enforcing job modify index 0: job already exists".into(),
                        ));
                    }
                    (Some((old, _)), n) if old.job_modify_index != n => {
                        return Err(WriteError::Conflict(format!(
                            "Enforcing job modify index {n}: job exists with conflicting job modify index: {}",
                            old.job_modify_index
                        )));
                    }
                    (None, n) if n != 0 => {
                        return Err(WriteError::Conflict(format!(
                            "Enforcing job modify index {n}: job not found"
                        )));
                    }
                    _ => {}
                }
            }
            let mut next = job.clone();
            if req.preserve_counts
                && let Some((old, _)) = &existing
            {
                for g in &mut next.task_groups {
                    if let Some(old_group) = old.group(&g.name) {
                        g.count = old_group.count;
                    }
                }
            }
            let changed = existing
                .as_ref()
                .is_none_or(|(old, _)| spec_of(old) != spec_of(&next));
            match &existing {
                Some((old, _)) if !changed => next = old.clone(),
                Some((old, _)) => {
                    next.version = old.version + 1;
                    next.status = old.status.clone();
                    next.job_modify_index = 0;
                    next.submit_time = now;
                }
                None => {
                    next.version = 0;
                    next.status = "pending".into();
                    next.job_modify_index = 0;
                    next.submit_time = now;
                }
            }
            let eval = new_eval(&next, TriggeredBy::JobRegister, now);
            let guard = match &existing {
                Some((_, rev)) => Compare::unchanged(key.clone(), *rev),
                None => Compare::absent(key.clone()),
            };
            let mut ops = if changed {
                self.new_version_ops(&next)?
            } else {
                vec![Op::put(key.clone(), json(&next)?)]
            };
            ops.push(Op::put(eval.key(&self.keys), json(&eval)?));
            let resp = self
                .store
                .txn(Txn::new().when([guard]).and_then(ops))
                .await?;
            if !resp.succeeded {
                continue;
            }
            self.cache.wait_for(resp.revision, READ_YOUR_WRITES).await;
            let job_modify_index = match &existing {
                Some((old, _)) if !changed => old.job_modify_index,
                _ => resp.revision,
            };
            return Ok(Registered {
                eval_id: eval.id,
                eval_create_index: resp.revision,
                job_modify_index,
                index: resp.revision,
                warnings: String::new(),
            });
        }
        Err(WriteError::Conflict(format!(
            "job {:?} kept changing while registering it; try again",
            job.id.as_str()
        )))
    }

    /// Stops a job (a new version with `Stop` set), or with `purge` removes it and its history.
    pub async fn deregister_job(
        &self,
        namespace: &Namespace,
        id: &JobId,
        purge: bool,
    ) -> Result<Registered, WriteError> {
        for _ in 0..MAX_ATTEMPTS {
            let now = now_nanos();
            let (key, existing) = self.read_job(namespace.as_str(), id.as_str()).await?;
            let Some((old, rev)) = existing else {
                return Err(WriteError::NotFound("job not found".into()));
            };
            let eval = new_eval(&old, TriggeredBy::JobDeregister, now);
            let mut ops = Vec::new();
            let mut next = old.clone();
            if purge {
                ops.push(Op::delete(key.clone()));
                ops.push(Op::delete_prefix(
                    self.keys.job_versions(namespace.as_str(), id.as_str()),
                ));
            } else if !old.stop {
                next.stop = true;
                next.version = old.version + 1;
                next.job_modify_index = 0;
                next.submit_time = now;
                ops.extend(self.new_version_ops(&next)?);
            }
            ops.push(Op::put(eval.key(&self.keys), json(&eval)?));
            let resp = self
                .store
                .txn(
                    Txn::new()
                        .when([Compare::unchanged(key, rev)])
                        .and_then(ops),
                )
                .await?;
            if !resp.succeeded {
                continue;
            }
            self.cache.wait_for(resp.revision, READ_YOUR_WRITES).await;
            let job_modify_index = if purge || old.stop {
                old.job_modify_index
            } else {
                resp.revision
            };
            return Ok(Registered {
                eval_id: eval.id,
                eval_create_index: resp.revision,
                job_modify_index,
                index: resp.revision,
                warnings: String::new(),
            });
        }
        Err(WriteError::Conflict(format!(
            "job {:?} kept changing while stopping it; try again",
            id.as_str()
        )))
    }
}

impl Server {
    /// Creates an evaluation for an existing job (`POST /v1/job/:id/evaluate`).
    pub async fn evaluate_job(
        &self,
        namespace: &Namespace,
        id: &JobId,
    ) -> Result<Registered, WriteError> {
        let (key, existing) = self.read_job(namespace.as_str(), id.as_str()).await?;
        let Some((job, rev)) = existing else {
            return Err(WriteError::NotFound("job not found".into()));
        };
        let eval = new_eval(&job, TriggeredBy::JobRegister, now_nanos());
        let txn = Txn::new()
            .when([Compare::unchanged(key, rev)])
            .and_then([Op::put(eval.key(&self.keys), json(&eval)?)]);
        let resp = self.store.txn(txn).await?;
        if !resp.succeeded {
            return Err(WriteError::Conflict(
                "the job changed meanwhile; try again".into(),
            ));
        }
        self.cache.wait_for(resp.revision, READ_YOUR_WRITES).await;
        Ok(Registered {
            eval_id: eval.id,
            eval_create_index: resp.revision,
            job_modify_index: job.job_modify_index,
            index: resp.revision,
            warnings: String::new(),
        })
    }

    /// Sets one group's count: a new version of the job (`POST /v1/job/:id/scale`).
    pub async fn scale_job(
        &self,
        namespace: &Namespace,
        id: &JobId,
        group: &str,
        count: i32,
    ) -> Result<Registered, WriteError> {
        if count < 0 {
            return Err(WriteError::Invalid(format!(
                "scaling count must not be negative, got {count}"
            )));
        }
        let (_, existing) = self.read_job(namespace.as_str(), id.as_str()).await?;
        let Some((mut job, _)) = existing else {
            return Err(WriteError::NotFound("job not found".into()));
        };
        if job.stop {
            return Err(WriteError::Invalid(
                "job is stopped; run it before scaling".into(),
            ));
        }
        let Some(g) = job.task_groups.iter_mut().find(|g| g.name == group) else {
            return Err(WriteError::Invalid(format!(
                "task group {group:?} specified for scaling does not exist in job"
            )));
        };
        if let Some(s) = &g.scaling
            && (i64::from(count) > s.max || s.min.is_some_and(|min| i64::from(count) < min))
        {
            return Err(WriteError::Invalid(format!(
                "group count {count} is outside its scaling policy (min {}, max {})",
                s.min.unwrap_or(0),
                s.max
            )));
        }
        g.count = count;
        let enforce = job.job_modify_index;
        self.register_job(Register {
            job,
            enforce_index: true,
            job_modify_index: enforce,
            preserve_counts: false,
        })
        .await
    }
}
