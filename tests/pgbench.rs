//! pgbench through the proxy: init, TPC-B, select-only, the extended and
//! prepared protocols, and a new connection (a new minted role) per
//! transaction. Zero failures, zero roles left.

mod common;

use std::time::Duration;

use common::{output_text, Harness};

/// Runs pgbench and checks it succeeded without a failed transaction.
async fn pgbench(h: &Harness, template: &str, args: &[&str]) -> String {
    let token = h.token("bench");
    let pgbench = h.cluster.pgbench().to_owned();
    let mut all = vec!["-U", template, "-n"];
    all.extend_from_slice(args);
    all.push("appdb");
    let out = h.run_client(&pgbench, &all, &token, "require").await;
    let text = output_text(&out);
    assert!(out.status.success(), "pgbench {args:?} failed:\n{text}");
    let processed = text
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .unwrap_or_else(|| panic!("no transaction count in:\n{text}"));
    assert!(
        !processed.starts_with("0/") && !processed.starts_with("0\n"),
        "{text}"
    );
    if let Some(failed) = text
        .lines()
        .find_map(|l| l.strip_prefix("number of failed transactions: "))
    {
        assert!(failed.starts_with("0 "), "failed transactions:\n{text}");
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_runs_every_mode_through_the_proxy_and_leaves_no_role() {
    let h = Harness::start().await;
    let token = h.token("bench");
    let bin = h.cluster.pgbench().to_owned();

    // Initialisation through the proxy: the readwrite template acts as
    // app_owner, so the tables it recreates are not owned by the minted role.
    let out = h
        .run_client(
            &bin,
            &["-U", "readwrite", "-i", "-s", "1", "-q", "appdb"],
            &token,
            "require",
        )
        .await;
    assert!(out.status.success(), "pgbench -i:\n{}", output_text(&out));

    pgbench(&h, "readwrite", &["-c", "2", "-t", "50"]).await;
    pgbench(&h, "readonly", &["-S", "-c", "2", "-t", "200"]).await;
    pgbench(
        &h,
        "readonly",
        &["-S", "-M", "extended", "-c", "2", "-t", "200"],
    )
    .await;
    pgbench(
        &h,
        "readonly",
        &["-S", "-M", "prepared", "-c", "2", "-t", "200"],
    )
    .await;
    pgbench(&h, "readwrite", &["-M", "prepared", "-c", "2", "-t", "50"]).await;
    // -C: a new connection, hence a newly minted and dropped role, per transaction.
    pgbench(&h, "readonly", &["-C", "-S", "-c", "2", "-t", "50"]).await;

    let left = h.wait_no_managed_roles(Duration::from_secs(10)).await;
    assert!(left.is_empty(), "roles left behind: {left:?}");
    assert_eq!(h.wait_no_leases().await, 0, "leases left in the registry");
    assert!(h.proxy.cancels.is_empty(), "cancel keys left in the map");
}
