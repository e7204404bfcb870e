//! The route table as the proxy uses it: compiled once per table (lookup index, balancers,
//! parsed upstream addresses, metric handles) and swapped whole, so that a request keeps the
//! table — and the upstream — it started with while the next requests see the new one.

use super::balance::{Balancer, Pick};
use super::metrics::{LbMetrics, RouteMetrics};
use super::route::Router;
use caravan_schemas::lb::{Route, RouteTable};
use http::uri::Authority;
use std::sync::{Arc, Mutex, RwLock};

/// One instance, ready to be put in a request URI.
#[derive(Debug)]
pub struct Upstream {
    pub authority: Authority,
}

/// How a route answers.
#[derive(Debug)]
pub enum Action {
    /// Forward to an instance.
    Proxy,
    /// Answer with this redirect (status, `Location` template).
    Redirect(http::StatusCode, String),
}

/// A route with what the proxy needs at hand.
#[derive(Debug)]
pub struct CompiledRoute {
    /// `host/prefix`, as in metrics and logs.
    pub label: String,
    pub route: Route,
    pub action: Action,
    /// How its upstreams are spoken to: `http`, or `https` for `proto=https`.
    pub scheme: http::uri::Scheme,
    /// Per backend (same positions as `route.backends`), the usable instances.
    pub upstreams: Vec<Vec<Upstream>>,
    pub balancer: Balancer,
    pub metrics: RouteMetrics,
}

impl CompiledRoute {
    /// The instance a pick designates.
    pub fn upstream(&self, pick: Pick) -> Option<&Upstream> {
        self.upstreams.get(pick.backend)?.get(pick.instance)
    }
}

/// A route table compiled for lookups.
#[derive(Debug)]
pub struct Compiled {
    pub table: RouteTable,
    pub routes: Vec<CompiledRoute>,
    router: Router,
}

/// A route's label: its host and prefix.
pub fn route_label(route: &Route) -> String {
    format!("{}{}", route.host, route.prefix)
}

impl Compiled {
    /// Compiles `table`. Instances whose address cannot be an URI authority are left out (and
    /// logged); nothing here fails.
    pub fn new(table: RouteTable, metrics: &LbMetrics) -> Compiled {
        let router = Router::new(
            table
                .routes
                .iter()
                .map(|r| (r.host.as_str(), r.prefix.as_str())),
        );
        let routes = table
            .routes
            .iter()
            .map(|route| compile_route(route, metrics))
            .collect();
        Compiled {
            table,
            routes,
            router,
        }
    }

    /// The route for a request's `Host` and path.
    pub fn lookup(&self, host: &str, path: &str) -> Option<&CompiledRoute> {
        self.router
            .lookup(host, path)
            .and_then(|i| self.routes.get(i))
    }
}

fn compile_route(route: &Route, metrics: &LbMetrics) -> CompiledRoute {
    let label = route_label(route);
    let upstreams: Vec<Vec<Upstream>> = route
        .backends
        .iter()
        .map(|b| {
            b.instances
                .iter()
                .filter_map(|i| {
                    let addr = i.socket_addr();
                    match Authority::try_from(addr.as_str()) {
                        Ok(authority) if (1..=65535).contains(&i.port) => {
                            Some(Upstream { authority })
                        }
                        _ => {
                            tracing::warn!(route = %label, instance = %addr, alloc = %i.alloc_id,
                                "skipping an instance whose address is not host:port");
                            None
                        }
                    }
                })
                .collect()
        })
        .collect();
    let shape: Vec<(u32, usize)> = route
        .backends
        .iter()
        .zip(&upstreams)
        .map(|(b, u)| (b.weight, u.len()))
        .collect();
    let action = if let Some(r) = &route.redirect {
        let code = http::StatusCode::from_u16(r.code)
            .ok()
            .filter(http::StatusCode::is_redirection)
            .unwrap_or(http::StatusCode::MOVED_PERMANENTLY);
        Action::Redirect(code, r.url.clone())
    } else {
        Action::Proxy
    };
    let scheme = if route.proto.eq_ignore_ascii_case("https") {
        http::uri::Scheme::HTTPS
    } else {
        http::uri::Scheme::HTTP
    };
    CompiledRoute {
        metrics: metrics.route(&label, &route.service),
        label,
        route: route.clone(),
        action,
        scheme,
        balancer: Balancer::new(&shape),
        upstreams,
    }
}

/// The current table, shared by the watcher that replaces it and every request that reads it.
#[derive(Debug)]
pub struct TableSlot {
    current: RwLock<Option<Arc<Compiled>>>,
    /// Why there is no table yet (for the 502 answer and the status page).
    waiting: Mutex<String>,
    metrics: Arc<LbMetrics>,
}

impl TableSlot {
    /// An empty slot; `source` says where the table will come from.
    pub fn new(metrics: Arc<LbMetrics>, source: &str) -> TableSlot {
        TableSlot {
            current: RwLock::new(None),
            waiting: Mutex::new(format!("waiting for the route table from {source}")),
            metrics,
        }
    }

    /// The current table, if one arrived.
    pub fn load(&self) -> Option<Arc<Compiled>> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Installs `table` unless it equals the current one; answers whether it changed.
    pub fn store(&self, table: RouteTable) -> bool {
        if self.load().is_some_and(|c| c.table == table) {
            return false;
        }
        let n = table.routes.len();
        let compiled = Arc::new(Compiled::new(table, &self.metrics));
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(compiled);
        self.metrics.set_routes(n);
        true
    }

    /// Notes why the table has not arrived (or could not be refreshed).
    pub fn set_waiting(&self, why: String) {
        *self
            .waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = why;
    }

    /// Why there is no table yet.
    pub fn waiting(&self) -> String {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn metrics(&self) -> &LbMetrics {
        &self.metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use caravan_schemas::lb::{Backend, Instance};

    fn instance(address: &str, port: i32) -> Instance {
        Instance {
            address: address.into(),
            port,
            ..Instance::default()
        }
    }

    #[test]
    fn bad_instances_are_left_out_and_tables_swap_only_on_change() {
        let table = RouteTable {
            routes: vec![Route {
                prefix: "/".into(),
                service: "web".into(),
                backends: vec![Backend {
                    weight: 100,
                    instances: vec![
                        instance("127.0.0.1", 8080),
                        instance("bad host", 1),
                        instance("::1", 8081),
                        instance("127.0.0.1", 0),
                    ],
                    ..Backend::default()
                }],
                ..Route::default()
            }],
            modify_index: 1,
        };
        let slot = TableSlot::new(Arc::new(LbMetrics::new()), "test");
        assert!(slot.load().is_none());
        assert!(slot.store(table.clone()));
        assert!(!slot.store(table.clone()));
        let compiled = slot.load().unwrap();
        let route = compiled.lookup("any", "/x").unwrap();
        let addrs: Vec<String> = route.upstreams[0]
            .iter()
            .map(|u| u.authority.to_string())
            .collect();
        assert_eq!(addrs, ["127.0.0.1:8080", "[::1]:8081"]);
        assert_eq!(route.balancer.targets(), 2);
    }
}
