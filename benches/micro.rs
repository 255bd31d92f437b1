//! Micro-benchmarks of the per-connection and per-byte steps, with
//! criterion: `cargo bench --bench micro` (add a name to run one, e.g.
//! `cargo bench --bench micro -- relay`).
//!
//! - `startup/*`: decoding a StartupMessage and a PasswordMessage
//!   (`session::wire`), as every connection does;
//! - `token/verify_hs256`: verifying an HS256 token seen for the first
//!   time (`identity::Verifier`), and `token/verify_hs256_cached` the same
//!   token again, from the verification cache;
//! - `scram/client_first_to_final_*`: the client side of a SCRAM login to
//!   the backend (`postgres_protocol`'s `ScramSha256`: client-first,
//!   server-first in, client-final out, which is where the PBKDF2 runs), at
//!   `mint.scram_iterations`' default (16) and at PostgreSQL's 4096, to show
//!   what the setting buys;
//! - `relay/*`: `session::relay::splice_until` over in-memory pipes, a pgbench
//!   select-only round trip (query up, reply down), one session; `_lease_end`
//!   with a lease end that could fire (a cancellation token) watched beside
//!   the traffic, as every real session's is.

use std::hint::black_box;
use std::time::Duration;

use base64::Engine as _;
use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use rolemint::auth::identity::Verifier;
use rolemint::config::AuthConfig;
use rolemint::lease::end::EndReason;
use rolemint::proxy::session::{relay, wire};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn startup(c: &mut Criterion) {
    let mut body = BytesMut::new();
    body.put_u32(196_608); // protocol 3.0
    for (k, v) in [
        ("user", "readonly"),
        ("database", "appdb"),
        ("application_name", "pgbench"),
        ("client_encoding", "UTF8"),
    ] {
        body.extend_from_slice(k.as_bytes());
        body.put_u8(0);
        body.extend_from_slice(v.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    c.bench_function("startup/parse_startup_packet", |b| {
        b.iter(|| wire::parse_startup_packet(black_box(&body)).is_ok())
    });
    let mut password = vec![b'x'; 600];
    password.push(0);
    c.bench_function("startup/parse_password_600b", |b| {
        b.iter(|| wire::parse_password(black_box(&password)).map(str::len))
    });
}

fn token(c: &mut Criterion) {
    let auth: AuthConfig = toml::from_str(
        r#"
issuer = "rolemint-bench"
audience = "rolemint"
hs256_secret = "bench-secret-0123456789abcdef0123456789"
"#,
    )
    .expect("auth config");
    let verifier = Verifier::from_config(&auth).expect("verifier");
    let groups = vec!["team-a".to_owned(), "team-b".to_owned()];
    let token = rolemint::auth::identity::issue(&auth, "alice", &groups, Duration::from_secs(3600))
        .expect("token");
    // A new verifier per iteration: its cache is empty, so this is the
    // full check of a token seen for the first time.
    c.bench_function("token/verify_hs256", |b| {
        b.iter_batched(
            || Verifier::from_config(&auth).expect("verifier"),
            |fresh| {
                let ok = fresh.verify(black_box(token.expose())).is_ok();
                (fresh, ok)
            },
            BatchSize::SmallInput,
        )
    });
    // The same token again: answered by the verification cache.
    assert!(verifier.verify(token.expose()).is_ok());
    c.bench_function("token/verify_hs256_cached", |b| {
        b.iter(|| verifier.verify(black_box(token.expose())).is_ok())
    });
}

/// The server's half of SCRAM, enough to drive the client to its final
/// message: server-first from the verifier's salt and iterations.
fn scram_login(password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
    let first = String::from_utf8(scram.message().to_vec()).expect("ascii");
    // The nonce may hold "r=" itself, never a comma.
    let (_, nonce) = first.split_once(",r=").expect("client nonce");
    let server_first = format!(
        "r={nonce}serverpart,s={},i={iterations}",
        base64::engine::general_purpose::STANDARD.encode(salt)
    );
    scram
        .update(server_first.as_bytes())
        .expect("server-first accepted");
    scram.message().to_vec()
}

fn scram(c: &mut Criterion) {
    let salt = [7u8; 16];
    let password = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";
    for iterations in [16u32, 4096] {
        c.bench_function(&format!("scram/client_first_to_final_{iterations}"), |b| {
            b.iter(|| scram_login(black_box(password), &salt, iterations))
        });
    }
}

fn relay_loop(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // A pgbench -S transaction: Query up; RowDescription, DataRow,
    // CommandComplete, ReadyForQuery down.
    let query = {
        let mut q = BytesMut::new();
        wire::message_with_body(
            b'Q',
            b"SELECT abalance FROM pgbench_accounts WHERE aid = 42;\0",
            &mut q,
        );
        q
    };
    let reply = {
        let mut r = BytesMut::new();
        wire::message_with_body(b'T', &[0u8; 27], &mut r);
        wire::message_with_body(b'D', &[0, 1, 0, 0, 0, 1, b'0'], &mut r);
        wire::message_with_body(b'C', b"SELECT 1\0", &mut r);
        wire::message_with_body(b'Z', b"I", &mut r);
        r
    };
    let mut group = c.benchmark_group("relay");
    group.throughput(Throughput::Elements(1));
    // A lease that never ends (the client's close ends the splice), and
    // one that could: a cancellation token, as a live lease's end is.
    group.bench_function("select_only_round_trip", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(round_trips(iters, std::future::pending(), &query, &reply))
        })
    });
    group.bench_function("select_only_round_trip_lease_end", |b| {
        b.iter_custom(|iters| {
            let end = tokio_util::sync::CancellationToken::new();
            let ended = async move {
                end.cancelled().await;
                EndReason::RevokedByOperator
            };
            runtime.block_on(round_trips(iters, ended, &query, &reply))
        })
    });
    group.finish();
}

/// `iters` select-only round trips through one splice that ends when
/// `ended` does or the client closes; the time of the round trips.
async fn round_trips(
    iters: u64,
    ended: impl std::future::Future<Output = EndReason> + Send + 'static,
    query: &BytesMut,
    reply: &BytesMut,
) -> Duration {
    let (client, mut client_peer) = tokio::io::duplex(64 * 1024);
    let (backend, mut backend_peer) = tokio::io::duplex(64 * 1024);
    let relay = tokio::spawn(relay::splice_until(
        client,
        backend,
        wire::Framer::default(),
        ended,
        None,
    ));
    let (q, r) = (query.clone(), reply.clone());
    let server = tokio::spawn(async move {
        let mut buf = vec![0; q.len()];
        while backend_peer.read_exact(&mut buf).await.is_ok() {
            if backend_peer.write_all(&r).await.is_err() {
                break;
            }
        }
    });
    let mut buf = vec![0; reply.len()];
    let started = std::time::Instant::now();
    for _ in 0..iters {
        client_peer.write_all(query).await.expect("query");
        client_peer.read_exact(&mut buf).await.expect("reply");
    }
    let elapsed = started.elapsed();
    drop(client_peer);
    let _ = relay.await;
    let _ = server.await;
    elapsed
}

criterion_group!(benches, startup, token, scram, relay_loop);
criterion_main!(benches);
