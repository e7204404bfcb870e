//! `GET /v1/metrics` (Nomad's JSON summary, or `?format=prometheus`) and `GET /metrics`.

use super::{Api, ApiError, Reply, Request, not_found};
use crate::metrics::{Metrics, PROMETHEUS_CONTENT_TYPE};
use crate::server::writes::now_nanos;
use bytes::Bytes;
use warp::http::{Method, StatusCode};

pub fn route(api: &Api, req: &Request, segs: &[&str]) -> Result<Reply, ApiError> {
    match (&req.method, segs) {
        (&Method::GET, ["metrics"]) if req.param("format") == Some("prometheus") => {
            text(&api.metrics)
        }
        (&Method::GET, ["metrics"]) => {
            let summary = api
                .metrics
                .nomad_summary(now_nanos())
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            let mut reply = Reply::json(&summary, 0)?;
            reply.index = None;
            Ok(reply)
        }
        (_, ["metrics"]) => Err(ApiError::MethodNotAllowed),
        _ => Err(not_found(segs)),
    }
}

/// `GET /metrics`, for Prometheus.
pub fn prometheus(api: &Api, method: &Method) -> Result<Reply, ApiError> {
    if method != Method::GET && method != Method::HEAD {
        return Err(ApiError::MethodNotAllowed);
    }
    text(&api.metrics)
}

fn text(metrics: &Metrics) -> Result<Reply, ApiError> {
    let body = metrics
        .prometheus_text()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Reply {
        status: StatusCode::OK,
        body: Bytes::from(body),
        content_type: PROMETHEUS_CONTENT_TYPE,
        index: None,
    })
}
