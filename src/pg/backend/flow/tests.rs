//! The backend login state machine against scripted backends: every transition, and every way a backend can misbehave.

use super::*;
use aws_lc_rs::{hmac, pbkdf2};
use base64::Engine as _;
use bytes::BufMut;
use std::num::NonZeroU32;

const PASSWORD: &str = "minted-password";

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn auth(code: i32, rest: &[u8]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(rest);
    msg(b'R', &body)
}

fn after_auth() -> Vec<Vec<u8>> {
    let mut key = BytesMut::new();
    key.put_i32(42);
    key.put_i32(7);
    vec![
        msg(b'S', b"server_version\x0017\x00"),
        msg(b'K', &key),
        msg(b'Z', b"I"),
    ]
}

fn run(flow: &mut Flow<'_>, frames: &[Vec<u8>]) -> Result<Option<Ready>, LoginError> {
    for frame in frames {
        if let Step::Ready(ready) = flow.step(frame)? {
            return Ok(Some(ready));
        }
    }
    Ok(None)
}

/// The server side of SCRAM-SHA-256, enough to drive the client.
struct FakeServer {
    salted: [u8; 32],
    client_first_bare: String,
    server_first: String,
}

impl FakeServer {
    fn first(client_first: &[u8], iterations: u32, nonce_suffix: &str) -> FakeServer {
        let client_first = std::str::from_utf8(client_first).unwrap();
        let bare = client_first.strip_prefix("n,,").unwrap().to_owned();
        let nonce = bare.split(',').find_map(|a| a.strip_prefix("r=")).unwrap();
        let salt = b"0123456789abcdef";
        let mut salted = [0u8; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            NonZeroU32::new(iterations.max(1)).unwrap(),
            salt,
            PASSWORD.as_bytes(),
            &mut salted,
        );
        let b64 = base64::engine::general_purpose::STANDARD;
        let server_first = format!(
            "r={nonce}{nonce_suffix},s={},i={iterations}",
            b64.encode(salt)
        );
        FakeServer {
            salted,
            client_first_bare: bare,
            server_first,
        }
    }

    fn final_message(&self, client_final: &[u8], tamper: bool) -> String {
        let client_final = std::str::from_utf8(client_final).unwrap();
        let without_proof = &client_final[..client_final.find(",p=").unwrap()];
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let server_key = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, &self.salted),
            b"Server Key",
        );
        let mut signature = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, server_key.as_ref()),
            auth_message.as_bytes(),
        )
        .as_ref()
        .to_vec();
        if tamper {
            signature[0] ^= 1;
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        format!("v={}", b64.encode(signature))
    }
}

/// The body of a SASLInitialResponse or SASLResponse the flow sent.
fn sasl_payload(sent: &[u8], initial: bool) -> Vec<u8> {
    let mut body = &sent[5..];
    if initial {
        let nul = body.iter().position(|b| *b == 0).unwrap();
        body = &body[nul + 1 + 4..];
    }
    body.to_vec()
}

fn send(step: Step) -> BytesMut {
    match step {
        Step::Send(b) => b,
        _ => panic!("expected a message to send"),
    }
}

/// The mechanism and gs2 header the flow answers `offered` with.
fn first_answer(
    mode: BindingMode,
    end_point: Option<Vec<u8>>,
    offered: &[u8],
) -> Result<(String, String), LoginError> {
    let password = Secret::new(PASSWORD);
    let mut flow = Flow::new("v-alice", &password, false).with_binding(Binding { mode, end_point });
    let sent = send(flow.step(&auth(10, offered))?);
    let body = &sent[5..];
    let nul = body.iter().position(|b| *b == 0).unwrap();
    let mechanism = String::from_utf8(body[..nul].to_vec()).unwrap();
    let data = String::from_utf8(body[nul + 5..].to_vec()).unwrap();
    let gs2 = data.split(",,").next().unwrap().to_owned();
    Ok((mechanism, gs2))
}

#[test]
fn channel_binding_is_chosen_as_libpq_chooses_it() {
    let both = b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0";
    let plain = b"SCRAM-SHA-256\0\0";
    let hash = Some(vec![7u8; 32]);
    let answer = |mode, end_point: &Option<Vec<u8>>, offered: &[u8]| {
        first_answer(mode, end_point.clone(), offered).map_err(|e| e.to_string())
    };
    let plus = Ok((
        "SCRAM-SHA-256-PLUS".to_owned(),
        "p=tls-server-end-point".to_owned(),
    ));
    let unbound = |flag: &str| Ok(("SCRAM-SHA-256".to_owned(), flag.to_owned()));
    for mode in [BindingMode::Prefer, BindingMode::Require] {
        assert_eq!(answer(mode, &hash, both), plus);
    }
    // On TLS, a server that does not offer -PLUS hears "y": one that
    // did offer it knows its offer was cut out on the way.
    assert_eq!(answer(BindingMode::Prefer, &hash, plain), unbound("y"));
    assert_eq!(answer(BindingMode::Prefer, &None, both), unbound("n"));
    assert_eq!(answer(BindingMode::Disable, &hash, both), unbound("n"));
    for (end_point, offered) in [(&hash, &plain[..]), (&None, &both[..])] {
        let e = answer(BindingMode::Require, end_point, offered).unwrap_err();
        assert!(e.contains("channel binding required"), "{e}");
    }
    // A -PLUS-only offer without a certificate to bind to is refused.
    let e = answer(BindingMode::Prefer, &None, b"SCRAM-SHA-256-PLUS\0\0").unwrap_err();
    assert!(e.contains("does not offer SCRAM-SHA-256"), "{e}");
}

#[test]
fn required_binding_refuses_a_login_that_was_not_bound() {
    let password = Secret::new("pw");
    let binding = Binding {
        mode: BindingMode::Require,
        end_point: Some(vec![1; 32]),
    };
    // A trust login (even where weak logins are allowed) binds nothing.
    let mut flow = Flow::new("v-alice", &password, true).with_binding(binding);
    let e = flow.step(&auth(0, b"")).err().unwrap().to_string();
    assert!(e.contains("channel binding required"), "{e}");
}

/// Runs SCRAM to the server-final message; `tamper` spoils the signature.
fn scram_login(iterations: u32, nonce_suffix: &str, tamper: bool) -> Result<Ready, LoginError> {
    let password = Secret::new(PASSWORD);
    let mut flow = Flow::new("v-alice", &password, false);
    let first = send(flow.step(&auth(10, b"SCRAM-SHA-256\0\0"))?);
    let server = FakeServer::first(&sasl_payload(&first, true), iterations, nonce_suffix);
    let second = send(flow.step(&auth(11, server.server_first.as_bytes()))?);
    let fin = server.final_message(&sasl_payload(&second, false), tamper);
    assert!(matches!(flow.step(&auth(12, fin.as_bytes()))?, Step::Read));
    let mut frames = vec![auth(0, b"")];
    frames.extend(after_auth());
    Ok(run(&mut flow, &frames)?.expect("ready"))
}

/// A trust login (allow_weak_auth) over `frames` before AuthenticationOk
/// and `key` as BackendKeyData's body.
fn weak_login(before: &[Vec<u8>], key: &[u8]) -> Result<Option<Ready>, LoginError> {
    let password = Secret::new("pw");
    let mut flow = Flow::new("v-alice", &password, true);
    let mut frames = before.to_vec();
    frames.push(auth(0, b""));
    frames.push(msg(b'K', key));
    frames.push(msg(b'Z', b"I"));
    run(&mut flow, &frames)
}

#[test]
fn asks_for_protocol_3_2_and_takes_3_0_or_a_long_key() {
    let password = Secret::new("pw");
    let flow = Flow::new("v-alice", &password, false);
    let startup = flow.startup_message("appdb", &[]).unwrap();
    assert_eq!(&startup[4..8], &[0, 3, 0, 2]);

    let mut long = 42i32.to_be_bytes().to_vec();
    long.extend_from_slice(&[9; 32]);
    let ready = weak_login(&[], &long).unwrap().unwrap();
    assert_eq!(ready.key.process_id, 42);
    assert_eq!(ready.key.secret.as_bytes(), &[9; 32]);

    // PostgreSQL 17 and older: NegotiateProtocolVersion to 3.0, no options.
    let v30 = msg(b'v', &[0, 3, 0, 0, 0, 0, 0, 0]);
    let ready = weak_login(std::slice::from_ref(&v30), &[0, 0, 0, 42, 0, 0, 0, 7]).unwrap();
    assert_eq!(ready.unwrap().key.secret.as_bytes(), &[0, 0, 0, 7]);

    // Refused: twice, a version that is not lower than 3.2 or below 3.0,
    // options we never asked for, a truncated body, a key too short or
    // too long.
    let refused: Vec<(Vec<Vec<u8>>, Vec<u8>)> = vec![
        (vec![v30.clone(), v30.clone()], long.clone()),
        (vec![msg(b'v', &[0, 3, 0, 2, 0, 0, 0, 0])], long.clone()),
        (vec![msg(b'v', &[0, 2, 0, 0, 0, 0, 0, 0])], long.clone()),
        (
            vec![msg(b'v', b"\0\x03\0\0\0\0\0\x01_pq_.x\0")],
            long.clone(),
        ),
        (vec![msg(b'v', &[0, 3, 0])], long.clone()),
        (vec![], vec![0, 0, 0, 42, 7]),
        (vec![], [&[0, 0, 0, 42][..], &[1; 257]].concat()),
    ];
    for (before, key) in refused {
        assert!(weak_login(&before, &key).is_err(), "{before:?} {key:?}");
    }
}

#[test]
fn a_scram_login_reaches_ready_with_the_backend_key() {
    let ready = scram_login(16, "serverpart", false).unwrap();
    assert_eq!(
        ready.key,
        BackendKey {
            process_id: 42,
            secret: CancelSecret::new(&7i32.to_be_bytes()).unwrap()
        }
    );
    assert_eq!(&ready.ready[..], &msg(b'Z', b"I")[..]);
    assert_eq!(
        &ready.startup[..],
        &msg(b'S', b"server_version\x0017\x00")[..]
    );
}

#[test]
fn a_bad_server_signature_is_refused() {
    let e = scram_login(16, "serverpart", true).err().unwrap();
    assert!(matches!(e, LoginError::Scram(_)), "{e}");
}

#[test]
fn an_oversized_nonce_or_iteration_count_is_refused() {
    let e = scram_login(16, &"n".repeat(2000), false).err().unwrap();
    assert!(e.to_string().contains("oversized"), "{e}");
    let e = scram_login(MAX_SCRAM_ITERATIONS + 1, "x", false)
        .err()
        .unwrap();
    assert!(e.to_string().contains("iteration count"), "{e}");
}

#[test]
fn authentication_ok_before_the_server_proved_itself_is_refused() {
    let password = Secret::new(PASSWORD);
    let mut flow = Flow::new("v-alice", &password, false);
    flow.step(&auth(10, b"SCRAM-SHA-256\0\0")).unwrap();
    let e = flow.step(&auth(0, b"")).err().unwrap();
    assert!(e.to_string().contains("proved"), "{e}");
    // And the flow stays failed.
    assert!(flow.step(&auth(0, b"")).is_err());
}

#[test]
fn weak_methods_are_refused_unless_allowed() {
    let password = Secret::new(PASSWORD);
    for (frame, what) in [
        (auth(3, b""), "cleartext"),
        (auth(5, b"salt"), "MD5"),
        (auth(0, b""), "trust"),
    ] {
        let mut strict = Flow::new("v-alice", &password, false);
        let e = strict.step(&frame).err().unwrap();
        assert!(
            matches!(e, LoginError::WeakAuth(_)) && e.to_string().contains(what),
            "{e}"
        );
        let mut weak = Flow::new("v-alice", &password, true);
        let mut frames = vec![frame.clone()];
        if what != "trust" {
            assert!(matches!(weak.step(&frame).unwrap(), Step::Send(_)));
            frames = vec![auth(0, b"")];
        }
        frames.extend(after_auth());
        assert!(run(&mut weak, &frames).unwrap().is_some(), "{what}");
    }
}

#[test]
fn sasl_without_scram_sha_256_is_refused() {
    let password = Secret::new(PASSWORD);
    let mut flow = Flow::new("v-alice", &password, false);
    let e = flow
        .step(&auth(10, b"SCRAM-SHA-256-PLUS\0\0"))
        .err()
        .unwrap();
    assert!(e.to_string().contains("does not offer"), "{e}");
}

#[test]
fn error_responses_need_a_sqlstate() {
    let password = Secret::new(PASSWORD);
    let mut flow = Flow::new("v-alice", &password, false);
    let e = flow
        .step(&msg(
            b'E',
            b"SFATAL\0C28P01\0Mpassword authentication failed\0\0",
        ))
        .err()
        .unwrap();
    match e {
        LoginError::Server { code, message } => {
            assert_eq!(code, "28P01");
            assert_eq!(message, "password authentication failed");
        }
        e => panic!("{e}"),
    }
    let mut flow = Flow::new("v-alice", &password, false);
    let e = flow
        .step(&msg(b'E', b"SFATAL\0Mno code\0\0"))
        .err()
        .unwrap();
    assert!(e.to_string().contains("without a SQLSTATE"), "{e}");
}

#[test]
fn out_of_order_and_malformed_messages_are_refused() {
    let password = Secret::new(PASSWORD);
    let cases: Vec<Vec<Vec<u8>>> = vec![
        vec![msg(b'Z', b"I")],                    // ready before auth
        vec![auth(12, b"v=abc")],                 // SASLFinal without SASL
        vec![auth(11, b"r=x,s=c2FsdA==,i=1")],    // SASLContinue without SASL
        vec![auth(7, b"")],                       // GSS
        vec![msg(b'D', b"\0\0")],                 // a data row
        vec![msg(b'R', b"\0\0")],                 // short auth
        vec![msg(b'K', b"\0\0\0\x01\0\0\0\x02")], // key before auth
    ];
    for frames in cases {
        let mut flow = Flow::new("v-alice", &password, false);
        assert!(run(&mut flow, &frames).is_err(), "{frames:?}");
    }
    // ReadyForQuery without a BackendKeyData.
    let mut weak = Flow::new("v-alice", &password, true);
    assert!(run(&mut weak, &[auth(0, b""), msg(b'Z', b"I")]).is_err());
}

/// A small deterministic generator: the same inputs on every run.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn a_frame_claiming_more_than_it_holds_is_refused_without_allocating() {
    let password = Secret::new(PASSWORD);
    let mut flow = Flow::new("v-alice", &password, false);
    let e = flow.step(&[b'R', 0x4c, 0, 0, 0, 0, 0, 0, 0]).err().unwrap();
    assert!(e.to_string().contains("length"), "{e}");
    assert!(flow.step(&[]).is_err());
}

#[test]
fn arbitrary_frames_never_panic() {
    let password = Secret::new(PASSWORD);
    let mut state = 0x1234_5678_9abc_def1;
    for _ in 0..20_000 {
        let mut flow = Flow::new("v-alice", &password, xorshift(&mut state) % 2 == 0);
        for _ in 0..4 {
            let tag = b"RSKZEN"[(xorshift(&mut state) % 6) as usize];
            let len = (xorshift(&mut state) % 24) as usize;
            let body: Vec<u8> = (0..len).map(|_| xorshift(&mut state) as u8).collect();
            let _ = flow.step(&msg(tag, &body));
        }
    }
}
