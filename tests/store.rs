//! rolemint's store in the admin database (`src/store/`), against a real
//! PostgreSQL: writes through one instance reach another within a second
//! (LISTEN/NOTIFY), survive a restart, come back after the listening
//! connection is killed, and instances migrating one fresh database at
//! once do not fail.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{wait_until, Harness};
use rolemint::pg::AdminClient;
use rolemint::store::{Kind, Store, StoreError};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// A second instance's store on the harness's database, watching.
async fn second_store(h: &Harness, stop: &CancellationToken) -> Store {
    let store = Store::new(Arc::new(AdminClient::new(&h.config).expect("admin client")));
    store.open().await.expect("second store opens");
    store.start(stop.clone());
    store
}

async fn seen_within(
    store: &Store,
    within: Duration,
    name: &str,
    body: &serde_json::Value,
) -> bool {
    wait_until(within, || async {
        store
            .snapshot()
            .get(Kind::Template, name)
            .is_some_and(|s| &s.body == body)
    })
    .await
}

#[tokio::test]
async fn a_write_through_one_instance_is_seen_by_another_within_a_second() {
    let h = Harness::start().await;
    let stop = CancellationToken::new();
    let other = second_store(&h, &stop).await;
    let mine = &h.shared.store;
    let mut changes = other.changes();
    let before = *changes.borrow_and_update();

    // Several writes, each seen within a second: the periodic check runs
    // every 3 s, so this is the notification's doing.
    for round in 0..3 {
        let body = json!({"db_name": "appdb", "round": round});
        mine.put(Kind::Template, "t1", &body, "operator")
            .await
            .expect("put");
        // Read-your-writes on the writing instance: no wait at all.
        assert_eq!(
            mine.snapshot().get(Kind::Template, "t1").map(|s| &s.body),
            Some(&body)
        );
        assert!(
            seen_within(&other, Duration::from_secs(1), "t1", &body).await,
            "round {round}: the other instance did not see the write within 1 s"
        );
    }
    assert!(
        *changes.borrow_and_update() > before,
        "changes() did not move"
    );
    let stored = other
        .snapshot()
        .get(Kind::Template, "t1")
        .cloned()
        .expect("stored");
    assert_eq!(stored.written_by, "operator");
    assert!(stored.written_at.ends_with('Z'), "{}", stored.written_at);
    // Kinds are separate namespaces.
    assert!(other.snapshot().get(Kind::Policy, "t1").is_none());

    // A delete through the other instance is seen here.
    assert!(other.delete(Kind::Template, "t1").await.expect("delete"));
    assert!(!other
        .delete(Kind::Template, "t1")
        .await
        .expect("delete again"));
    assert!(
        wait_until(Duration::from_secs(1), || async {
            mine.snapshot().get(Kind::Template, "t1").is_none()
        })
        .await,
        "the delete was not seen within 1 s"
    );

    // In PostgreSQL itself: one row per object, notified on the channel.
    let su = h.superuser_on("postgres").await;
    mine.put(
        Kind::Policy,
        "apps",
        &json!({"policy": "x"}),
        "alice@example",
    )
    .await
    .expect("put policy");
    let row = su
        .query_one(
            "SELECT body::text, written_by FROM rolemint.objects WHERE kind = 'policy' AND name = 'apps'",
            &[],
        )
        .await
        .expect("row");
    assert_eq!(row.get::<_, String>(0), r#"{"policy": "x"}"#);
    assert_eq!(row.get::<_, String>(1), "alice@example");
    stop.cancel();
}

#[tokio::test]
async fn a_restarted_instance_reads_what_was_stored_and_a_lost_listener_reconnects() {
    let h = Harness::start().await;
    let body = json!({"db_name": "appdb"});
    h.shared
        .store
        .put(Kind::Template, "kept", &body, "operator")
        .await
        .expect("put");

    // A "restart": a new store on the same database reads it at open.
    let stop = CancellationToken::new();
    let restarted = second_store(&h, &stop).await;
    assert_eq!(
        restarted
            .snapshot()
            .get(Kind::Template, "kept")
            .map(|s| &s.body),
        Some(&body)
    );

    // Kill every listening connection: the watcher reconnects (1 s backoff)
    // and re-reads, so a write made meanwhile is seen.
    let su = h.superuser_on("postgres").await;
    let listeners = || async {
        let n: i64 = su
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'LISTEN \"rolemint_store\"'",
                &[],
            )
            .await
            .expect("count listeners")
            .get(0);
        n
    };
    assert!(
        wait_until(Duration::from_secs(10), || async { listeners().await >= 2 }).await,
        "both instances listen"
    );
    let killed: i64 = su
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE query = 'LISTEN \"rolemint_store\"'",
            &[],
        )
        .await
        .expect("terminate listeners")
        .get(0);
    assert!(
        killed >= 2,
        "expected both instances' listeners, killed {killed}"
    );
    let body2 = json!({"db_name": "appdb", "v": 2});
    h.shared
        .store
        .put(Kind::Template, "kept", &body2, "operator")
        .await
        .expect("put after the kill");
    assert!(
        seen_within(&restarted, Duration::from_secs(5), "kept", &body2).await,
        "the write was not seen after the listener was lost"
    );
    // And it listens again: the next write arrives within a second.
    assert!(
        wait_until(Duration::from_secs(10), || async { listeners().await >= 2 }).await,
        "the listeners did not come back"
    );
    let body3 = json!({"db_name": "appdb", "v": 3});
    h.shared
        .store
        .put(Kind::Template, "kept", &body3, "operator")
        .await
        .expect("put 3");
    assert!(seen_within(&restarted, Duration::from_secs(1), "kept", &body3).await);
    stop.cancel();
}

#[tokio::test]
async fn instances_migrating_a_fresh_database_at_once_do_not_fail() {
    let h = Harness::start().await;
    let su = h.superuser_on("postgres").await;
    su.batch_execute("CREATE DATABASE fresh")
        .await
        .expect("create database fresh");
    su.batch_execute(&format!(
        "GRANT CREATE ON DATABASE fresh TO {}",
        h.demo.admin_user
    ))
    .await
    .expect("grant CREATE on fresh");
    let mut config = h.config.clone();
    config.backend.admin_database = "fresh".into();
    let stores: Vec<Store> = (0..4)
        .map(|_| Store::new(Arc::new(AdminClient::new(&config).expect("admin client"))))
        .collect();
    let opening: Vec<_> = stores
        .iter()
        .map(|s| {
            let s = s.clone();
            tokio::spawn(async move { s.open().await })
        })
        .collect();
    for task in opening {
        let r = task.await.expect("open task");
        assert!(r.is_ok(), "a concurrent migration failed: {r:?}");
    }
    let fresh = h.superuser_on("fresh").await;
    let versions: Vec<i32> = fresh
        .query(
            "SELECT version FROM rolemint.schema_version ORDER BY 1",
            &[],
        )
        .await
        .expect("versions")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expected: Vec<i32> = rolemint::store::MIGRATIONS
        .iter()
        .map(|(v, _)| *v)
        .collect();
    assert_eq!(versions, expected, "each migration applied exactly once");
    // Opening again (a restart) changes nothing.
    stores[0].open().await.expect("reopen");
}

#[tokio::test]
async fn bad_names_and_large_bodies_are_refused() {
    let h = Harness::start().await;
    let store = &h.shared.store;
    for name in ["", "a b", "x$rolemint$", "a'b", &"n".repeat(129)] {
        let e = store
            .put(Kind::Template, name, &json!({}), "operator")
            .await
            .expect_err("a bad name is refused");
        assert!(
            matches!(e, StoreError::Invalid(_)) && e.is_client_error(),
            "{name}: {e}"
        );
    }
    let big = json!({"x": "y".repeat(rolemint::store::MAX_BODY_BYTES)});
    let e = store
        .put(Kind::Template, "big", &big, "operator")
        .await
        .expect_err("a large body is refused");
    assert!(e.is_client_error(), "{e}");
    assert!(store.snapshot().is_empty(Kind::Template));
}
