//! `caravan lb` end to end: the real binary with `-routes FILE`, in front of small HTTP
//! upstreams started here (hyper, on 127.0.0.1:0) that answer with their name and echo what
//! they received in `x-got-*` headers. Nothing is mocked: real sockets, real processes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use caravan_schemas::lb::{Backend, Instance, Redirect, Route, RouteTable};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::eventually;

// ---------------------------------------------------------------------------------------------
// Upstreams

/// A tiny HTTP upstream: answers every request with its name (and `/echo` with the request
/// body, streamed back), `x-upstream: NAME`, `x-path: PATH?QUERY`, and `x-got-H` for each
/// forwarding header it received. `?delay_ms=N` makes it answer N ms late.
struct Upstream {
    name: String,
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    server: Option<tokio::task::JoinHandle<()>>,
}

type UpBody = Either<Incoming, Full<Bytes>>;

async fn answer(
    name: Arc<str>,
    hits: Arc<AtomicUsize>,
    req: Request<Incoming>,
) -> Result<Response<UpBody>, Infallible> {
    hits.fetch_add(1, Ordering::SeqCst);
    let delay = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("delay_ms="))
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(ms) = delay {
        // Simulated work, so that requests are in flight while the table changes.
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let pq = req
        .uri()
        .path_and_query()
        .map_or("/".to_owned(), ToString::to_string);
    let mut resp = Response::builder()
        .header("x-upstream", &*name)
        .header("x-path", pq);
    for h in [
        "host",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
    ] {
        if let Some(v) = req.headers().get(h) {
            resp = resp.header(format!("x-got-{h}"), v);
        }
    }
    let body = if req.uri().path() == "/echo" {
        Either::Left(req.into_body())
    } else {
        Either::Right(Full::new(Bytes::from(name.to_string())))
    };
    Ok(resp.body(body).unwrap())
}

impl Upstream {
    async fn start(name: &str) -> Upstream {
        Self::start_with(name, None).await
    }

    /// An upstream that speaks TLS with `tls`'s certificate.
    async fn start_tls(name: &str, tls: Arc<tokio_rustls::rustls::ServerConfig>) -> Upstream {
        Self::start_with(name, Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    async fn start_with(name: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let name_arc: Arc<str> = name.into();
        let counter = Arc::clone(&hits);
        let server = tokio::spawn(async move {
            // Dropping this task drops the set, which aborts every connection: a kill.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let name = Arc::clone(&name_arc);
                let hits = Arc::clone(&counter);
                let tls = tls.clone();
                conns.spawn(async move {
                    let service =
                        service_fn(move |req| answer(Arc::clone(&name), Arc::clone(&hits), req));
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        None => http.serve_connection(TokioIo::new(stream), service).await,
                        Some(tls) => match tls.accept(stream).await {
                            Ok(s) => http.serve_connection(TokioIo::new(s), service).await,
                            Err(_) => return,
                        },
                    };
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Upstream {
            name: name.to_owned(),
            addr,
            hits,
            server: Some(server),
        }
    }

    fn instance(&self) -> Instance {
        Instance {
            address: self.addr.ip().to_string(),
            port: i32::from(self.addr.port()),
            ..Instance::default()
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops listening and drops every connection: the port now refuses connections.
    async fn kill(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
        }
        assert!(
            std::net::TcpStream::connect(self.addr).is_err(),
            "{} still accepts connections",
            self.name
        );
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(s) = &self.server {
            s.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Route tables

fn backend(weight: u32, upstreams: &[&Upstream]) -> Backend {
    Backend {
        weight,
        subset: String::new(),
        instances: upstreams.iter().map(|u| u.instance()).collect(),
    }
}

fn route(host: &str, prefix: &str, service: &str, backends: Vec<Backend>) -> Route {
    Route {
        host: host.into(),
        prefix: prefix.into(),
        service: service.into(),
        proto: "http".into(),
        backends,
        ..Route::default()
    }
}

fn table(index: i64, routes: Vec<Route>) -> RouteTable {
    RouteTable {
        routes,
        modify_index: index,
    }
}

/// Replaces the file in one step (write aside, rename), as an operator's tooling would.
fn write_table(path: &Path, t: &RouteTable) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(t).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

// ---------------------------------------------------------------------------------------------
// The load balancer process

struct Lb {
    child: Child,
    proxy: String,
    ui: String,
    routes: PathBuf,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Lb {
    /// `caravan lb -routes FILE` on free ports, once it printed where it listens.
    fn start(t: &RouteTable) -> Lb {
        let dir = tempfile::tempdir().unwrap();
        let routes = dir.path().join("routes.json");
        write_table(&routes, t);
        let (child, proxy, ui) = spawn_lb(&["-routes", routes.to_str().unwrap()]);
        Lb {
            child,
            proxy,
            ui,
            routes,
            _dir: dir,
            http: client(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    /// The upstream that answered a GET of `path`.
    async fn who(&self, path: &str) -> String {
        let resp = self.get(path).await;
        assert_eq!(resp.status(), 200, "GET {path}");
        header(&resp, "x-upstream")
    }

    async fn ui_get(&self, path: &str) -> (u16, String) {
        let resp = self
            .http
            .get(format!("http://{}{path}", self.ui))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// Writes a new table and waits until the load balancer serves it.
    async fn change_table(&self, t: &RouteTable) {
        write_table(&self.routes, t);
        let want = t.modify_index;
        eventually(Duration::from_secs(10), "the new table", || async move {
            let (status, body) = self.ui_get("/routes").await;
            status == 200
                && serde_json::from_str::<RouteTable>(&body).is_ok_and(|t| t.modify_index == want)
        })
        .await;
    }

    async fn metrics(&self) -> String {
        let (status, body) = self.ui_get("/metrics").await;
        assert_eq!(status, 200);
        body
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Runs `caravan lb` with `-addr`/`-ui-addr` on port 0 plus `args`; answers the child and the
/// proxy and UI addresses it printed.
fn spawn_lb(args: &[&str]) -> (Child, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_caravan"))
        .args(["lb", "-addr", "127.0.0.1:0", "-ui-addr", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut proxy, mut ui) = (None, None);
    loop {
        assert!(Instant::now() < deadline, "caravan lb did not start");
        let Some(line) = lines.next() else {
            panic!("caravan lb exited: {:?}", child.wait());
        };
        let line = line.unwrap();
        let value = || line.rsplit(' ').next().unwrap().trim().to_owned();
        if line.contains("Proxy Addr:") {
            proxy = Some(value());
        } else if line.contains("UI Addr:") {
            ui = Some(value());
        } else if line.contains("load balancer started") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    (child, proxy.unwrap(), ui.unwrap())
}

/// Sends `n` GETs of `path` over `workers` concurrent connections; answers how many each
/// upstream answered and the failures (status or transport) with their text.
async fn load(
    lb: &Lb,
    path: &str,
    n: usize,
    workers: usize,
) -> (BTreeMap<String, usize>, Vec<String>) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let http = lb.http.clone();
        let url = lb.url(path);
        let next = Arc::clone(&next);
        tasks.push(tokio::spawn(async move {
            let mut seen = BTreeMap::<String, usize>::new();
            let mut failures = Vec::new();
            while next.fetch_add(1, Ordering::SeqCst) < n {
                match http.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        *seen.entry(header(&r, "x-upstream")).or_default() += 1;
                    }
                    Ok(r) => failures.push(format!("{}: {}", r.status(), r.text().await.unwrap())),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            (seen, failures)
        }));
    }
    let mut seen = BTreeMap::new();
    let mut failures = Vec::new();
    for t in tasks {
        let (s, f) = t.await.unwrap();
        for (k, v) in s {
            *seen.entry(k).or_default() += v;
        }
        failures.extend(f);
    }
    (seen, failures)
}

/// The value of one series in a Prometheus text page (0 when absent).
fn series(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_requests_over_every_instance() {
    let ups = [
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    ];
    let lb = Lb::start(&table(
        1,
        vec![route(
            "",
            "/",
            "web",
            vec![backend(100, &[&ups[0], &ups[1], &ups[2]])],
        )],
    ));
    let (seen, failures) = load(&lb, "/", 300, 4).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(
        seen.values().copied().collect::<Vec<_>>(),
        [100, 100, 100],
        "{seen:?}"
    );
    let (status, health) = lb.ui_get("/health").await;
    assert_eq!((status, health.as_str()), (200, "ok\n"));
    let (status, page) = lb.ui_get("/").await;
    assert_eq!(status, 200);
    assert!(page.contains(&ups[2].addr.to_string()), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_90_10_hold_over_10000_requests() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let lb = Lb::start(&table(
        1,
        vec![route(
            "",
            "/",
            "web",
            vec![backend(90, &[&stable]), backend(10, &[&canary])],
        )],
    ));
    let (seen, failures) = load(&lb, "/", 10_000, 8).await;
    assert!(failures.is_empty(), "{failures:?}");
    let canary_share = seen.get("canary").copied().unwrap_or(0) as f64 / 100.0;
    assert!(
        (8.0..=12.0).contains(&canary_share),
        "canary got {canary_share}% ({seen:?})"
    );
    assert_eq!(seen.values().sum::<usize>(), 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longest_prefix_and_exact_host_win() {
    let root = Upstream::start("root").await;
    let api = Upstream::start("api").await;
    let v2 = Upstream::start("api-v2").await;
    let shop = Upstream::start("shop").await;
    let lb = Lb::start(&table(
        1,
        vec![
            route("", "/", "root", vec![backend(100, &[&root])]),
            route("", "/api", "api", vec![backend(100, &[&api])]),
            route("", "/api/v2", "api-v2", vec![backend(100, &[&v2])]),
            route(
                "shop.example.com",
                "/",
                "shop",
                vec![backend(100, &[&shop])],
            ),
        ],
    ));
    assert_eq!(lb.who("/").await, "root");
    assert_eq!(lb.who("/apiary").await, "root");
    assert_eq!(lb.who("/api").await, "api");
    assert_eq!(lb.who("/api/users").await, "api");
    assert_eq!(lb.who("/api/v2/users?x=1").await, "api-v2");
    let via_host = |host: &'static str, path: &'static str| {
        let req = lb.http.get(lb.url(path)).header("host", host);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), header(&r, "x-upstream"))
        }
    };
    assert_eq!(
        via_host("Shop.Example.com:9999", "/api").await,
        (200, "shop".to_owned())
    );
    assert_eq!(via_host("other.com", "/api").await, (200, "api".to_owned()));

    // No route at all: 404 naming the host and path.
    let lb2 = Lb::start(&table(
        1,
        vec![route(
            "only.example.com",
            "/x",
            "x",
            vec![backend(100, &[&root])],
        )],
    ));
    let r = lb2
        .http
        .get(lb2.url("/y"))
        .header("host", "Nowhere.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.text().await.unwrap(), "no route for nowhere.com /y\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_redirect_and_forwarded_headers() {
    let app = Upstream::start("app").await;
    let mut stripped = route("", "/api", "app", vec![backend(100, &[&app])]);
    stripped.strip = "/api".into();
    let mut moved = route("", "/old", "app", vec![]);
    moved.redirect = Some(Redirect {
        code: 301,
        url: "https://new.example.com$path".into(),
    });
    let mut tls = route("", "/tls", "app", vec![backend(100, &[&app])]);
    tls.proto = "https".into();
    let empty = route("", "/empty", "gone", vec![backend(100, &[])]);
    let lb = Lb::start(&table(
        1,
        vec![
            route("", "/", "app", vec![backend(100, &[&app])]),
            stripped,
            moved,
            tls,
            empty,
        ],
    ));

    let r = lb.get("/api/users?page=2").await;
    assert_eq!(header(&r, "x-path"), "/users?page=2");
    let r = lb.get("/api").await;
    assert_eq!(header(&r, "x-path"), "/");
    let r = lb.get("/apix").await;
    assert_eq!(header(&r, "x-path"), "/apix", "/apix is not under /api");

    let r = lb.get("/old/page?q=1").await;
    assert_eq!(r.status(), 301);
    assert_eq!(
        header(&r, "location"),
        "https://new.example.com/old/page?q=1"
    );

    // proto=https to an upstream that speaks plain HTTP: the handshake fails, a 502.
    let r = lb.get("/tls").await;
    assert_eq!(r.status(), 502);

    let r = lb.get("/empty").await;
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("no healthy instance"));

    // X-Forwarded-*: the client's address appended, the scheme, the Host as sent (kept).
    let r = lb
        .http
        .get(lb.url("/h"))
        .header("host", "Shop.example.com:8080")
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-got-x-forwarded-for"),
        "203.0.113.7, 127.0.0.1"
    );
    assert_eq!(header(&r, "x-got-x-forwarded-proto"), "http");
    assert_eq!(
        header(&r, "x-got-x-forwarded-host"),
        "Shop.example.com:8080"
    );
    assert_eq!(header(&r, "x-got-host"), "Shop.example.com:8080");
    let r = lb.get("/h").await;
    assert_eq!(header(&r, "x-got-x-forwarded-for"), "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_upstream_costs_no_request() {
    let a = Upstream::start("a").await;
    let mut b = Upstream::start("b").await;
    let c = Upstream::start("c").await;
    let lb = Lb::start(&table(
        1,
        vec![route("", "/", "web", vec![backend(100, &[&a, &b, &c])])],
    ));
    // Warm the pool: the load balancer holds keep-alive connections to all three.
    let (seen, failures) = load(&lb, "/", 30, 3).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(seen.len(), 3);

    b.kill().await;
    let before = b.hits();
    let (seen, failures) = load(&lb, "/", 300, 4).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(b.hits(), before);
    assert_eq!(seen.get("b"), None);
    assert_eq!(seen.values().sum::<usize>(), 300);
    let m = lb.metrics().await;
    assert!(
        series(&m, r#"caravan_lb_errors_total{route="/",kind="connect"}"#) >= 1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_table_under_load_fails_no_request() {
    let old = Upstream::start("old").await;
    let new1 = Upstream::start("new1").await;
    let new2 = Upstream::start("new2").await;
    let lb = Lb::start(&table(
        1,
        vec![route("", "/", "web", vec![backend(100, &[&old])])],
    ));
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Set once the load balancer confirmed the new table: no request sent after that may
    // reach the old upstream.
    let swapped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let http = lb.http.clone();
        // Slow answers, so that requests are in flight while the table changes.
        let url = lb.url("/?delay_ms=5");
        let (done, stop, swapped) = (Arc::clone(&done), Arc::clone(&stop), Arc::clone(&swapped));
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut late_to_old = 0;
            while !stop.load(Ordering::SeqCst) {
                let after_swap = swapped.load(Ordering::SeqCst);
                match http.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        if after_swap && header(&r, "x-upstream") == "old" {
                            late_to_old += 1;
                        }
                    }
                    Ok(r) => failures.push(format!("{}: {}", r.status(), r.text().await.unwrap())),
                    Err(e) => failures.push(e.to_string()),
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
            (failures, late_to_old)
        }));
    }
    let reached = |n: usize| {
        let done = Arc::clone(&done);
        move || {
            let done = Arc::clone(&done);
            async move { done.load(Ordering::SeqCst) >= n }
        }
    };
    eventually(Duration::from_secs(30), "200 requests done", reached(200)).await;
    lb.change_table(&table(
        2,
        vec![route(
            "",
            "/",
            "web",
            vec![backend(50, &[&new1]), backend(50, &[&new2])],
        )],
    ))
    .await;
    swapped.store(true, Ordering::SeqCst);
    let at_swap = done.load(Ordering::SeqCst);
    let want = (at_swap + 200).max(1_000);
    eventually(
        Duration::from_secs(60),
        "1,000 requests done",
        reached(want),
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let mut failures = Vec::new();
    let mut late = 0;
    for t in tasks {
        let (f, l) = t.await.unwrap();
        failures.extend(f);
        late += l;
    }
    let total = done.load(Ordering::SeqCst);
    assert!(total >= 1_000);
    assert!(
        failures.is_empty(),
        "{} of {total} failed: {failures:?}",
        failures.len()
    );
    assert_eq!(
        late, 0,
        "requests sent after the change reached the old upstream"
    );
    assert!(old.hits() >= 200);
    assert!(
        new1.hits() >= 50 && new2.hits() >= 50,
        "{} {}",
        new1.hits(),
        new2.hits()
    );
    assert_eq!(old.hits() + new1.hits() + new2.hits(), total);
    let m = lb.metrics().await;
    assert_eq!(series(&m, "caravan_lb_routes"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_errors_and_latency() {
    let app = Upstream::start("app").await;
    let lb = Lb::start(&table(
        1,
        vec![
            route("", "/app", "app", vec![backend(100, &[&app])]),
            route("", "/none", "gone", vec![]),
        ],
    ));
    let (_, failures) = load(&lb, "/app/x", 25, 2).await;
    assert!(failures.is_empty());
    assert_eq!(lb.get("/none").await.status(), 503);
    assert_eq!(lb.get("/nothing").await.status(), 404);
    let m = lb.metrics().await;
    assert_eq!(
        series(
            &m,
            r#"caravan_lb_requests_total{route="/app",service="app",code="200"}"#
        ),
        25.0,
        "{m}"
    );
    assert_eq!(
        series(
            &m,
            r#"caravan_lb_requests_total{route="/none",service="gone",code="503"}"#
        ),
        1.0
    );
    assert_eq!(
        series(
            &m,
            r#"caravan_lb_errors_total{route="/none",kind="no_instance"}"#
        ),
        1.0
    );
    assert_eq!(
        series(
            &m,
            r#"caravan_lb_requests_total{route="",service="",code="404"}"#
        ),
        1.0
    );
    assert_eq!(
        series(
            &m,
            r#"caravan_lb_request_duration_seconds_count{route="/app"}"#
        ),
        25.0
    );
    assert_eq!(series(&m, "caravan_lb_routes"), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways() {
    let app = Upstream::start("app").await;
    let lb = Lb::start(&table(
        1,
        vec![route("", "/", "app", vec![backend(100, &[&app])])],
    ));
    let body: Vec<u8> = (0..20 * 1024 * 1024)
        .map(|i: u32| (i % 251) as u8)
        .collect();
    let r = lb
        .http
        .post(lb.url("/echo"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let back = r.bytes().await.unwrap();
    assert_eq!(back.len(), body.len());
    assert!(back[..] == body[..], "the echoed body differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_table_requests_get_502_saying_why() {
    // Nothing listens on port 1: the servers cannot be reached, so no table arrives.
    let (child, proxy, ui) = spawn_lb(&["-servers", "http://127.0.0.1:1"]);
    let mut guard = ChildGuard(child);
    let http = client();
    let r = http.get(format!("http://{proxy}/x")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let text = r.text().await.unwrap();
    assert!(text.starts_with("caravan lb: no route table yet"), "{text}");
    assert!(text.contains("127.0.0.1:1"), "{text}");
    let r = http
        .get(format!("http://{ui}/routes"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    guard.0.kill().unwrap();
}

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish() {
    let slow = Upstream::start("slow").await;
    let mut lb = Lb::start(&table(
        1,
        vec![route("", "/", "slow", vec![backend(100, &[&slow])])],
    ));
    let pending = tokio::spawn(lb.http.get(lb.url("/?delay_ms=700")).send());
    eventually(
        Duration::from_secs(10),
        "the request to reach the upstream",
        || async { slow.hits() >= 1 },
    )
    .await;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(lb.child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let resp = pending.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "slow");
    let status = tokio::task::spawn_blocking(move || lb.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_post_is_resent_whole_to_another_instance() {
    let mut dead = Upstream::start("dead").await;
    let alive = Upstream::start("alive").await;
    dead.kill().await;
    let lb = Lb::start(&table(
        1,
        vec![route("", "/", "web", vec![backend(100, &[&dead, &alive])])],
    ));
    let body: Vec<u8> = (0..1024 * 1024).map(|i: u32| (i % 253) as u8).collect();
    for _ in 0..6 {
        let r = lb
            .http
            .post(lb.url("/echo"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-upstream"), "alive");
        assert!(
            r.bytes().await.unwrap()[..] == body[..],
            "the body arrived changed"
        );
    }
    assert_eq!(alive.hits(), 6);
    let m = lb.metrics().await;
    assert_eq!(
        series(&m, r#"caravan_lb_errors_total{route="/",kind="connect"}"#),
        3.0,
        "{m}"
    );
}

/// A CA, and a certificate it signed for 127.0.0.1: the CA as PEM, the server's TLS settings.
fn test_pki() -> (String, Arc<tokio_rustls::rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let der =
        tokio_rustls::rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], der)
    .unwrap();
    (ca.pem(), Arc::new(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_route_speaks_tls_to_upstreams_signed_by_a_trusted_ca() {
    let (ca_pem, server) = test_pki();
    let secure = Upstream::start_tls("secure", server).await;
    let mut tls = route("", "/", "secure", vec![backend(100, &[&secure])]);
    tls.proto = "https".into();
    let t = table(1, vec![tls]);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let routes = dir.path().join("routes.json");
    write_table(&routes, &t);

    // Trusting the CA: the request goes through over TLS.
    let (mut child, proxy, _) = spawn_lb(&[
        "-routes",
        routes.to_str().unwrap(),
        "-upstream-ca",
        ca.to_str().unwrap(),
    ]);
    let r = client()
        .get(format!("http://{proxy}/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-upstream"), "secure");
    assert_eq!(header(&r, "x-path"), "/hello");
    let _ = child.kill();
    let _ = child.wait();

    // Not trusting it: the certificate is refused, a 502, and the upstream saw no request.
    let before = secure.hits();
    let lb = Lb::start(&t);
    let r = lb.get("/hello").await;
    assert_eq!(r.status(), 502);
    assert_eq!(secure.hits(), before);

    // A CA file that is not one fails at start, saying which.
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "nope").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_caravan"))
        .args(["lb", "-addr", "127.0.0.1:0", "-ui-addr", "127.0.0.1:0"])
        .args(["-routes", routes.to_str().unwrap()])
        .args(["-upstream-ca", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.pem") && err.contains("no certificate"),
        "{err}"
    );
}
