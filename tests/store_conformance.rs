//! The Store conformance suite: one set of scenarios, run against both backends.
//!
//! - `embedded::<scenario>`: an embedded store in a temporary directory;
//! - `etcd::<scenario>`: a real etcd. Each test starts its own (`tests/support/etcd.rs`) unless
//!   `CARAVAN_TEST_ETCD=host:port` names one; every test works under its own random key prefix.
//!   Scenarios that restart etcd, compact its history or count exact revision increments always
//!   get a private etcd, since they would disturb (or be disturbed by) tests sharing one.
//!
//! If etcd is not installed, the etcd tests fail and say how to install it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use caravan::store::{
    self, CasOutcome, Compare, CompareOp, Event, EventKind, KeyValue, LeaseId, Op, OpResult,
    Revision, Store, StoreError, StoreKind, StoreSpec, Txn, WatchStream,
};
use futures::StreamExt;
use support::etcd::TestEtcd;
use support::eventually;

// ---------------------------------------------------------------------------------------------
// Harness

enum Backend {
    Embedded {
        dir: tempfile::TempDir,
    },
    Etcd {
        /// `None` when the etcd is external (`CARAVAN_TEST_ETCD`).
        etcd: Option<TestEtcd>,
    },
}

struct Harness {
    store: Arc<dyn Store>,
    prefix: String,
    backend: Backend,
}

impl Harness {
    async fn embedded() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = store::open(&StoreSpec::embedded(dir.path())).await.unwrap();
        Harness {
            store,
            prefix: format!("/caravan-test/{}/", support::random_suffix()),
            backend: Backend::Embedded { dir },
        }
    }

    async fn etcd(private: bool) -> Harness {
        let (etcd, endpoint) = match support::etcd::external_endpoint() {
            Some(endpoint) if !private => (None, endpoint),
            _ => {
                let etcd = tokio::task::spawn_blocking(TestEtcd::start).await.unwrap();
                let endpoint = etcd.endpoint();
                (Some(etcd), endpoint)
            }
        };
        let spec: StoreSpec = format!("etcd://{endpoint}").parse().unwrap();
        let store = store::open(&spec)
            .await
            .unwrap_or_else(|e| panic!("connecting to etcd at {endpoint}: {e}"));
        Harness {
            store,
            prefix: format!("/caravan-test/{}/", support::random_suffix()),
            backend: Backend::Etcd { etcd },
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn kind(&self) -> StoreKind {
        self.store.kind()
    }

    /// Embedded: close the store and open the data dir again (a new store object). etcd: kill
    /// the process and start it again on the same port and data dir (the store object stays
    /// and reconnects).
    async fn restart(&mut self) {
        match &mut self.backend {
            Backend::Embedded { dir } => {
                self.store.close().await.unwrap();
                self.store = store::open(&StoreSpec::embedded(dir.path())).await.unwrap();
            }
            Backend::Etcd { etcd } => {
                let mut etcd = etcd.take().expect("restart needs a private etcd");
                let etcd = tokio::task::spawn_blocking(move || {
                    etcd.restart();
                    etcd
                })
                .await
                .unwrap();
                self.backend = Backend::Etcd { etcd: Some(etcd) };
            }
        }
    }
}

/// Declares each scenario once per backend. `private` scenarios get their own etcd.
macro_rules! conformance {
    (shared: [$($shared:ident),* $(,)?], private: [$($private:ident),* $(,)?] $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $shared() {
                    super::$shared(super::Harness::embedded().await).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $private() {
                    super::$private(super::Harness::embedded().await).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $shared() {
                    super::$shared(super::Harness::etcd(false).await).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $private() {
                    super::$private(super::Harness::etcd(true).await).await;
                }
            )*
        }
    };
}

conformance! {
    shared: [
        crud,
        range_at_past_revision,
        txn_compares,
        txn_limits,
        contention,
        watch_ordering,
        lease_expiry,
        lease_keep_alive,
        lease_revoke,
    ],
    private: [
        revisions,
        watch_across_restart,
        compaction,
        lease_survives_restart,
    ],
}

// ---------------------------------------------------------------------------------------------
// Helpers

const WAIT: Duration = Duration::from_secs(15);

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn text(kv: &KeyValue) -> &str {
    std::str::from_utf8(&kv.value).unwrap()
}

async fn value_of(store: &dyn Store, key: &str) -> Option<String> {
    store.get(key).await.unwrap().map(|kv| text(&kv).to_owned())
}

/// The next stream item, failing the test after `WAIT`.
async fn next_item(stream: &mut WatchStream) -> Option<Result<Vec<Event>, StoreError>> {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("timed out waiting for a watch event")
}

/// Reads the stream until an event at revision `>= until`; checks each item holds whole
/// revisions in increasing order (no revision split across items, none repeated).
async fn collect_until(stream: &mut WatchStream, until: Revision, seen: &mut Vec<Event>) {
    while seen.last().is_none_or(|e| e.revision() < until) {
        let events = next_item(stream)
            .await
            .expect("watch ended early")
            .expect("watch failed");
        assert!(!events.is_empty(), "empty watch item");
        assert!(
            events
                .windows(2)
                .all(|w| w[0].revision() <= w[1].revision()),
            "events out of order inside an item: {events:?}"
        );
        if let Some(last) = seen.last() {
            assert!(
                events[0].revision() > last.revision(),
                "revision {} delivered again or out of order after {}",
                events[0].revision(),
                last.revision()
            );
        }
        seen.extend(events);
    }
}

/// A compact description of an event: (revision, kind, key suffix, value, prev value).
type Summary = (Revision, EventKind, String, Option<String>, Option<String>);

fn summarize(h: &Harness, events: &[Event]) -> Vec<Summary> {
    events
        .iter()
        .map(|e| {
            (
                e.revision(),
                e.kind,
                e.kv.key
                    .strip_prefix(&h.prefix)
                    .unwrap_or(&e.kv.key)
                    .to_owned(),
                (e.kind == EventKind::Put).then(|| text(&e.kv).to_owned()),
                e.prev.as_ref().map(|p| text(p).to_owned()),
            )
        })
        .collect()
}

fn put_ev(rev: Revision, key: &str, value: &str, prev: Option<&str>) -> Summary {
    (
        rev,
        EventKind::Put,
        key.to_owned(),
        Some(value.to_owned()),
        prev.map(str::to_owned),
    )
}

fn del_ev(rev: Revision, key: &str, prev: &str) -> Summary {
    (
        rev,
        EventKind::Delete,
        key.to_owned(),
        None,
        Some(prev.to_owned()),
    )
}

/// Retries a put while the store is unavailable (etcd restarting).
async fn put_retrying(store: &dyn Store, key: &str, value: &str) -> Revision {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match store.put(key, b(value)).await {
            Ok(rev) => return rev,
            Err(e) if e.is_retryable() && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("put {key}: {e}"),
        }
    }
}

async fn keys_under(
    store: &dyn Store,
    prefix: &str,
    at: Option<Revision>,
) -> Vec<(String, String)> {
    store
        .range(prefix, at)
        .await
        .unwrap()
        .kvs
        .iter()
        .map(|kv| {
            (
                kv.key.strip_prefix(prefix).unwrap_or(&kv.key).to_owned(),
                text(kv).to_owned(),
            )
        })
        .collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Scenarios

/// put / get / delete / range by prefix, and the provided helpers.
async fn crud(h: Harness) {
    let s = &*h.store;
    let (a, bk, cx) = (h.key("a"), h.key("b"), h.key("c/x"));
    // Shares the prefix's characters but not the prefix: never listed.
    let outside = format!("{}z", h.prefix.trim_end_matches('/'));

    let r1 = s.put(&a, b("1")).await.unwrap();
    let kv = s.get(&a).await.unwrap().unwrap();
    assert_eq!(
        kv,
        KeyValue {
            key: a.clone(),
            value: b("1"),
            create_revision: r1,
            mod_revision: r1,
            version: 1,
            lease: None
        }
    );
    let r2 = s.put(&a, b("2")).await.unwrap();
    assert!(r2 > r1);
    let kv = s.get(&a).await.unwrap().unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r1, r2, 2)
    );

    s.put(&cx, b("3")).await.unwrap();
    let r4 = s.put(&bk, b("4")).await.unwrap();
    s.put(&outside, b("out")).await.unwrap();
    let range = s.range(&h.prefix, None).await.unwrap();
    assert!(range.revision > r4);
    assert_eq!(
        keys_under(s, &h.prefix, None).await,
        pairs(&[("a", "2"), ("b", "4"), ("c/x", "3")]),
        "sorted by key, prefix only"
    );
    assert_eq!(
        keys_under(s, &h.key("c/"), None).await,
        pairs(&[("x", "3")])
    );
    assert_eq!(s.get(&h.key("missing")).await.unwrap(), None);

    let prev = s
        .delete(&a)
        .await
        .unwrap()
        .expect("delete returns the previous value");
    assert_eq!(text(&prev), "2");
    assert_eq!(s.get(&a).await.unwrap(), None);
    assert_eq!(s.delete(&a).await.unwrap(), None);

    // A re-created key starts over.
    let r5 = s.put(&a, b("5")).await.unwrap();
    let kv = s.get(&a).await.unwrap().unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r5, r5, 1)
    );

    let deleted = s.delete_prefix(&h.prefix).await.unwrap();
    let mut names: Vec<&str> = deleted.iter().map(|kv| kv.key.as_str()).collect();
    names.sort();
    assert_eq!(names, vec![a.as_str(), bk.as_str(), cx.as_str()]);
    assert!(s.range(&h.prefix, None).await.unwrap().kvs.is_empty());
    assert_eq!(value_of(s, &outside).await.as_deref(), Some("out"));
    s.delete(&outside).await.unwrap();

    // put_if_absent / compare_and_swap / compare_and_delete.
    let CasOutcome::Written { revision: created } = s.put_if_absent(&a, b("x")).await.unwrap()
    else {
        panic!("put_if_absent on an absent key must write")
    };
    let CasOutcome::Conflict { current } = s.put_if_absent(&a, b("y")).await.unwrap() else {
        panic!("put_if_absent on an existing key must conflict")
    };
    let current = current.expect("the conflict carries the current value");
    assert_eq!((text(&current), current.mod_revision), ("x", created));
    assert!(
        !s.compare_and_swap(&a, created - 1, b("z"))
            .await
            .unwrap()
            .is_written()
    );
    let CasOutcome::Written { revision: swapped } =
        s.compare_and_swap(&a, created, b("z")).await.unwrap()
    else {
        panic!("compare_and_swap with the right revision must write")
    };
    assert!(
        !s.compare_and_delete(&a, created)
            .await
            .unwrap()
            .is_written()
    );
    assert!(
        s.compare_and_delete(&a, swapped)
            .await
            .unwrap()
            .is_written()
    );
    assert_eq!(s.get(&a).await.unwrap(), None);
}

/// MVCC reads at past revisions.
async fn range_at_past_revision(h: Harness) {
    let s = &*h.store;
    let (a, bk, c) = (h.key("a"), h.key("b"), h.key("c"));
    let r1 = s.put(&a, b("a1")).await.unwrap();
    let r2 = s.put(&bk, b("b1")).await.unwrap();
    let r3 = s.put(&a, b("a2")).await.unwrap();
    let r4 = s
        .txn(Txn::new().and_then([Op::delete(&bk)]))
        .await
        .unwrap()
        .revision;
    let r5 = s.put(&c, b("c1")).await.unwrap();

    let at = |rev| keys_under(s, &h.prefix, Some(rev));
    assert_eq!(at(r1 - 1).await, pairs(&[]));
    assert_eq!(at(r1).await, pairs(&[("a", "a1")]));
    assert_eq!(at(r2).await, pairs(&[("a", "a1"), ("b", "b1")]));
    assert_eq!(at(r3).await, pairs(&[("a", "a2"), ("b", "b1")]));
    assert_eq!(at(r4).await, pairs(&[("a", "a2")]));
    assert_eq!(at(r5 - 1).await, pairs(&[("a", "a2")]));
    assert_eq!(at(r5).await, pairs(&[("a", "a2"), ("c", "c1")]));
    assert_eq!(
        keys_under(s, &h.prefix, None).await,
        pairs(&[("a", "a2"), ("c", "c1")])
    );
    assert!(r4 < r5);

    // Past values keep their own metadata; the range reports the revision it was read at.
    let range = s.range(&h.prefix, Some(r2)).await.unwrap();
    assert_eq!(range.revision, r2);
    let a_then = &range.kvs[0];
    assert_eq!(
        (a_then.create_revision, a_then.mod_revision, a_then.version),
        (r1, r1, 1)
    );
    assert_eq!(s.range(&a, Some(r3)).await.unwrap().kvs[0].version, 2);

    let future = s.current_revision().await.unwrap() + 1000;
    assert_eq!(
        s.range(&h.prefix, Some(future)).await.unwrap_err(),
        StoreError::FutureRevision { requested: future }
    );
    assert!(matches!(
        s.range(&h.prefix, Some(0)).await,
        Err(StoreError::InvalidArgument(_))
    ));
}

/// Transaction compares on mod_revision, create_revision, version and value; both branches.
async fn txn_compares(h: Harness) {
    let s = &*h.store;
    let k = h.key("k");
    let r1 = s.put(&k, b("v1")).await.unwrap();

    // mod_revision: success writes and reports the previous value.
    let resp = s
        .txn(
            Txn::new()
                .when([Compare::unchanged(&k, r1)])
                .and_then([Op::put(&k, "v2")])
                .or_else([Op::get(&k)]),
        )
        .await
        .unwrap();
    assert!(resp.succeeded);
    let r2 = resp.revision;
    assert!(r2 > r1);
    match &resp.results[..] {
        [OpResult::Put { prev: Some(prev) }] => assert_eq!(text(prev), "v1"),
        other => panic!("unexpected results {other:?}"),
    }
    // A stale mod_revision fails and runs the failure branch.
    let resp = s
        .txn(
            Txn::new()
                .when([Compare::unchanged(&k, r1)])
                .and_then([Op::put(&k, "v3")])
                .or_else([Op::get(&k)]),
        )
        .await
        .unwrap();
    assert!(!resp.succeeded);
    assert_eq!(resp.get_result(0).map(text), Some("v2"));
    assert_eq!(value_of(s, &k).await.as_deref(), Some("v2"));

    // Ordering ops, with a read-only success branch.
    let holds = |c: Compare| async move {
        let key = c.key.clone();
        s.txn(Txn::new().when([c]).and_then([Op::get(key)]))
            .await
            .unwrap()
            .succeeded
    };
    let kk = k.as_str();
    assert!(holds(Compare::mod_revision(kk, CompareOp::Greater, r1)).await);
    assert!(!holds(Compare::mod_revision(kk, CompareOp::Less, r2)).await);
    assert!(holds(Compare::mod_revision(kk, CompareOp::NotEqual, r1)).await);
    assert!(holds(Compare::create_revision(kk, CompareOp::Equal, r1)).await);
    assert!(holds(Compare::version(kk, CompareOp::Equal, 2)).await);
    assert!(!holds(Compare::version(kk, CompareOp::NotEqual, 2)).await);
    assert!(holds(Compare::version(kk, CompareOp::Greater, 1)).await);
    assert!(!holds(Compare::version(kk, CompareOp::Less, 2)).await);
    assert!(holds(Compare::value(kk, CompareOp::Equal, "v2")).await);
    assert!(!holds(Compare::value(kk, CompareOp::Equal, "nope")).await);
    assert!(holds(Compare::value(kk, CompareOp::NotEqual, "nope")).await);
    assert!(holds(Compare::value(kk, CompareOp::Greater, "v1")).await);
    assert!(!holds(Compare::value(kk, CompareOp::Less, "v1")).await);
    assert!(holds(Compare::exists(kk)).await);

    // An absent key: create_revision, mod_revision and version are 0; a value compare is false.
    let absent = h.key("absent");
    let ab = absent.as_str();
    assert!(holds(Compare::absent(ab)).await);
    assert!(holds(Compare::unchanged(ab, 0)).await);
    assert!(holds(Compare::version(ab, CompareOp::Equal, 0)).await);
    assert!(!holds(Compare::value(ab, CompareOp::NotEqual, "x")).await);
    assert!(!holds(Compare::value(ab, CompareOp::Equal, "")).await);

    // create_revision == 0: create once, then fail.
    let create = || {
        Txn::new()
            .when([Compare::absent(ab)])
            .and_then([Op::put(ab, "first")])
            .or_else([Op::get(ab)])
    };
    assert!(s.txn(create()).await.unwrap().succeeded);
    let again = s.txn(create()).await.unwrap();
    assert!(!again.succeeded);
    assert_eq!(again.get_result(0).map(text), Some("first"));

    // All compares must hold.
    let both = Txn::new()
        .when([
            Compare::version(kk, CompareOp::Equal, 2),
            Compare::value(kk, CompareOp::Equal, "wrong"),
        ])
        .and_then([Op::put(kk, "never")]);
    assert!(!s.txn(both).await.unwrap().succeeded);

    // The failure branch may write too; reads see the writes before them in the transaction.
    let (w1, w2) = (h.key("w/1"), h.key("w/2"));
    let resp = s
        .txn(
            Txn::new()
                .when([Compare::value(kk, CompareOp::Equal, "wrong")])
                .and_then([Op::put(&w1, "no")])
                .or_else([
                    Op::put(&w1, "one"),
                    Op::put(&w2, "two"),
                    Op::get(&w1),
                    Op::range(h.key("w/")),
                ]),
        )
        .await
        .unwrap();
    assert!(!resp.succeeded);
    assert_eq!(resp.get_result(2).map(text), Some("one"));
    match &resp.results[3] {
        OpResult::Range(kvs) => {
            assert_eq!(kvs.iter().map(text).collect::<Vec<_>>(), vec!["one", "two"]);
            assert!(kvs.iter().all(|kv| kv.mod_revision == resp.revision));
        }
        other => panic!("expected a range result, got {other:?}"),
    }
    // No compares: the success branch runs. Delete results carry the deleted values.
    let resp = s
        .txn(Txn::new().and_then([Op::delete(&w1), Op::delete_prefix(h.key("w/"))]))
        .await
        .unwrap();
    assert!(resp.succeeded);
    match &resp.results[..] {
        [
            OpResult::Delete { deleted: d1 },
            OpResult::Delete { deleted: d2 },
        ] => {
            assert_eq!(d1.iter().map(text).collect::<Vec<_>>(), vec!["one"]);
            assert_eq!(d2.iter().map(text).collect::<Vec<_>>(), vec!["two"]);
        }
        other => panic!("unexpected results {other:?}"),
    }
}

/// What every backend rejects before running a transaction.
async fn txn_limits(h: Harness) {
    let s = &*h.store;
    let max = s.max_txn_ops();
    match h.kind() {
        StoreKind::Etcd => assert_eq!(max, 128),
        StoreKind::Embedded => assert!(max >= 128),
    }
    let puts =
        |n: usize| Txn::new().and_then((0..n).map(|i| Op::put(h.key(&format!("m/{i:05}")), "v")));
    let resp = s.txn(puts(max)).await.unwrap();
    assert!(resp.succeeded);
    assert_eq!(s.range(&h.key("m/"), None).await.unwrap().kvs.len(), max);
    assert_eq!(
        s.txn(puts(max + 1)).await.unwrap_err(),
        StoreError::TooManyOps { ops: max + 1, max }
    );
    let compares = Txn::new().when((0..=max).map(|i| Compare::absent(h.key(&format!("c/{i}")))));
    assert!(matches!(
        s.txn(compares).await,
        Err(StoreError::TooManyOps { .. })
    ));

    let k = h.key("k");
    let dup = Txn::new().and_then([Op::put(&k, "1"), Op::put(&k, "2")]);
    assert!(matches!(s.txn(dup).await, Err(StoreError::InvalidTxn(_))));
    let put_del = Txn::new().and_then([Op::put(&k, "1"), Op::delete_prefix(&h.prefix)]);
    assert!(matches!(
        s.txn(put_del).await,
        Err(StoreError::InvalidTxn(_))
    ));
    assert_eq!(
        s.get(&k).await.unwrap(),
        None,
        "a rejected transaction writes nothing"
    );

    // A put attached to an unknown lease fails as a whole.
    let bogus = LeaseId(0x7ead_beef_0001);
    let txn = Txn::new().and_then([Op::put(&k, "1"), Op::put_with_lease(h.key("l"), "2", bogus)]);
    assert_eq!(
        s.txn(txn).await.unwrap_err(),
        StoreError::LeaseNotFound(bogus)
    );
    assert_eq!(s.get(&k).await.unwrap(), None);
}

/// One revision per write transaction; nothing for reads or transactions that change nothing.
async fn revisions(h: Harness) {
    let s = &*h.store;
    let r0 = s.current_revision().await.unwrap();
    let r1 = s.put(&h.key("a"), b("1")).await.unwrap();
    assert_eq!(r1, r0 + 1);
    let resp = s
        .txn(Txn::new().and_then([
            Op::put(h.key("a"), "2"),
            Op::put(h.key("b"), "2"),
            Op::put(h.key("c"), "2"),
        ]))
        .await
        .unwrap();
    assert_eq!(
        resp.revision,
        r0 + 2,
        "one revision for the whole transaction"
    );
    for kv in s.range(&h.prefix, None).await.unwrap().kvs {
        assert_eq!(kv.mod_revision, r0 + 2);
    }
    assert_eq!(s.current_revision().await.unwrap(), r0 + 2);

    // Reads, failed compares with a read-only failure branch, deleting nothing: no new revision.
    let read_only = s
        .txn(Txn::new().and_then([Op::get(h.key("a")), Op::range(&h.prefix)]))
        .await
        .unwrap();
    assert_eq!(read_only.revision, r0 + 2);
    let failed = s
        .txn(
            Txn::new()
                .when([Compare::absent(h.key("a"))])
                .and_then([Op::put(h.key("a"), "x")])
                .or_else([Op::get(h.key("a"))]),
        )
        .await
        .unwrap();
    assert!(!failed.succeeded);
    assert_eq!(failed.revision, r0 + 2);
    assert_eq!(s.delete(&h.key("nothing")).await.unwrap(), None);
    assert!(
        s.delete_prefix(&h.key("nothing/"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.range(&h.prefix, None).await.unwrap().revision, r0 + 2);
    assert_eq!(s.current_revision().await.unwrap(), r0 + 2);

    // A delete of a missing key next to a put: one revision.
    let mixed = s
        .txn(Txn::new().and_then([Op::delete(h.key("nothing")), Op::put(h.key("d"), "1")]))
        .await
        .unwrap();
    assert_eq!(mixed.revision, r0 + 3);
    let deleted = s.delete_prefix(&h.prefix).await.unwrap();
    assert_eq!(deleted.len(), 4);
    assert_eq!(s.current_revision().await.unwrap(), r0 + 4);
}

/// N writers increment one counter through compare-and-swap retry loops, M times each.
async fn contention(h: Harness) {
    const WRITERS: usize = 8;
    const INCREMENTS: usize = 25;
    let counter = h.key("counter");
    h.store.put(&counter, b("0")).await.unwrap();
    let written = Arc::new(AtomicUsize::new(0));
    let conflicts = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let store = h.store.clone();
        let counter = counter.clone();
        let written = written.clone();
        let conflicts = conflicts.clone();
        tasks.push(tokio::spawn(async move {
            let mut current = store.get(&counter).await.unwrap().unwrap();
            for _ in 0..INCREMENTS {
                loop {
                    let n: usize = text(&current).parse().unwrap();
                    match store
                        .compare_and_swap(
                            &counter,
                            current.mod_revision,
                            (n + 1).to_string().into_bytes(),
                        )
                        .await
                        .unwrap()
                    {
                        CasOutcome::Written { revision } => {
                            written.fetch_add(1, Ordering::SeqCst);
                            current = KeyValue {
                                value: (n + 1).to_string().into_bytes(),
                                mod_revision: revision,
                                ..current
                            };
                            break;
                        }
                        CasOutcome::Conflict { current: now } => {
                            conflicts.fetch_add(1, Ordering::SeqCst);
                            current = now.expect("the counter exists");
                        }
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let total = WRITERS * INCREMENTS;
    let kv = h.store.get(&counter).await.unwrap().unwrap();
    assert_eq!(text(&kv), total.to_string());
    assert_eq!(written.load(Ordering::SeqCst), total);
    assert_eq!(
        kv.version as usize,
        total + 1,
        "one version per successful write"
    );
    eprintln!(
        "{}: {total} increments, {} conflicts retried",
        h.kind(),
        conflicts.load(Ordering::SeqCst)
    );
}

/// A watch from R sees every revision >= R exactly once, in order: history first, then live.
async fn watch_ordering(h: Harness) {
    let s = &*h.store;
    let (k1, k2, k3) = (h.key("k1"), h.key("k2"), h.key("k3"));
    let outside = format!("{}-other", h.prefix.trim_end_matches('/'));
    let mut expected: Vec<Summary> = Vec::new();

    // Before the watch.
    s.put(&k1, b("a")).await.unwrap(); // not watched: before `from`
    let from = s.put(&k1, b("b")).await.unwrap();
    expected.push(put_ev(from, "k1", "b", Some("a")));
    let r = s
        .txn(Txn::new().and_then([Op::put(&k2, "x"), Op::put(&k3, "y")]))
        .await
        .unwrap()
        .revision;
    expected.push(put_ev(r, "k2", "x", None));
    expected.push(put_ev(r, "k3", "y", None));
    s.put(&outside, b("ignored")).await.unwrap();
    let r = s
        .txn(Txn::new().and_then([Op::delete(&k2)]))
        .await
        .unwrap()
        .revision;
    expected.push(del_ev(r, "k2", "x"));

    // The history part, read before anything else is written.
    let mut stream = s.watch(&h.prefix, from).await.unwrap();
    let mut seen = Vec::new();
    collect_until(&mut stream, r, &mut seen).await;

    // While the watch runs, from another task.
    let store = h.store.clone();
    let (k1c, k3c, prefix) = (k1.clone(), k3.clone(), h.prefix.clone());
    let writer = tokio::spawn(async move {
        let r5 = store.put(&k3c, b("z")).await.unwrap();
        let r6 = store
            .txn(Txn::new().and_then([Op::delete_prefix(&prefix)]))
            .await
            .unwrap()
            .revision;
        let r7 = store.put(&k1c, b("c")).await.unwrap();
        (r5, r6, r7)
    });
    let (r5, r6, r7) = writer.await.unwrap();
    expected.push(put_ev(r5, "k3", "z", Some("y")));
    expected.push(del_ev(r6, "k1", "b"));
    expected.push(del_ev(r6, "k3", "z"));
    expected.push(put_ev(r7, "k1", "c", None));
    collect_until(&mut stream, r7, &mut seen).await;
    assert_eq!(summarize(&h, &seen), expected);

    // Delete events carry only the key and the deleting revision.
    let del = seen.iter().find(|e| e.kind == EventKind::Delete).unwrap();
    assert_eq!((del.kv.create_revision, del.kv.version), (0, 0));
    assert!(del.kv.value.is_empty());
    // Put events carry full metadata.
    let last = seen.last().unwrap();
    assert_eq!((last.kv.create_revision, last.kv.version), (r7, 1));

    // Nothing else arrives.
    s.put(&outside, b("still ignored")).await.unwrap();
    let marker = s.put(&h.key("marker"), b("m")).await.unwrap();
    let events = next_item(&mut stream).await.unwrap().unwrap();
    assert_eq!(
        summarize(&h, &events),
        vec![put_ev(marker, "marker", "m", None)]
    );
}

/// A watch survives the backend restarting: no revision lost or repeated.
async fn watch_across_restart(mut h: Harness) {
    let key = h.key("k");
    let first = h.store.put(&key, b("0")).await.unwrap();
    let mut written = vec![first];
    let mut stream = h.store.watch(&h.prefix, first).await.unwrap();
    for i in 1..=5 {
        written.push(
            h.store
                .put(&key, format!("{i}").into_bytes())
                .await
                .unwrap(),
        );
    }
    let mut seen = Vec::new();
    collect_until(&mut stream, written[3], &mut seen).await;
    let last_seen = seen.last().unwrap().revision();

    h.restart().await;
    if h.kind() == StoreKind::Embedded {
        // The old store's stream ends; a new watch continues from the last seen revision + 1.
        let end = next_item(&mut stream).await;
        let end = match end {
            Some(Ok(events)) => {
                // Events committed before the close may still be delivered first.
                seen.extend(events);
                next_item(&mut stream).await
            }
            other => other,
        };
        assert!(
            matches!(end, None | Some(Err(StoreError::Closed))),
            "old stream after close: {end:?}"
        );
        let from = seen.last().unwrap().revision() + 1;
        stream = h.store.watch(&h.prefix, from).await.unwrap();
    }
    assert!(last_seen >= written[3]);
    for i in 6..=10 {
        written.push(put_retrying(&*h.store, &key, &format!("{i}")).await);
    }
    collect_until(&mut stream, *written.last().unwrap(), &mut seen).await;
    let revisions: Vec<Revision> = seen.iter().map(Event::revision).collect();
    assert_eq!(revisions, written, "every revision once, in order");
    let values: Vec<String> = seen.iter().map(|e| text(&e.kv).to_owned()).collect();
    assert_eq!(values, (0..=10).map(|i| i.to_string()).collect::<Vec<_>>());
}

/// After compact(R): reads at and watches from revisions < R are Compacted; >= R work.
async fn compaction(h: Harness) {
    let s = &*h.store;
    let k = h.key("k");
    let r1 = s.put(&k, b("v1")).await.unwrap();
    let r2 = s.put(&k, b("v2")).await.unwrap();
    let r3 = s.put(&k, b("v3")).await.unwrap();
    s.compact(r2).await.unwrap();

    let compacted = StoreError::Compacted {
        compact_revision: r2,
    };
    assert_eq!(s.range(&h.prefix, Some(r1)).await.unwrap_err(), compacted);
    assert_eq!(
        keys_under(s, &h.prefix, Some(r2)).await,
        pairs(&[("k", "v2")])
    );

    let mut stream = s.watch(&h.prefix, r1).await.unwrap();
    assert_eq!(next_item(&mut stream).await, Some(Err(compacted.clone())));
    assert!(
        next_item(&mut stream).await.is_none(),
        "the stream ends after Compacted"
    );

    let mut stream = s.watch(&h.prefix, r2).await.unwrap();
    let mut seen = Vec::new();
    collect_until(&mut stream, r3, &mut seen).await;
    assert_eq!(
        summarize(&h, &seen),
        // The value before the change at the compact revision is compacted: no prev.
        vec![
            put_ev(r2, "k", "v2", None),
            put_ev(r3, "k", "v3", Some("v2"))
        ]
    );

    assert_eq!(s.compact(r2).await.unwrap_err(), compacted);
    assert_eq!(s.compact(r1).await.unwrap_err(), compacted);
    let future = s.current_revision().await.unwrap() + 100;
    assert!(matches!(
        s.compact(future).await,
        Err(StoreError::FutureRevision { .. })
    ));
    // Compacting again moves the floor.
    s.compact(r3).await.unwrap();
    assert_eq!(
        s.range(&h.prefix, Some(r2)).await.unwrap_err(),
        StoreError::Compacted {
            compact_revision: r3
        }
    );
}

/// A key attached to a short lease disappears when the lease expires, with a delete event.
async fn lease_expiry(h: Harness) {
    let s = &*h.store;
    let k = h.key("leased");
    let lease = s.grant_lease(Duration::from_secs(1)).await.unwrap();
    let rev = s.put_with_lease(&k, b("v"), lease).await.unwrap();
    assert_eq!(s.get(&k).await.unwrap().unwrap().lease, Some(lease));
    let mut stream = s.watch(&h.prefix, rev + 1).await.unwrap();

    eventually(WAIT, "the leased key to expire", || async {
        s.get(&k).await.unwrap().is_none()
    })
    .await;
    let events = next_item(&mut stream).await.unwrap().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, EventKind::Delete);
    assert_eq!(events[0].kv.key, k);
    assert_eq!(events[0].prev.as_ref().and_then(|p| p.lease), Some(lease));
    assert_eq!(
        s.keep_alive(lease).await.unwrap_err(),
        StoreError::LeaseNotFound(lease)
    );
}

/// keep_alive keeps a short lease (and its key) alive; without it, it expires.
async fn lease_keep_alive(h: Harness) {
    let s = &*h.store;
    let k = h.key("kept");
    let lease = s.grant_lease(Duration::from_secs(1)).await.unwrap();
    s.put_with_lease(&k, b("v"), lease).await.unwrap();
    let until = tokio::time::Instant::now() + Duration::from_millis(3000);
    while tokio::time::Instant::now() < until {
        let ttl = s.keep_alive(lease).await.unwrap();
        assert!(ttl >= Duration::from_secs(1), "{ttl:?}");
        assert!(
            s.get(&k).await.unwrap().is_some(),
            "expired despite keep-alives"
        );
        // The keep-alive period, not a wait for a condition.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(s.get(&k).await.unwrap().is_some());
    eventually(WAIT, "the key to expire once keep-alives stop", || async {
        s.get(&k).await.unwrap().is_none()
    })
    .await;
}

/// revoke deletes the attached keys at once (one revision); the lease is gone afterwards.
async fn lease_revoke(h: Harness) {
    let s = &*h.store;
    let lease = s.grant_lease(Duration::from_secs(60)).await.unwrap();
    let (k1, k2, k3) = (h.key("l1"), h.key("l2"), h.key("free"));
    s.put_with_lease(&k1, b("1"), lease).await.unwrap();
    s.put_with_lease(&k2, b("2"), lease).await.unwrap();
    let last = s.put(&k3, b("3")).await.unwrap();
    // Re-putting without a lease detaches the key.
    let detached = h.key("detached");
    s.put_with_lease(&detached, b("x"), lease).await.unwrap();
    let last = last.max(s.put(&detached, b("y")).await.unwrap());
    let mut stream = s.watch(&h.prefix, last + 1).await.unwrap();

    s.revoke_lease(lease).await.unwrap();
    assert_eq!(s.get(&k1).await.unwrap(), None);
    assert_eq!(s.get(&k2).await.unwrap(), None);
    assert_eq!(value_of(s, &k3).await.as_deref(), Some("3"));
    assert_eq!(value_of(s, &detached).await.as_deref(), Some("y"));
    let events = next_item(&mut stream).await.unwrap().unwrap();
    let mut deleted: Vec<(EventKind, &str)> =
        events.iter().map(|e| (e.kind, e.kv.key.as_str())).collect();
    deleted.sort_by_key(|(_, key)| *key);
    assert_eq!(
        deleted,
        vec![
            (EventKind::Delete, k1.as_str()),
            (EventKind::Delete, k2.as_str())
        ]
    );
    assert_eq!(events[0].revision(), events[1].revision(), "one revision");

    assert_eq!(
        s.revoke_lease(lease).await.unwrap_err(),
        StoreError::LeaseNotFound(lease)
    );
    assert_eq!(
        s.keep_alive(lease).await.unwrap_err(),
        StoreError::LeaseNotFound(lease)
    );
    assert_eq!(
        s.put_with_lease(&k1, b("again"), lease).await.unwrap_err(),
        StoreError::LeaseNotFound(lease)
    );
    let unknown = LeaseId(0x5eed_0000_0042);
    assert_eq!(
        s.revoke_lease(unknown).await.unwrap_err(),
        StoreError::LeaseNotFound(unknown)
    );
    assert_eq!(
        s.keep_alive(unknown).await.unwrap_err(),
        StoreError::LeaseNotFound(unknown)
    );
}

/// Leases and their keys survive a restart (the countdown restarts), then expire.
async fn lease_survives_restart(mut h: Harness) {
    let k = h.key("leased");
    let lease = h.store.grant_lease(Duration::from_secs(2)).await.unwrap();
    h.store.put_with_lease(&k, b("v"), lease).await.unwrap();
    let short = h.store.grant_lease(Duration::from_secs(1)).await.unwrap();
    let before = h.store.current_revision().await.unwrap();

    h.restart().await;
    let kv = eventually_get(&*h.store, &k)
        .await
        .expect("the leased key survives the restart");
    assert_eq!(kv.lease, Some(lease));
    let ttl = h.store.keep_alive(lease).await.unwrap();
    assert!(ttl >= Duration::from_secs(2), "{ttl:?}");
    assert_eq!(h.store.current_revision().await.unwrap(), before);

    let mut stream = h.store.watch(&h.prefix, before + 1).await.unwrap();
    let store = h.store.clone();
    eventually(
        WAIT,
        "the leased key to expire after the restart",
        || async { store.get(&k).await.unwrap().is_none() },
    )
    .await;
    let events = next_item(&mut stream).await.unwrap().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].kind, events[0].kv.key.as_str()),
        (EventKind::Delete, k.as_str())
    );
    eventually(WAIT, "the short lease to expire", || async {
        h.store.keep_alive(short).await.is_err()
    })
    .await;
}

/// `get`, retrying while etcd comes back.
async fn eventually_get(store: &dyn Store, key: &str) -> Option<KeyValue> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match store.get(key).await {
            Ok(kv) => return kv,
            Err(e) if e.is_retryable() && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("get {key}: {e}"),
        }
    }
}
