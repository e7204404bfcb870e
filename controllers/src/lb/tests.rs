use super::*;
use caravan_schemas::ids::{AllocId, ServiceId};
use caravan_schemas::lb::Split;
use proptest::prelude::*;

fn reg(service: &str, alloc: &str, port: i32, tags: &[&str]) -> ServiceRegistration {
    ServiceRegistration {
        id: ServiceId::new(format!("_nomad-task-{alloc}-web-{service}-http")),
        service_name: service.into(),
        namespace: Namespace::default_ns(),
        alloc_id: AllocId::new(alloc),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        address: "127.0.0.1".into(),
        port,
        healthy: Some(true),
        ..ServiceRegistration::default()
    }
}

fn canary(mut r: ServiceRegistration, version: u64) -> ServiceRegistration {
    r.canary = true;
    r.job_version = version;
    r
}

fn split(service: &str, shares: &[(u32, Subset)]) -> TrafficSplit {
    TrafficSplit {
        name: service.into(),
        namespace: Namespace::default_ns(),
        service: service.into(),
        splits: shares
            .iter()
            .map(|(w, s)| Split {
                weight: *w,
                subset: s.clone(),
            })
            .collect(),
        ..TrafficSplit::default()
    }
}

fn by_canary(c: bool) -> Subset {
    Subset {
        canary: Some(c),
        ..Subset::default()
    }
}

fn ports(b: &Backend) -> Vec<i32> {
    b.instances.iter().map(|i| i.port).collect()
}

#[test]
fn tags_read_as_fabio_reads_them() {
    let ok = |t: &str| parse_tag(t).unwrap().unwrap();
    let p = ok("urlprefix-/");
    assert_eq!((p.host.as_str(), p.prefix.as_str()), ("", "/"));
    assert_eq!(p.proto, "http");
    let p = ok("urlprefix-Example.COM:8080/foo strip=/foo proto=https");
    assert_eq!(
        (p.host.as_str(), p.prefix.as_str()),
        ("example.com", "/foo")
    );
    assert_eq!((p.strip.as_str(), p.proto.as_str()), ("/foo", "https"));
    let p = ok("urlprefix-/old redirect=301,https://x.example/new$path");
    assert_eq!(
        p.redirect,
        Some(Redirect {
            code: 301,
            url: "https://x.example/new$path".into()
        })
    );
    let p = ok("urlprefix-/a tlsskipverify=true");
    assert_eq!(p.ignored, ["tlsskipverify=true"]);
    assert!(parse_tag("canary").is_none());
    assert!(parse_tag("urlprefix").is_none());
    for bad in [
        "urlprefix-",
        "urlprefix-   ",
        "urlprefix-:3306",
        "urlprefix-example.com",
        "urlprefix-/a strip=a",
        "urlprefix-/a proto=tcp",
        "urlprefix-/a redirect=200,http://x",
        "urlprefix-/a redirect=301",
        "urlprefix-/a redirect=abc,http://x",
        "urlprefix-/a strip",
        "urlprefix-ho st/a",
        "urlprefix-h:x/a",
        "urlprefix-h?q/a",
    ] {
        let reason = parse_tag(bad).unwrap().expect_err(bad);
        assert!(!reason.is_empty(), "{bad}");
    }
}

#[test]
fn healthy_instances_of_a_service_share_one_route() {
    let mut sick = reg("web", "c", 3, &["urlprefix-/"]);
    sick.healthy = Some(false);
    let mut undecided = reg("web", "d", 4, &["urlprefix-/"]);
    undecided.healthy = None;
    let regs = [
        reg("web", "b", 2, &["urlprefix-/", "v1"]),
        reg("web", "a", 1, &["urlprefix-/"]),
        sick,
        undecided,
        reg("db", "e", 5, &["internal"]),
    ];
    let t = route_table(&regs, &[]);
    assert_eq!(t.routes.len(), 1);
    let r = &t.routes[0];
    assert_eq!(
        (r.host.as_str(), r.prefix.as_str(), r.service.as_str()),
        ("", "/", "web")
    );
    assert_eq!(r.backends.len(), 1);
    assert_eq!(r.backends[0].weight, 100);
    assert_eq!(ports(&r.backends[0]), [1, 2]);
}

#[test]
fn routes_sort_host_first_then_longest_prefix() {
    let regs = [
        reg("a", "1", 1, &["urlprefix-/"]),
        reg("b", "2", 2, &["urlprefix-/api"]),
        reg("c", "3", 3, &["urlprefix-/api/v2 strip=/api/v2"]),
        reg("d", "4", 4, &["urlprefix-b.example/"]),
        reg(
            "e",
            "5",
            5,
            &["urlprefix-a.example/x", "urlprefix-a.example/"],
        ),
    ];
    let t = route_table(&regs, &[]);
    let order: Vec<String> = t
        .routes
        .iter()
        .map(|r| format!("{}{}", r.host, r.prefix))
        .collect();
    assert_eq!(
        order,
        [
            "a.example/x",
            "a.example/",
            "b.example/",
            "/api/v2",
            "/api",
            "/"
        ]
    );
    assert_eq!(t.routes[3].strip, "/api/v2");
}

#[test]
fn a_split_makes_one_backend_per_share() {
    let regs = [
        reg("web", "a", 1, &["urlprefix-/"]),
        reg("web", "b", 2, &["urlprefix-/"]),
        canary(reg("web", "c", 3, &["urlprefix-/", "canary"]), 1),
    ];
    let s = split("web", &[(90, by_canary(false)), (10, by_canary(true))]);
    let t = route_table(&regs, &[s]);
    let b = &t.routes[0].backends;
    assert_eq!(b.len(), 2);
    assert_eq!((b[0].weight, b[0].subset.as_str()), (90, "canary=false"));
    assert_eq!(ports(&b[0]), [1, 2]);
    assert_eq!((b[1].weight, b[1].subset.as_str()), (10, "canary=true"));
    assert_eq!(ports(&b[1]), [3]);
    assert!(b[1].instances[0].canary);
    assert_eq!(b[1].instances[0].job_version, 1);
}

#[test]
fn subsets_select_by_version_tags_and_meta() {
    let mut m = reg("web", "a", 1, &["urlprefix-/", "blue", "x"]);
    m.meta.insert("zone".into(), "eu".into());
    m.job_version = 3;
    let mut other = reg("web", "b", 2, &["urlprefix-/", "blue"]);
    other.meta.insert("zone".into(), "us".into());
    let subset = Subset {
        job_version: Some(3),
        tags: vec!["blue".into(), "x".into()],
        meta: [("zone".to_owned(), "eu".to_owned())].into(),
        ..Subset::default()
    };
    assert!(selects(&subset, &m));
    assert!(!selects(&subset, &other));
    assert!(selects(&Subset::default(), &other));
    let t = route_table(
        &[m, other],
        &[split("web", &[(1, subset), (1, Subset::default())])],
    );
    let b = &t.routes[0].backends;
    assert_eq!(ports(&b[0]), [1]);
    assert_eq!(ports(&b[1]), [1, 2]);
    assert_eq!(b[1].subset, "all");
}

#[test]
fn a_split_applies_only_in_its_namespace_and_to_its_service() {
    let regs = [reg("web", "a", 1, &["urlprefix-/"])];
    let mut elsewhere = split("web", &[(1, by_canary(true))]);
    elsewhere.namespace = Namespace::new("ops");
    let other_service = split("api", &[(1, by_canary(true))]);
    let t = route_table(&regs, &[elsewhere, other_service]);
    assert_eq!(t.routes[0].backends.len(), 1);
    assert_eq!(t.routes[0].backends[0].weight, 100);
}

#[test]
fn a_share_that_selects_nothing_keeps_its_place() {
    let regs = [reg("web", "a", 1, &["urlprefix-/"])];
    let t = route_table(
        &regs,
        &[split(
            "web",
            &[(90, by_canary(false)), (10, by_canary(true))],
        )],
    );
    let b = &t.routes[0].backends;
    assert_eq!(b.len(), 2);
    assert!(b[1].instances.is_empty());
    assert_eq!(b[1].weight, 10);
}

#[test]
fn malformed_tags_and_conflicts_are_reported_not_routed() {
    let regs = [
        reg(
            "web",
            "a",
            1,
            &[
                "urlprefix-/ok",
                "urlprefix-nopath",
                "urlprefix-/x proto=grpc",
            ],
        ),
        reg("api", "b", 2, &["urlprefix-/ok"]),
        reg("web", "c", 3, &["urlprefix-/ok strip=/ok"]),
        reg("web", "d", 4, &["urlprefix-/y auth=basic"]),
    ];
    let built = build(&regs, &[]);
    let routes: Vec<String> = built
        .table
        .routes
        .iter()
        .map(|r| format!("{}{}={}", r.host, r.prefix, r.service))
        .collect();
    // "api" sorts before "web": it keeps /ok; web's claim is reported.
    assert_eq!(routes, ["/ok=api", "/y=web"]);
    let skipped: Vec<&str> = built
        .issues
        .iter()
        .filter(|i| i.skipped)
        .map(|i| i.tag.as_str())
        .collect();
    assert_eq!(
        skipped,
        [
            "urlprefix-nopath",
            "urlprefix-/x proto=grpc",
            "urlprefix-/ok",
            "urlprefix-/ok strip=/ok"
        ]
    );
    let notes: Vec<&TagIssue> = built.issues.iter().filter(|i| !i.skipped).collect();
    assert_eq!(notes.len(), 1);
    assert!(notes[0].reason.contains("auth=basic"), "{}", notes[0]);
}

#[test]
fn the_same_tables_compare_equal_whatever_the_input_order() {
    let mut regs = vec![
        reg("web", "a", 1, &["urlprefix-/"]),
        reg("web", "b", 2, &["urlprefix-/"]),
        reg("api", "c", 3, &["urlprefix-/api"]),
    ];
    let one = route_table(&regs, &[]);
    regs.reverse();
    let two = route_table(&regs, &[]);
    assert_eq!(one, two);
    assert!(same_routes(&one, &two));
}

// ---- properties ----

fn arb_reg() -> impl Strategy<Value = ServiceRegistration> {
    (
        0usize..3,
        "[a-f0-9]{4}",
        1i32..50,
        any::<bool>(),
        0u64..3,
        prop_oneof![Just(Some(true)), Just(Some(false)), Just(None)],
        proptest::sample::subsequence(
            vec![
                "urlprefix-/",
                "urlprefix-/api",
                "urlprefix-h.example/",
                "blue",
                "urlprefix-bad",
            ],
            0..4,
        ),
    )
        .prop_map(|(svc, alloc, port, is_canary, version, healthy, tags)| {
            let mut r = reg(["web", "api", "db"][svc], &alloc, port, &tags);
            r.canary = is_canary;
            r.job_version = version;
            r.healthy = healthy;
            r
        })
}

proptest! {
    #[test]
    fn routes_hold_only_healthy_instances_and_split_weights(
        regs in proptest::collection::vec(arb_reg(), 0..12),
        w_stable in 0u32..1000,
        w_canary in 0u32..1000,
    ) {
        // Registration ids are unique in the store.
        let mut seen = std::collections::HashSet::new();
        let regs: Vec<ServiceRegistration> =
            regs.into_iter().filter(|r| seen.insert(r.id.clone())).collect();
        let splits = vec![split("web", &[(w_stable, by_canary(false)), (w_canary, by_canary(true))])];
        let built = build(&regs, &splits);
        let t = &built.table;
        // Deterministic and order-independent.
        let mut reversed = regs.clone();
        reversed.reverse();
        prop_assert_eq!(&build(&reversed, &splits).table, t);
        for route in &t.routes {
            let members: Vec<&ServiceRegistration> = regs
                .iter()
                .filter(|r| r.service_name == route.service && r.healthy == Some(true))
                .filter(|r| r.tags.iter().any(|tag| {
                    parse_tag(tag).and_then(Result::ok).is_some_and(|p| p.host == route.host && p.prefix == route.prefix)
                }))
                .collect();
            for b in &route.backends {
                for i in &b.instances {
                    // Only healthy instances of the route's service, carrying its tag.
                    prop_assert!(members.iter().any(|r| r.alloc_id == i.alloc_id && r.port == i.port));
                }
                let mut sorted = b.instances.clone();
                sorted.sort_by(|a, b| (&a.address, a.port, &a.alloc_id).cmp(&(&b.address, b.port, &b.alloc_id)));
                prop_assert_eq!(&sorted, &b.instances);
            }
            if route.service == "web" {
                // Weights preserved; canary=true/false partition: every instance in exactly one.
                let weights: Vec<u32> = route.backends.iter().map(|b| b.weight).collect();
                prop_assert_eq!(weights, vec![w_stable, w_canary]);
                let total: usize = route.backends.iter().map(|b| b.instances.len()).sum();
                prop_assert_eq!(total, members.len());
                prop_assert!(route.backends[0].instances.iter().all(|i| !i.canary));
                prop_assert!(route.backends[1].instances.iter().all(|i| i.canary));
            } else {
                prop_assert_eq!(route.backends.len(), 1);
                prop_assert_eq!(route.backends[0].weight, 100);
                prop_assert_eq!(route.backends[0].instances.len(), members.len());
            }
        }
        // Every healthy registration with a good urlprefix tag is routed.
        for r in regs.iter().filter(|r| r.healthy == Some(true)) {
            for p in r.tags.iter().filter_map(|t| parse_tag(t).and_then(Result::ok)) {
                prop_assert!(t.routes.iter().any(|route| route.host == p.host && route.prefix == p.prefix));
            }
        }
        // Sorted: host-specific first, then by host, then longest prefix first.
        for pair in t.routes.windows(2) {
            let key = |r: &Route| (r.host.is_empty(), r.host.clone(), std::cmp::Reverse(r.prefix.len()));
            prop_assert!(key(&pair[0]) <= key(&pair[1]));
        }
        // The malformed tag is reported, never routed.
        prop_assert!(t.routes.iter().all(|r| r.prefix.starts_with('/')));
    }
}
