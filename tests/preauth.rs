//! Before authentication, on the proxy door (issue 18, §7): one source
//! cannot hold every handshake slot, and a flood of refusals cannot fill
//! the audit log.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Harness, Options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];
use tokio::net::{TcpSocket, TcpStream};

/// A TCP connection to `to` from the loopback address `from`.
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// Whether the server closed `stream` within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(within, stream.read(&mut byte)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_cannot_hold_every_handshake_slot() {
    let h = Harness::with(Options {
        max_handshakes: 16,
        max_handshakes_per_source: 4,
        ..Options::default()
    })
    .await;
    // Four idle sockets from 127.0.0.2 hold that source's four slots.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(connect_from("127.0.0.2", h.addr).await);
    }
    // The fifth from the same source waits, holding no handshake slot:
    // it is neither served nor closed...
    let mut fifth = connect_from("127.0.0.2", h.addr).await;
    fifth.write_all(&SSL_REQUEST).await.unwrap();
    let mut answer = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), fifth.read(&mut answer)).await;
    assert!(
        early.is_err(),
        "a fifth handshake from one source was served or closed: {early:?}"
    );
    for s in &mut idle {
        assert!(!closed_within(s, Duration::from_millis(10)).await);
    }
    // ...while another source logs in and runs a query.
    let client = h.session("readonly", "alice").await;
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    drop(client);
    // When one of the four goes, the waiting fifth gets its slot: its
    // SSLRequest is answered.
    drop(idle.pop());
    let served = tokio::time::timeout(Duration::from_secs(5), fifth.read(&mut answer))
        .await
        .expect("the waiting handshake was admitted once its source had a slot")
        .expect("read");
    assert_eq!(served, 1, "an answer to the SSLRequest");
    assert!(matches!(answer[0], b'S' | b'N'), "{answer:?}");
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_tokens_writes_a_bounded_audit_log() {
    let h = Harness::with(Options {
        // The failure limiter opened wide: the session after the flood
        // comes from the same address.
        extra_toml: "[audit]\npath = \"audit.jsonl\"\npre_auth_lines_per_second = 5\n\n\
                     [auth.failure_rate]\nburst = 100000\nper_minute = 100000\n"
            .into(),
        ..Options::default()
    })
    .await;
    let started = std::time::Instant::now();
    for _ in 0..150 {
        let e = h
            .connect("readonly", "appdb", "not-a-token")
            .await
            .expect_err("a bad token");
        assert_eq!(common::sqlstate(&e).as_deref(), Some("28P01"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    // A session after the flood: its lines are not limited.
    let client = h.session("readonly", "alice").await;
    client.simple_query("SELECT 1").await.unwrap();
    drop(client);
    let path = h.config.audit.path.clone().unwrap();
    let written = common::wait_until(Duration::from_secs(10), || async {
        std::fs::read_to_string(&path).is_ok_and(|t| t.contains("\"auth.ok\""))
    })
    .await;
    assert!(written, "the session's auth.ok line was not written");
    let text = std::fs::read_to_string(&path).unwrap();
    let failed = text
        .lines()
        .filter(|l| l.contains("\"event\":\"auth.failed\""))
        .count();
    // At most the burst and what the rate earned while the flood lasted.
    let bound = 5 + (5.0 * elapsed).ceil() as usize + 1;
    assert!(
        failed <= bound && failed < 150,
        "{failed} auth.failed lines for 150 bad tokens in {elapsed:.1} s (bound {bound})"
    );
    assert!(failed >= 5, "{text}");
    let metrics = rolemint::observe::metrics::handle().render();
    let suppressed: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("rolemint_audit_lines_suppressed_total ")?
                .parse()
                .ok()
        })
        .expect("the suppressed counter");
    assert!(
        suppressed >= (150 - bound) as f64,
        "{suppressed} suppressed"
    );
}
