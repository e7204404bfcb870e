//! The leader compacts history one interval behind, and the watch cache keeps working across it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use caravan::server::{Identity, Server, compactor};
use caravan::store::{self, StoreError, StoreSpec};
use std::sync::Arc;
use std::time::Duration;
use support::eventually;

#[tokio::test]
async fn history_is_compacted_behind_the_leader_and_caches_keep_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = store::open(&StoreSpec::embedded(dir.path())).await.unwrap();
    let identity = Identity {
        name: "s".into(),
        region: "global".into(),
        datacenter: "dc1".into(),
        advertise: "127.0.0.1:1".into(),
    };
    let server = Server::start(Arc::clone(&store), identity).await;
    let leadership = server.start_membership();
    compactor::start(
        Arc::clone(&server),
        leadership.is_leader.clone(),
        Duration::from_millis(100),
    );
    let first = store
        .put("/caravan/global/job/default/a", b"{\"ID\":\"a\"}".to_vec())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "history below the first write is compacted",
        || async {
            matches!(
                store.range("/caravan/", Some(first)).await,
                Err(StoreError::Compacted { .. })
            )
        },
    )
    .await;
    let later = store
        .put("/caravan/global/job/default/b", b"{\"ID\":\"b\"}".to_vec())
        .await
        .unwrap();
    assert!(server.cache.wait_for(later, Duration::from_secs(5)).await);
    assert_eq!(server.cache.jobs.snapshot().objects.len(), 2);
}
