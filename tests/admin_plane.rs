//! The admin listener cannot be held down (issue 18, §2): idle sockets,
//! probe floods and token guessing against a running proxy in front of a
//! real PostgreSQL.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{output_text, Harness, Options};
use reqwest::StatusCode;
use rolemint::control::auth::sha256_hex;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

const OPERATOR_TOKEN: &str = "rmo_admin-plane-test-operator-token";

async fn with_admin(admin_extra: &str, extra: &str, pool: usize) -> (Harness, SocketAddr) {
    let h = Harness::with(Options {
        extra_toml: format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\noperator_token_sha256 = \"{}\"\n{admin_extra}\n\n\
             [audit]\npath = \"audit.jsonl\"\n\n{extra}\n",
            sha256_hex(OPERATOR_TOKEN)
        ),
        admin_pool_size: pool,
        ..Options::default()
    })
    .await;
    let admin = h.admin_addr.expect("the admin listener is on");
    (h, admin)
}

/// A TCP connection to `to` from the loopback address `from`.
async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().unwrap())?;
    socket.connect(to).await
}

/// Whether the server closed `stream` (EOF or reset) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(within, stream.read(&mut byte)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_sockets_leave_healthz_answering() {
    let (h, admin) = with_admin("header_read_timeout = \"2s\"", "", 8).await;
    // 1,000 sockets that connect and say nothing, from one source
    // (127.0.0.2), more than the listener's 256 connections.
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(connect_from("127.0.0.2", admin).await.expect("connect"));
    }
    // A probe from elsewhere (the orchestrator) answers within a second.
    let http = reqwest::Client::new();
    let probe = http.get(format!("http://{admin}/healthz")).send();
    let answer = tokio::time::timeout(Duration::from_secs(1), probe).await;
    let status = answer
        .expect("/healthz did not answer within 1 s beside 1,000 idle sockets")
        .expect("/healthz answered")
        .status();
    assert_eq!(status, StatusCode::OK);

    // The source keeps at most its 32 connections: every other socket is
    // closed at once, and the 32 when their header timeout (2 s) passes.
    let mut closed_at_once = 0;
    for s in &mut idle {
        if closed_within(s, Duration::from_millis(20)).await {
            closed_at_once += 1;
        }
    }
    assert!(
        closed_at_once >= 1000 - 32,
        "only {closed_at_once} of 1,000 sockets from one source were refused"
    );
    let mut all_closed = true;
    for s in &mut idle {
        all_closed &= closed_within(s, Duration::from_secs(10)).await;
    }
    assert!(all_closed, "an idle socket outlived the header timeout");
    drop(h);
}

/// Whether the server has closed `stream`, without waiting: a pending read
/// means it is open.
async fn is_closed(stream: &mut TcpStream) -> bool {
    closed_within(stream, Duration::from_millis(50)).await
}

/// One `GET /healthz` on `stream`: whether it was answered 200.
async fn healthz_on(stream: &mut TcpStream) -> bool {
    use tokio::io::AsyncWriteExt;
    if stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_head_is_cut_at_the_head_timeout_and_an_idle_connection_at_the_idle_timeout() {
    let head = Duration::from_secs(1);
    let idle = Duration::from_secs(6);
    let (_h, admin) =
        with_admin("header_read_timeout = \"1s\"\nidle_timeout = \"6s\"", "", 8).await;
    // A head that never ends: cut at the head timeout, long before the
    // idle timeout, though a header line keeps coming every 200 ms.
    use tokio::io::AsyncWriteExt;
    // Timed from before the connect: the listener may accept and start its
    // clock before this task runs again after the connect.
    let started = tokio::time::Instant::now();
    let mut slow = TcpStream::connect(admin).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut cut = false;
    while started.elapsed() < idle {
        if slow.write_all(b"X-Trickle: 1\r\n").await.is_err()
            || closed_within(&mut slow, Duration::from_millis(200)).await
        {
            cut = true;
            break;
        }
    }
    let cut_after = started.elapsed();
    assert!(
        cut,
        "a trickled head kept its connection past the idle timeout"
    );
    assert!(
        cut_after >= head,
        "cut after {cut_after:?}, before the head timeout"
    );

    // A kept-alive connection idles past the head timeout and still
    // serves its next request...
    let mut kept = TcpStream::connect(admin).await.unwrap();
    assert!(healthz_on(&mut kept).await);
    let answered = tokio::time::Instant::now();
    while answered.elapsed() < head * 3 {
        assert!(
            !is_closed(&mut kept).await,
            "an idle kept-alive connection was closed after {:?}, within the head timeout's reach",
            answered.elapsed()
        );
    }
    assert!(
        healthz_on(&mut kept).await,
        "no answer on a connection idle for 3x the head timeout"
    );
    // ...and is closed once idle for the idle timeout.
    let answered = tokio::time::Instant::now();
    let mut closed = false;
    while answered.elapsed() < idle * 3 {
        if is_closed(&mut kept).await {
            closed = true;
            break;
        }
    }
    let idled = answered.elapsed();
    assert!(
        closed,
        "an idle kept-alive connection stayed open for {idled:?}"
    );
    assert!(
        idled >= idle - Duration::from_millis(500),
        "closed after {idled:?} idle, before the idle timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_admin_tokens_go_through_the_failure_limiter() {
    let (h, admin) = with_admin("", "[auth.failure_rate]\nburst = 3\nper_minute = 1\n", 8).await;
    let http = reqwest::Client::new();
    let leases = |token: &str| {
        http.get(format!("http://{admin}/v1/rolemint/leases"))
            .header("X-Vault-Token", token.to_owned())
            .send()
    };
    // Each request counts one failure (its token is checked once): three
    // wrong tokens are three 403s, the fourth request is not looked at.
    for _ in 0..3 {
        assert_eq!(
            leases("rmo_wrong").await.unwrap().status(),
            StatusCode::FORBIDDEN
        );
    }
    let limited = leases(OPERATOR_TOKEN).await.unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After: {retry}");
    let body: serde_json::Value = limited.json().await.unwrap();
    assert!(
        body["errors"][0]
            .as_str()
            .unwrap()
            .starts_with("too many failed authentications"),
        "{body}"
    );
    // Probes need no token and are never limited.
    let health = http.get(format!("http://{admin}/healthz")).send().await;
    assert_eq!(health.unwrap().status(), StatusCode::OK);
    // Another source is not slowed: the operator token works from there.
    let other = reqwest::Client::builder()
        .local_address(Some("127.0.0.2".parse().unwrap()))
        .build()
        .unwrap();
    let ok = other
        .get(format!("http://{admin}/v1/rolemint/leases"))
        .header("X-Vault-Token", OPERATOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    // The refusal is audited, without the token.
    let text = std::fs::read_to_string(h.config.audit.path.clone().unwrap()).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("\"status\":429") && l.contains("\"caller\":\"rate-limited\"")),
        "{text}"
    );
    assert!(!text.contains("rmo_wrong") && !text.contains(OPERATOR_TOKEN));
}

/// Lines of the server log that are the probes' queries.
fn probe_queries(log: &str) -> usize {
    log.lines()
        .filter(|l| {
            l.ends_with("statement: SELECT 1")
                || l.contains("SELECT pg_catalog.count(*) FROM pg_catalog.pg_auth_members")
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_flood_during_pgbench_fails_no_session_and_reaches_no_database() {
    // A small admin pool, so that probes sharing it would be felt.
    let (h, admin) = with_admin("", "", 2).await;
    let before = probe_queries(&h.cluster.read_log());
    let stop = Arc::new(AtomicBool::new(false));
    let probes = Arc::new(AtomicUsize::new(0));
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..32 {
        let (stop, probes) = (Arc::clone(&stop), Arc::clone(&probes));
        flood.spawn(async move {
            let http = reqwest::Client::new();
            let path = if i % 2 == 0 { "/readyz" } else { "/metrics" };
            while !stop.load(Ordering::Relaxed) {
                if let Ok(r) = http.get(format!("http://{admin}{path}")).send().await {
                    assert!(r.status().is_success(), "{path}: {}", r.status());
                    let _ = r.bytes().await;
                    probes.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let token = h.token("bench");
    let pgbench = h.cluster.pgbench().to_owned();
    let out = h
        .run_client(
            &pgbench,
            &[
                "-U", "readonly", "-n", "-C", "-S", "-c", "4", "-T", "6", "appdb",
            ],
            &token,
            "require",
        )
        .await;
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = flood.join_next().await {
        done.expect("a probe answered other than 200");
    }
    let text = output_text(&out);
    assert!(out.status.success(), "pgbench failed:\n{text}");
    let failed = text
        .lines()
        .find_map(|l| l.strip_prefix("number of failed transactions: "))
        .unwrap_or("0 ");
    assert!(failed.starts_with("0 "), "failed sessions:\n{text}");
    let probes = probes.load(Ordering::Relaxed);
    // The flood's probes read the background check: about one round of
    // queries every 2 s (2 pings and a count), whatever the number of
    // probes. Before, every probe ran its own.
    let queries = probe_queries(&h.cluster.read_log()) - before;
    eprintln!("{probes} probes, {queries} probe queries in PostgreSQL\n{text}");
    assert!(
        probes > 200,
        "the flood was too thin to show anything: {probes}"
    );
    assert!(
        queries <= 3 * 10,
        "{queries} probe queries reached PostgreSQL for {probes} probes"
    );
}
