//! The status side (`-ui-addr`, 9998 by default): `/` an HTML page of the routes, their
//! backends, weights and instances; `/routes` the current table as JSON; `/health`; `/metrics`
//! in the Prometheus text format.

use super::table::{Compiled, TableSlot, route_label};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use std::fmt::Write;

fn answer(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

const TEXT: &str = "text/plain; charset=utf-8";

/// Answers one request to the status side.
pub fn handle<B>(req: &Request<B>, slot: &TableSlot, source: &str) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return answer(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            format!("{} is not allowed here\n", req.method()),
        );
    }
    match req.uri().path() {
        "/health" => answer(StatusCode::OK, TEXT, "ok\n".into()),
        "/metrics" => match slot.metrics().prometheus_text() {
            Ok(text) => answer(
                StatusCode::OK,
                crate::metrics::PROMETHEUS_CONTENT_TYPE,
                text,
            ),
            Err(e) => answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                TEXT,
                format!("encoding metrics: {e}\n"),
            ),
        },
        "/routes" => match slot.load() {
            Some(c) => match serde_json::to_string_pretty(&c.table) {
                Ok(json) => answer(StatusCode::OK, "application/json", json),
                Err(e) => answer(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    TEXT,
                    format!("encoding the route table: {e}\n"),
                ),
            },
            None => answer(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("no route table yet: {}\n", slot.waiting()),
            ),
        },
        "/" => answer(
            StatusCode::OK,
            "text/html; charset=utf-8",
            page(slot.load().as_deref(), &slot.waiting(), source),
        ),
        other => answer(StatusCode::NOT_FOUND, TEXT, format!("no page {other}\n")),
    }
}

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The status page.
pub fn page(table: Option<&Compiled>, waiting: &str, source: &str) -> String {
    let mut h = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>caravan lb</title><style>\
         body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}\
         td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}\
         .muted{color:#888}</style></head><body><h1>caravan lb</h1>",
    );
    let _ = write!(h, "<p>Routes from {}", esc(source));
    let Some(table) = table else {
        let _ = write!(
            h,
            ": <b>no table yet</b> ({})</p></body></html>",
            esc(waiting)
        );
        return h;
    };
    let _ = write!(
        h,
        " &middot; index {} &middot; {} routes &middot; <a href=\"/routes\">JSON</a> &middot; \
         <a href=\"/metrics\">metrics</a></p>",
        table.table.modify_index,
        table.table.routes.len()
    );
    h.push_str(
        "<table><tr><th>Route</th><th>Service</th><th>Options</th><th>Weight</th>\
         <th>Subset</th><th>Instances</th></tr>",
    );
    for route in &table.table.routes {
        let mut options = Vec::new();
        if !route.strip.is_empty() {
            options.push(format!("strip={}", route.strip));
        }
        if !route.proto.is_empty() && route.proto != "http" {
            options.push(format!("proto={}", route.proto));
        }
        if let Some(r) = &route.redirect {
            options.push(format!("redirect={},{}", r.code, r.url));
        }
        let backends = route.backends.len().max(1);
        let _ = write!(
            h,
            "<tr><td rowspan=\"{backends}\">{}</td><td rowspan=\"{backends}\">{} <span \
             class=\"muted\">({})</span></td><td rowspan=\"{backends}\">{}</td>",
            esc(&route_label(route)),
            esc(&route.service),
            esc(route.namespace.as_str()),
            esc(&options.join(" "))
        );
        if route.backends.is_empty() {
            h.push_str("<td></td><td></td><td class=\"muted\">none</td></tr>");
        }
        for (i, b) in route.backends.iter().enumerate() {
            if i > 0 {
                h.push_str("<tr>");
            }
            let instances = if b.instances.is_empty() {
                "<span class=\"muted\">no healthy instance (skipped)</span>".to_owned()
            } else {
                b.instances
                    .iter()
                    .map(|inst| {
                        format!(
                            "{} <span class=\"muted\">alloc {} v{}{}</span>",
                            esc(&inst.socket_addr()),
                            esc(inst.alloc_id.short()),
                            inst.job_version,
                            if inst.canary { " canary" } else { "" }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("<br>")
            };
            let _ = write!(
                h,
                "<td>{}</td><td>{}</td><td>{instances}</td></tr>",
                b.weight,
                esc(&b.subset)
            );
        }
    }
    h.push_str("</table></body></html>");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::metrics::LbMetrics;
    use caravan_schemas::lb::{Backend, Instance, Route, RouteTable};
    use std::sync::Arc;

    #[test]
    fn the_page_lists_routes_backends_and_instances_escaped() {
        let slot = TableSlot::new(Arc::new(LbMetrics::new()), "file routes.json");
        let get = |path: &str| Request::get(path).body(()).unwrap();
        assert_eq!(
            handle(&get("/routes"), &slot, "x").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(handle(&get("/health"), &slot, "x").status(), StatusCode::OK);
        slot.store(RouteTable {
            routes: vec![Route {
                host: "<b>".into(),
                prefix: "/api".into(),
                service: "web".into(),
                strip: "/api".into(),
                backends: vec![
                    Backend {
                        weight: 90,
                        subset: "canary=false".into(),
                        instances: vec![Instance {
                            address: "10.0.0.1".into(),
                            port: 8080,
                            ..Instance::default()
                        }],
                    },
                    Backend {
                        weight: 10,
                        subset: "canary=true".into(),
                        instances: vec![],
                    },
                ],
                ..Route::default()
            }],
            modify_index: 7,
        });
        let html = page(slot.load().as_deref(), "", "file routes.json");
        assert!(html.contains("&lt;b&gt;/api"), "{html}");
        assert!(html.contains("10.0.0.1:8080"));
        assert!(html.contains("strip=/api"));
        assert!(html.contains("<td>90</td><td>canary=false</td>"));
        assert!(html.contains("no healthy instance"));
        assert_eq!(handle(&get("/routes"), &slot, "x").status(), StatusCode::OK);
        assert_eq!(
            handle(&get("/nope"), &slot, "x").status(),
            StatusCode::NOT_FOUND
        );
    }
}
