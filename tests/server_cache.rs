//! The watch cache against a real embedded store: it lists, follows writes and deletes in
//! order, keeps its secondary indexes right, and answers blocking queries.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use caravan::server::cache::{Feeder, Informer};
use caravan::server::objects::{Index, Keys, Object, job_index};
use caravan::store::{self, StoreSpec};
use caravan_schemas::alloc::Allocation;
use caravan_schemas::ids::{AllocId, JobId, Namespace, NodeId};
use std::sync::Arc;
use std::time::Duration;

fn alloc(id: &str, job: &str, node: &str) -> Allocation {
    Allocation {
        id: AllocId::new(id),
        namespace: Namespace::new("default"),
        job_id: JobId::new(job),
        node_id: NodeId::new(node),
        ..Allocation::default()
    }
}

#[tokio::test]
async fn the_cache_follows_the_store_and_indexes_allocations() {
    let dir = tempfile::tempdir().unwrap();
    let store = store::open(&StoreSpec::embedded(dir.path())).await.unwrap();
    let keys = Keys::new("global");
    let a1 = alloc("a1", "web", "n1");
    store
        .put(&a1.key(&keys), serde_json::to_vec(&a1).unwrap())
        .await
        .unwrap();

    let informer: Arc<Informer<Allocation>> = Informer::new();
    let feeder = Feeder::default().feed(&keys, &informer);
    tokio::spawn(feeder.run(Arc::clone(&store), keys.root()));
    informer.wait_synced().await;
    let snap = informer.snapshot();
    assert_eq!(snap.objects.len(), 1);
    let got = snap.objects.values().next().unwrap();
    assert!(
        got.create_index > 0 && got.modify_index == got.create_index,
        "indexes come from revisions"
    );

    // Writes to other kinds advance what has been applied, but not this kind's index.
    let other = store
        .put(
            &format!("{}x", keys.prefix(caravan::server::objects::Kind::Job)),
            b"{}".to_vec(),
        )
        .await
        .unwrap();
    assert!(informer.wait_for(other, Duration::from_secs(5)).await);
    assert!(informer.index() < other);

    // A blocking query returns as soon as something changes past its index…
    let before = informer.index();
    let waiter = {
        let informer = Arc::clone(&informer);
        tokio::spawn(async move { informer.wait_past(before, Duration::from_secs(10)).await })
    };
    let a2 = alloc("a2", "web", "n2");
    let rev = store
        .put(&a2.key(&keys), serde_json::to_vec(&a2).unwrap())
        .await
        .unwrap();
    let woke_at = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(woke_at >= rev);
    // …and times out when nothing does.
    let started = std::time::Instant::now();
    let idle = informer
        .wait_past(informer.index(), Duration::from_millis(200))
        .await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(idle, informer.index());

    let snap = informer.snapshot();
    let web: Vec<_> = snap
        .by(Index::ByJob, &job_index("default", "web"))
        .map(|a| a.id.to_string())
        .collect();
    assert_eq!(web, ["a1", "a2"]);
    assert_eq!(snap.by(Index::ByNode, "n2").count(), 1);

    // Moving an allocation re-indexes it; deleting removes it everywhere.
    let moved = alloc("a2", "web", "n3");
    store
        .put(&moved.key(&keys), serde_json::to_vec(&moved).unwrap())
        .await
        .unwrap();
    assert!(store.delete(&a1.key(&keys)).await.unwrap().is_some());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let snap = informer.snapshot();
        if snap.objects.len() == 1 && snap.by(Index::ByNode, "n3").count() == 1 {
            assert_eq!(snap.by(Index::ByNode, "n2").count(), 0);
            assert_eq!(
                snap.by(Index::ByJob, &job_index("default", "web")).count(),
                1
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cache did not catch up"
        );
        informer
            .wait_past(snap.index, Duration::from_millis(500))
            .await;
    }
}

#[tokio::test]
async fn undecodable_values_are_skipped_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let store = store::open(&StoreSpec::embedded(dir.path())).await.unwrap();
    let keys = Keys::new("global");
    store
        .put(
            &format!(
                "{}default/broken",
                keys.prefix(caravan::server::objects::Kind::Alloc)
            ),
            b"{not json".to_vec(),
        )
        .await
        .unwrap();
    let ok = alloc("fine", "web", "n1");
    store
        .put(&ok.key(&keys), serde_json::to_vec(&ok).unwrap())
        .await
        .unwrap();
    let informer: Arc<Informer<Allocation>> = Informer::new();
    let feeder = Feeder::default().feed(&keys, &informer);
    tokio::spawn(feeder.run(Arc::clone(&store), keys.root()));
    informer.wait_synced().await;
    assert_eq!(informer.snapshot().objects.len(), 1);
}
