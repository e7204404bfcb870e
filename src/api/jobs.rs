//! `/v1/jobs`, `/v1/job/:id/…`, `/v1/validate/job`.

use super::{ApiError, Reply, Request};
use crate::server::Server;
use crate::server::cache::{Informer, Snapshot};
use crate::server::objects::{JobVersion, Kind, Object};
use crate::server::writes::{Register, Registered, WriteError};
use caravan_schemas::alloc::Allocation;
use caravan_schemas::eval::Evaluation;
use caravan_schemas::ids::{JobId, Namespace};
use caravan_schemas::job::{Job, JobSummary};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use warp::http::Method;

pub async fn route(server: &Server, req: &Request, segs: &[&str]) -> Result<Reply, ApiError> {
    match (&req.method, segs) {
        (&Method::GET, ["jobs"]) => list(server, req).await,
        (&Method::POST | &Method::PUT, ["jobs"]) => register(server, req, None).await,
        (&Method::POST | &Method::PUT, ["jobs", "parse"]) => parse(req),
        (&Method::POST | &Method::PUT, ["validate", "job"]) => validate(req),
        (&Method::GET, ["job", id]) => read(server, req, id).await,
        (&Method::POST | &Method::PUT, ["job", id]) => register(server, req, Some(id)).await,
        (&Method::DELETE, ["job", id]) => deregister(server, req, id).await,
        (&Method::GET, ["job", id, "versions"]) => versions(server, req, id).await,
        (&Method::GET, ["job", id, "allocations"]) => allocations(server, req, id).await,
        (&Method::GET, ["job", id, "evaluations"]) => evaluations(server, req, id).await,
        (&Method::GET, ["job", id, "summary"]) => summary(server, req, id).await,
        (&Method::POST | &Method::PUT, ["job", id, "plan"]) => plan(server, req, id).await,
        (&Method::POST | &Method::PUT, ["job", id, "evaluate"]) => evaluate(server, req, id).await,
        (&Method::POST | &Method::PUT, ["job", id, "scale"]) => scale(server, req, id).await,
        (&Method::GET, ["job", id, "scale"]) => scale_status(server, req, id).await,
        (&Method::POST | &Method::PUT, ["job", id, "revert"]) => revert(server, req, id).await,
        (&Method::POST | &Method::PUT, ["job", id, "stable"]) => stable(server, req, id).await,
        (&Method::GET, ["job", id, "deployments"]) => {
            super::deployments::for_job(server, req, id).await
        }
        (&Method::GET, ["job", id, "deployment"]) => {
            super::deployments::latest_for_job(server, req, id).await
        }
        (_, ["jobs"] | ["job", ..] | ["validate", ..] | ["jobs", "parse"]) => {
            Err(ApiError::MethodNotAllowed)
        }
        _ => Err(ApiError::NotFound(format!(
            "Invalid URL path /v1/{}",
            segs.join("/")
        ))),
    }
}

/// Answers a blocking query on one informer: waits (if asked) until it moves past `index`,
/// then returns its snapshot.
pub async fn watch<T: Object>(
    informer: &Informer<T>,
    req: &Request,
) -> Result<Arc<Snapshot<T>>, ApiError> {
    if let Some((index, wait)) = req.blocking()? {
        informer.wait_past(index, wait).await;
    }
    Ok(informer.snapshot())
}

fn job_key(server: &Server, req: &Request, id: &str) -> String {
    server.keys.key(Kind::Job, req.namespace(), id)
}

fn find_job(
    server: &Server,
    snap: &Snapshot<Job>,
    req: &Request,
    id: &str,
) -> Result<Arc<Job>, ApiError> {
    snap.objects
        .get(&job_key(server, req, id))
        .cloned()
        .ok_or_else(|| ApiError::NotFound("job not found".into()))
}

fn all_namespaces(req: &Request) -> bool {
    req.param("namespace") == Some("*")
}

/// The latest evaluation's unplaced allocations per group, for the summary's Queued column.
fn queued(server: &Server, job: &Job) -> BTreeMap<String, i32> {
    let evals = server.cache.evals.snapshot();
    evals
        .objects
        .values()
        .filter(|e| e.job_id == job.id && e.namespace == job.namespace)
        .max_by_key(|e| e.create_index)
        .map(|e| e.queued_allocations.clone())
        .unwrap_or_default()
}

fn job_allocs<'a>(
    allocs: &'a Snapshot<Allocation>,
    job: &'a Job,
) -> impl Iterator<Item = &'a Arc<Allocation>> + 'a {
    allocs
        .objects
        .values()
        .filter(move |a| a.job_id == job.id && a.namespace == job.namespace)
}

async fn list(server: &Server, req: &Request) -> Result<Reply, ApiError> {
    let jobs = watch(&server.cache.jobs, req).await?;
    let allocs = server.cache.allocs.snapshot();
    let prefix = req.param("prefix").unwrap_or("");
    let stubs: Vec<_> = jobs
        .objects
        .values()
        .filter(|j| all_namespaces(req) || j.namespace.as_str() == req.namespace())
        .filter(|j| j.id.as_str().starts_with(prefix))
        .map(|j| {
            let summary = JobSummary::compute(
                j,
                job_allocs(&allocs, j).map(AsRef::as_ref),
                &queued(server, j),
            );
            j.stub(Some(summary))
        })
        .collect();
    Reply::json(&stubs, jobs.index)
}

/// `{"Job": …, "EnforceIndex": …}` as Nomad's clients send it.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "PascalCase")]
struct RegisterRequest {
    job: Option<Job>,
    #[serde(default)]
    enforce_index: bool,
    #[serde(default)]
    job_modify_index: i64,
    #[serde(default)]
    preserve_counts: bool,
    #[serde(default)]
    #[allow(dead_code)]
    policy_override: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct RegisterResponse {
    #[serde(rename = "EvalID")]
    eval_id: String,
    eval_create_index: i64,
    job_modify_index: i64,
    warnings: String,
    index: i64,
    last_contact: i64,
    known_leader: bool,
}

impl From<Registered> for RegisterResponse {
    fn from(r: Registered) -> Self {
        RegisterResponse {
            eval_id: r.eval_id.to_string(),
            eval_create_index: r.eval_create_index,
            job_modify_index: r.job_modify_index,
            warnings: r.warnings,
            index: r.index,
            last_contact: 0,
            known_leader: true,
        }
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Invalid(m) => ApiError::BadRequest(m),
            WriteError::NotFound(m) => ApiError::NotFound(m),
            WriteError::Conflict(m) => ApiError::Conflict(m),
            WriteError::Store(e) => ApiError::Internal(format!("store: {e}")),
        }
    }
}

async fn register(
    server: &Server,
    req: &Request,
    path_id: Option<&str>,
) -> Result<Reply, ApiError> {
    let body: RegisterRequest = req.json()?;
    let mut job = body
        .job
        .ok_or_else(|| ApiError::BadRequest("Job must be specified".into()))?;
    if let Some(id) = path_id
        && job.id.as_str() != id
    {
        return Err(ApiError::BadRequest("Job ID does not match name".into()));
    }
    if job.namespace.is_empty() {
        job.namespace = Namespace::new(req.namespace());
    }
    let registered = server
        .register_job(Register {
            job,
            enforce_index: body.enforce_index,
            job_modify_index: body.job_modify_index,
            preserve_counts: body.preserve_counts,
        })
        .await?;
    let index = registered.index;
    Reply::json(&RegisterResponse::from(registered), index)
}

async fn deregister(server: &Server, req: &Request, id: &str) -> Result<Reply, ApiError> {
    let done = server
        .deregister_job(
            &Namespace::new(req.namespace()),
            &JobId::new(id),
            req.flag("purge"),
        )
        .await?;
    let index = done.index;
    Reply::json(&RegisterResponse::from(done), index)
}

async fn read(server: &Server, req: &Request, id: &str) -> Result<Reply, ApiError> {
    let jobs = watch(&server.cache.jobs, req).await?;
    let job = find_job(server, &jobs, req, id)?;
    Reply::json(job.as_ref(), job.modify_index)
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct VersionsResponse {
    versions: Vec<Job>,
    diffs: Option<Vec<caravan_schemas::plan::JobDiff>>,
}

async fn versions(server: &Server, req: &Request, id: &str) -> Result<Reply, ApiError> {
    let snap = watch(&server.cache.job_versions, req).await?;
    let prefix = server.keys.job_versions(req.namespace(), id);
    let mut versions: Vec<Job> = snap
        .objects
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(_, v): (&String, &Arc<JobVersion>)| v.0.clone())
        .collect();
    if versions.is_empty() {
        return Err(ApiError::NotFound("job not found".into()));
    }
    // Newest first, as Nomad lists them; the current job carries the live indexes.
    versions.reverse();
    if let Some(current) = server.cache.jobs.get(&job_key(server, req, id))
        && let Some(first) = versions.first_mut()
        && first.version == current.version
    {
        *first = (*current).clone();
    }
    // `?diffs=true`: each version against the one before it, newest first, as Nomad answers.
    let diffs = req.flag("diffs").then(|| {
        versions
            .windows(2)
            .map(|pair| caravan_schemas::plan::job_diff(Some(&pair[1]), &pair[0]))
            .collect()
    });
    Reply::json(&VersionsResponse { versions, diffs }, snap.index)
}

async fn allocations(server: &Server, req: &Request, id: &str) -> Result<Reply, ApiError> {
    let allocs = watch(&server.cache.allocs, req).await?;
    let ns = req.namespace();
    let stubs: Vec<_> = allocs
        .objects
        .values()
        .filter(|a| a.job_id.as_str() == id && a.namespace.as_str() == ns)
        .map(|a| a.stub())
        .collect();
    Reply::json(&stubs, allocs.index)
}

async fn evaluations(server: &Server, req: &Request, id: &str) -> Result<Reply, ApiError> {
    let evals = watch(&server.cache.evals, req).await?;
    let ns = req.namespace();
    let list: Vec<&Evaluation> = evals
        .objects
        .values()
        .filter(|e| e.job_id.as_str() == id && e.namespace.as_str() == ns)
        .map(AsRef::as_ref)
        .collect();
    Reply::json(&list, evals.index)
}

async fn summary(server: &Server, req: &Request, id: &str) -> Result<Reply, ApiError> {
    let allocs = watch(&server.cache.allocs, req).await?;
    let jobs = server.cache.jobs.snapshot();
    let job = find_job(server, &jobs, req, id)?;
    let summary = JobSummary::compute(
        &job,
        job_allocs(&allocs, &job).map(AsRef::as_ref),
        &queued(server, &job),
    );
    Reply::json(&summary, allocs.index.max(job.modify_index))
}

/// `POST /v1/jobs/parse`: `{"JobHCL": "...", "Canonicalize": true, "Variables": "k = v"}`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "PascalCase")]
struct ParseRequest {
    #[serde(rename = "JobHCL")]
    job_hcl: String,
    #[serde(default)]
    canonicalize: bool,
    #[serde(default)]
    variables: String,
}

fn parse(req: &Request) -> Result<Reply, ApiError> {
    let body: ParseRequest = req.json()?;
    let mut vars = caravan_schemas::jobspec::VariableInputs::default();
    if !body.variables.is_empty() {
        vars.files.push(caravan_schemas::jobspec::VarFile {
            name: "Variables".into(),
            content: body.variables,
        });
    }
    let job = caravan_schemas::jobspec::decode_job("JobHCL", &body.job_hcl, &vars)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    // Decoding always canonicalizes; Canonicalize=false is accepted for compatibility.
    let _ = body.canonicalize;
    Reply::json(&job, 0)
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "PascalCase")]
struct ValidateRequest {
    job: Option<Job>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ValidateResponse {
    driver_config_validated: bool,
    validation_errors: Vec<String>,
    error: String,
    warnings: String,
}

fn validate(req: &Request) -> Result<Reply, ApiError> {
    let body: ValidateRequest = req.json()?;
    let mut job = body
        .job
        .ok_or_else(|| ApiError::BadRequest("Job must be specified".into()))?;
    job.canonicalize();
    let errors: Vec<String> = caravan_schemas::validate::job(&job)
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
    let error = match errors.len() {
        0 => String::new(),
        1 => errors[0].clone(),
        n => format!("{n} errors occurred:\n\t* {}", errors.join("\n\t* ")),
    };
    Reply::json(
        &ValidateResponse {
            driver_config_validated: true,
            validation_errors: errors,
            error,
            warnings: String::new(),
        },
        0,
    )
}

/// `POST /v1/job/:id/plan`: what registering the job would do, without doing it.
async fn plan(server: &Server, req: &Request, id: &str) -> Result<Reply, ApiError> {
    let body: caravan_schemas::plan::JobPlanRequest = req.json()?;
    let mut job = body
        .job
        .ok_or_else(|| ApiError::BadRequest("Job must be specified".into()))?;
    if job.id.as_str() != id {
        return Err(ApiError::BadRequest("Job ID does not match".into()));
    }
    if job.namespace.is_empty() {
        job.namespace = Namespace::new(req.namespace());
    }
    job.canonicalize();
    let problems = caravan_schemas::validate::job(&job);
    if let Some((path, message)) = problems.first() {
        let path = caravan_schemas::jobspec::tree::display_path(path);
        return Err(ApiError::BadRequest(format!(
            "Job validation failed: {path}: {message}"
        )));
    }
    let current = server.cache.jobs.get(&job_key(server, req, id));
    let dry = crate::server::job_controller::dry_run(server, &job);
    let annotations = caravan_schemas::plan::PlanAnnotations {
        desired_tg_updates: dry.desired_tg_updates,
        preempted_allocs: Vec::new(),
    };
    let diff = body.diff.then(|| {
        let mut d = caravan_schemas::plan::job_diff(current.as_deref(), &job);
        caravan_schemas::plan::annotate(&mut d, &annotations);
        d
    });
    let response = caravan_schemas::plan::JobPlanResponse {
        job_modify_index: current.as_ref().map_or(0, |j| j.job_modify_index),
        diff,
        annotations: Some(annotations),
        failed_tg_allocs: dry.failed_tg_allocs,
        ..Default::default()
    };
    Reply::json(&response, server.cache.jobs.index())
}

async fn evaluate(server: &Server, req: &Request, id: &str) -> Result<Reply, ApiError> {
    let done = server
        .evaluate_job(&Namespace::new(req.namespace()), &JobId::new(id))
        .await?;
    let index = done.index;
    Reply::json(&RegisterResponse::from(done), index)
}

/// `{"Count": 3, "Target": {"Group": "web"}}`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "PascalCase")]
struct ScaleRequest {
    count: Option<i64>,
    #[serde(default)]
    target: BTreeMap<String, String>,
}

/// `POST /v1/job/:id/revert` (Nomad's `JobRevertRequest`).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "PascalCase")]
struct RevertRequest {
    #[serde(rename = "JobID", default)]
    job_id: String,
    job_version: u64,
    #[serde(default)]
    enforce_prior_version: Option<u64>,
}

async fn revert(server: &Server, req: &Request, id: &str) -> Result<Reply, ApiError> {
    let body: RevertRequest = req.json()?;
    if !body.job_id.is_empty() && body.job_id != id {
        return Err(ApiError::BadRequest("Job ID does not match".into()));
    }
    let done = server
        .revert_job(
            &Namespace::new(req.namespace()),
            &JobId::new(id),
            body.job_version,
            body.enforce_prior_version,
        )
        .await?;
    let index = done.index;
    Reply::json(&RegisterResponse::from(done), index)
}

/// `POST /v1/job/:id/stable` (Nomad's `JobStabilityRequest`).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "PascalCase")]
struct StableRequest {
    #[serde(rename = "JobID", default)]
    job_id: String,
    job_version: u64,
    stable: bool,
}

async fn stable(server: &Server, req: &Request, id: &str) -> Result<Reply, ApiError> {
    let body: StableRequest = req.json()?;
    if !body.job_id.is_empty() && body.job_id != id {
        return Err(ApiError::BadRequest("Job ID does not match".into()));
    }
    let index = server
        .set_job_stability(
            &Namespace::new(req.namespace()),
            &JobId::new(id),
            body.job_version,
            body.stable,
        )
        .await?;
    Reply::json(&serde_json::json!({ "Index": index }), index)
}

async fn scale(server: &Server, req: &Request, id: &str) -> Result<Reply, ApiError> {
    let body: ScaleRequest = req.json()?;
    let count = body
        .count
        .ok_or_else(|| ApiError::BadRequest("Count must be specified".into()))?;
    let count = i32::try_from(count)
        .map_err(|_| ApiError::BadRequest(format!("Count {count} is out of range")))?;
    let group = body
        .target
        .get("Group")
        .ok_or_else(|| ApiError::BadRequest("missing task group name for scaling action".into()))?;
    let done = server
        .scale_job(
            &Namespace::new(req.namespace()),
            &JobId::new(id),
            group,
            count,
        )
        .await?;
    let index = done.index;
    Reply::json(&RegisterResponse::from(done), index)
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct GroupScale {
    desired: i32,
    placed: i64,
    running: i64,
    healthy: i64,
    unhealthy: i64,
    events: Vec<serde_json::Value>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ScaleStatus {
    #[serde(rename = "JobID")]
    job_id: String,
    namespace: String,
    job_modify_index: i64,
    job_stopped: bool,
    task_groups: BTreeMap<String, GroupScale>,
}

async fn scale_status(server: &Server, req: &Request, id: &str) -> Result<Reply, ApiError> {
    let allocs = watch(&server.cache.allocs, req).await?;
    let jobs = server.cache.jobs.snapshot();
    let job = find_job(server, &jobs, req, id)?;
    let mut groups: BTreeMap<String, GroupScale> = job
        .task_groups
        .iter()
        .map(|g| {
            (
                g.name.clone(),
                GroupScale {
                    desired: g.count,
                    placed: 0,
                    running: 0,
                    healthy: 0,
                    unhealthy: 0,
                    events: Vec::new(),
                },
            )
        })
        .collect();
    for a in job_allocs(&allocs, &job) {
        if a.is_terminal() {
            continue;
        }
        if let Some(g) = groups.get_mut(&a.task_group) {
            g.placed += 1;
            if a.client_status == caravan_schemas::alloc::ClientStatus::Running {
                g.running += 1;
            }
            match a.deployment_status.as_ref().and_then(|d| d.healthy) {
                Some(true) => g.healthy += 1,
                Some(false) => g.unhealthy += 1,
                None => {}
            }
        }
    }
    let status = ScaleStatus {
        job_id: job.id.to_string(),
        namespace: job.namespace.to_string(),
        job_modify_index: job.job_modify_index,
        job_stopped: job.stop,
        task_groups: groups,
    };
    Reply::json(&status, allocs.index.max(job.modify_index))
}
