//! `/v1/deployments`, `/v1/deployment/:id`, `/v1/deployment/allocations/:id`, and a job's
//! deployments (`/v1/job/:id/deployments`, `/v1/job/:id/deployment`).

use super::allocations::stub_fields;
use super::jobs::watch;
use super::{ApiError, Reply, Request, block_on, find_by_prefix, not_found};
use crate::server::Server;
use crate::server::cache::Snapshot;
use crate::server::objects::Kind;
use crate::server::writes_deployments::{DeploymentAction, recency};
use caravan_schemas::AllocId;
use caravan_schemas::deployment::Deployment;
use serde::Deserialize;
use std::sync::Arc;
use warp::http::Method;

pub async fn route(server: &Server, req: &Request, segs: &[&str]) -> Result<Reply, ApiError> {
    match (&req.method, segs) {
        (&Method::GET, ["deployments"]) => list(server, req).await,
        (&Method::GET, ["deployment", "allocations", id]) => allocations(server, req, id).await,
        (&Method::GET, ["deployment", id]) => read(server, req, id).await,
        (&Method::POST | &Method::PUT, ["deployment", verb, id]) => {
            act(server, req, verb, id).await
        }
        (_, ["deployments"] | ["deployment", _] | ["deployment", _, _]) => {
            Err(ApiError::MethodNotAllowed)
        }
        _ => Err(not_found(segs)),
    }
}

/// One deployment by ID or unique prefix, in any namespace.
fn find(
    server: &Server,
    snap: &Snapshot<Deployment>,
    req: &Request,
    id: &str,
) -> Result<Arc<Deployment>, ApiError> {
    if let Some(d) = snap
        .objects
        .get(&server.keys.key(Kind::Deployment, req.namespace(), id))
    {
        return Ok(Arc::clone(d));
    }
    find_by_prefix(
        snap.objects.values(),
        |d: &Deployment| d.id.as_str(),
        id,
        "deployment",
        "deployments",
    )
}

async fn list(server: &Server, req: &Request) -> Result<Reply, ApiError> {
    let deployments = watch(&server.cache.deployments, req).await?;
    let prefix = req.prefix();
    let list: Vec<&Deployment> = deployments
        .objects
        .values()
        .filter(|d| req.in_namespace(d.namespace.as_str()) && d.id.as_str().starts_with(prefix))
        .map(AsRef::as_ref)
        .collect();
    Reply::json(&list, deployments.index)
}

async fn read(server: &Server, req: &Request, id: &str) -> Result<Reply, ApiError> {
    let (snap, _) = block_on(&server.cache.deployments, req, |snap| {
        match find(server, snap, req, id) {
            Ok(d) => d.modify_index,
            Err(_) => snap.index,
        }
    })
    .await?;
    let deployment = find(server, &snap, req, id)?;
    Reply::json(deployment.as_ref(), deployment.modify_index)
}

async fn allocations(server: &Server, req: &Request, id: &str) -> Result<Reply, ApiError> {
    let allocs = watch(&server.cache.allocs, req).await?;
    let fields = stub_fields(req);
    let stubs: Vec<_> = allocs
        .objects
        .values()
        .filter(|a| a.deployment_id.as_str() == id)
        .map(|a| a.stub_with(fields))
        .collect();
    Reply::json(&stubs, allocs.index)
}

/// A job's deployments, newest first.
fn job_deployments<'a>(
    snap: &'a Snapshot<Deployment>,
    req: &Request,
    job: &str,
) -> Vec<&'a Deployment> {
    let ns = req.namespace();
    let mut list: Vec<&Deployment> = snap
        .objects
        .values()
        .filter(|d| d.job_id.as_str() == job && d.namespace.as_str() == ns)
        .map(AsRef::as_ref)
        .collect();
    list.sort_by_key(|d| std::cmp::Reverse(recency(d)));
    list
}

/// `GET /v1/job/:id/deployments`.
pub async fn for_job(server: &Server, req: &Request, job: &str) -> Result<Reply, ApiError> {
    let snap = watch(&server.cache.deployments, req).await?;
    Reply::json(&job_deployments(&snap, req, job), snap.index)
}

/// `GET /v1/job/:id/deployment`: the latest deployment, or `null`.
pub async fn latest_for_job(server: &Server, req: &Request, job: &str) -> Result<Reply, ApiError> {
    let (snap, index) = block_on(&server.cache.deployments, req, |snap| {
        job_deployments(snap, req, job)
            .first()
            .map_or(snap.index, |d| d.modify_index)
    })
    .await?;
    let latest = job_deployments(&snap, req, job).first().copied();
    Reply::json(&latest, index)
}

/// The body of the deployment writes (Nomad's `DeploymentPromoteRequest`,
/// `DeploymentPauseRequest`, `DeploymentAllocHealthRequest`, `DeploymentFailRequest`).
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
struct ActionRequest {
    #[serde(rename = "DeploymentID")]
    deployment_id: String,
    all: bool,
    groups: Option<Vec<String>>,
    pause: bool,
    #[serde(rename = "HealthyAllocationIDs")]
    healthy_allocation_ids: Option<Vec<String>>,
    #[serde(rename = "UnhealthyAllocationIDs")]
    unhealthy_allocation_ids: Option<Vec<String>>,
}

/// `POST /v1/deployment/{promote,fail,pause,allocation-health}/:id`.
async fn act(server: &Server, req: &Request, verb: &str, id: &str) -> Result<Reply, ApiError> {
    let body: ActionRequest = if req.has_body() {
        req.json()?
    } else {
        ActionRequest::default()
    };
    let snap = server.cache.deployments.snapshot();
    let deployment = find(server, &snap, req, id)?;
    if !body.deployment_id.is_empty() && body.deployment_id != deployment.id.as_str() {
        return Err(ApiError::BadRequest("Deployment ID does not match".into()));
    }
    let action = match verb {
        "promote" => DeploymentAction::Promote(match (body.all, body.groups) {
            (true, _) | (false, None) => None,
            (false, Some(groups)) if groups.is_empty() => None,
            (false, Some(groups)) => Some(groups),
        }),
        "fail" => DeploymentAction::Fail,
        "pause" => DeploymentAction::Pause(body.pause),
        "allocation-health" => DeploymentAction::SetHealth {
            healthy: ids(body.healthy_allocation_ids),
            unhealthy: ids(body.unhealthy_allocation_ids),
        },
        _ => return Err(not_found(&["deployment", verb, id])),
    };
    let done = server
        .deployment_action(
            deployment.namespace.as_str(),
            deployment.id.as_str(),
            action,
        )
        .await?;
    let index = done.index;
    Reply::json(&done, index)
}

fn ids(list: Option<Vec<String>>) -> Vec<AllocId> {
    list.unwrap_or_default()
        .into_iter()
        .map(AllocId::from)
        .collect()
}
