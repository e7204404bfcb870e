//! `/v1/evaluations`, `/v1/evaluation/:id`, `/v1/evaluation/:id/allocations`.

use super::allocations::stub_fields;
use super::jobs::watch;
use super::{ApiError, Reply, Request, block_on, find_by_prefix, not_found};
use crate::server::Server;
use crate::server::cache::Snapshot;
use crate::server::objects::Kind;
use caravan_schemas::eval::Evaluation;
use std::sync::Arc;
use warp::http::Method;

pub async fn route(server: &Server, req: &Request, segs: &[&str]) -> Result<Reply, ApiError> {
    match (&req.method, segs) {
        (&Method::GET, ["evaluations"]) => list(server, req).await,
        (&Method::GET, ["evaluation", id]) => read(server, req, id).await,
        (&Method::GET, ["evaluation", id, "allocations"]) => allocations(server, req, id).await,
        (_, ["evaluations"] | ["evaluation", _] | ["evaluation", _, "allocations"]) => {
            Err(ApiError::MethodNotAllowed)
        }
        _ => Err(not_found(segs)),
    }
}

/// One evaluation by ID or unique prefix, in any namespace.
fn find(
    server: &Server,
    snap: &Snapshot<Evaluation>,
    req: &Request,
    id: &str,
) -> Result<Arc<Evaluation>, ApiError> {
    if let Some(e) = snap
        .objects
        .get(&server.keys.key(Kind::Eval, req.namespace(), id))
    {
        return Ok(Arc::clone(e));
    }
    find_by_prefix(
        snap.objects.values(),
        |e: &Evaluation| e.id.as_str(),
        id,
        "eval",
        "evaluations",
    )
}

/// Full evaluations, as Nomad lists them; `?job=` and `?status=` filter, as Nomad's do.
async fn list(server: &Server, req: &Request) -> Result<Reply, ApiError> {
    let evals = watch(&server.cache.evals, req).await?;
    let prefix = req.prefix();
    let job = req.param("job").filter(|j| !j.is_empty());
    let status = req.param("status").filter(|s| !s.is_empty());
    let list: Vec<&Evaluation> = evals
        .objects
        .values()
        .filter(|e| req.in_namespace(e.namespace.as_str()) && e.id.as_str().starts_with(prefix))
        .filter(|e| job.is_none_or(|j| e.job_id.as_str() == j))
        .filter(|e| status.is_none_or(|s| e.status.as_str() == s))
        .map(AsRef::as_ref)
        .collect();
    Reply::json(&list, evals.index)
}

async fn read(server: &Server, req: &Request, id: &str) -> Result<Reply, ApiError> {
    let (snap, _) = block_on(&server.cache.evals, req, |snap| {
        match find(server, snap, req, id) {
            Ok(e) => e.modify_index,
            Err(_) => snap.index,
        }
    })
    .await?;
    let eval = find(server, &snap, req, id)?;
    let mut eval = (*eval).clone();
    if req.flag("related") {
        eval.related_evals = related(&snap, &eval);
    }
    Reply::json(&eval, eval.modify_index)
}

/// The evaluations chained to this one through `NextEval`, `PreviousEval` and `BlockedEval`.
fn related(
    snap: &Snapshot<Evaluation>,
    eval: &Evaluation,
) -> Vec<caravan_schemas::eval::EvaluationStub> {
    let by_id = |id: &str| snap.objects.values().find(|e| e.id.as_str() == id).cloned();
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::from([eval.id.to_string()]);
    let mut queue: Vec<String> = [&eval.next_eval, &eval.previous_eval, &eval.blocked_eval]
        .into_iter()
        .filter(|id| !id.is_empty())
        .map(ToString::to_string)
        .collect();
    while let Some(id) = queue.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        if let Some(e) = by_id(&id) {
            queue.extend(
                [&e.next_eval, &e.previous_eval, &e.blocked_eval]
                    .into_iter()
                    .filter(|id| !id.is_empty())
                    .map(ToString::to_string),
            );
            out.push(e.stub());
        }
    }
    out
}

async fn allocations(server: &Server, req: &Request, id: &str) -> Result<Reply, ApiError> {
    let allocs = watch(&server.cache.allocs, req).await?;
    let fields = stub_fields(req);
    let stubs: Vec<_> = allocs
        .objects
        .values()
        .filter(|a| a.eval_id.as_str() == id)
        .map(|a| a.stub_with(fields))
        .collect();
    Reply::json(&stubs, allocs.index)
}
