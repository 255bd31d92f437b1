//! Logging in to PostgreSQL as the minted role, as a state machine over
//! backend messages, sans IO.
//!
//! ```text
//! Authenticating ─ SASL(SCRAM-SHA-256) ─► Scram ─ SASLContinue ─► Scram ─ SASLFinal ─► ServerProved ─ AuthOk ─┐
//!        │ cleartext / MD5 (allow_weak_auth only) ─► PasswordSent ─ AuthOk ─────────────────────────────────────┤
//!        └ AuthOk (allow_weak_auth only) ───────────────────────────────────────────────────────────────────────┤
//!                                                      Startup ◄─────────────────────────────────────────────────┘
//!                               ParameterStatus / NoticeResponse / BackendKeyData ... ReadyForQuery ─► Ready
//! ```
//!
//! Over TLS the exchange is SCRAM-SHA-256-PLUS when the server offers it
//! (`backend.channel_binding`, [`Binding`]): the `tls-server-end-point`
//! hash of the certificate the backend showed goes into the proof, so a
//! man in the middle who terminates TLS cannot relay the login, and with
//! `require` a login that was not bound is refused, whatever the method.
//!
//! Messages are parsed with `postgres_protocol::message::backend`; the
//! cryptography is `postgres_protocol`'s `ScramSha256`. Everything a
//! malicious or misconfigured backend can do out of order is an error here:
//! asking for a cleartext or MD5 password, letting the role in without a
//! password, AuthenticationOk before the server proved it knows the
//! verifier, a bad server signature, an oversized SCRAM message or iteration
//! count, an ErrorResponse without a SQLSTATE. The driver in
//! [`super`] (`pg/backend/mod.rs`) only moves bytes.

use bytes::{Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{
    ChannelBinding, ScramSha256, SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
};
use postgres_protocol::message::backend::{ErrorResponseBody, Message};
use postgres_protocol::message::frontend;
use tokio_postgres::fallible_iterator::FallibleIterator;

use super::{BackendKey, CancelSecret};
use crate::config::ChannelBinding as BindingMode;
use crate::secret::Secret;

/// Largest SCRAM message accepted from the backend. A server-first-message
/// is a nonce, a salt and a count: about a hundred bytes from PostgreSQL.
pub const MAX_SCRAM_MESSAGE: usize = 1024;
/// Highest SCRAM iteration count accepted: the most `mint.scram_iterations`
/// allows. A backend asking for more would make rolemint burn CPU on its
/// behalf.
pub const MAX_SCRAM_ITERATIONS: u32 = 100_000;
/// Most ParameterStatus and NoticeResponse bytes kept for forwarding.
pub const MAX_STARTUP_BYTES: usize = 1 << 20;
/// The protocol rolemint asks the backend for: 3.2, whose only change from
/// 3.0 is a longer cancel secret in BackendKeyData (PostgreSQL 18). Older
/// servers answer NegotiateProtocolVersion with 3.0 and go on as before.
pub const PROTOCOL_REQUESTED: u32 = 0x0003_0002;
const PROTOCOL_3_0: u32 = 0x0003_0000;

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("backend error {code}: {message}")]
    Server { code: String, message: String },
    #[error("backend asked for {0}, refused (set backend.allow_weak_auth to permit)")]
    WeakAuth(&'static str),
    #[error("SCRAM exchange failed: {0}")]
    Scram(String),
    #[error("protocol error from backend: {0}")]
    Protocol(String),
}

impl LoginError {
    fn protocol(what: impl Into<String>) -> LoginError {
        LoginError::Protocol(what.into())
    }
}

/// Where the login stands.
enum State {
    /// Waiting for the backend's authentication request.
    Authenticating,
    /// SCRAM under way: the client-first (and maybe client-final) message sent.
    Scram(Box<ScramSha256>),
    /// A cleartext or MD5 password was sent (allow_weak_auth only).
    PasswordSent,
    /// SCRAM's server signature verified: the backend knew our verifier.
    ServerProved,
    /// Authenticated: startup messages until ReadyForQuery.
    Startup,
    /// Ready, or failed: nothing more is accepted.
    Done,
}

/// What the driver does next.
pub enum Step {
    /// Send these bytes to the backend, then read the next message.
    Send(BytesMut),
    /// Read the next message.
    Read,
    /// Logged in.
    Ready(Ready),
}

/// The end of a successful login.
pub struct Ready {
    /// ParameterStatus and NoticeResponse messages, as received, to forward.
    pub startup: BytesMut,
    /// The backend's key, for cancel requests.
    pub key: BackendKey,
    /// The ReadyForQuery message, forwarded last.
    pub ready: Bytes,
}

/// What the login knows for SCRAM channel binding.
#[derive(Debug, Clone)]
pub struct Binding {
    /// `backend.channel_binding`.
    pub mode: BindingMode,
    /// The `tls-server-end-point` hash of the backend's certificate
    /// ([`crate::tls::tls_server_end_point`]); `None` without TLS, or for
    /// a certificate that cannot be bound to.
    pub end_point: Option<Vec<u8>>,
}

impl Binding {
    /// No TLS, nothing to bind to: plain SCRAM-SHA-256 (gs2 flag `n`).
    pub fn none() -> Binding {
        Binding {
            mode: BindingMode::Prefer,
            end_point: None,
        }
    }
}

/// A login in progress.
pub struct Flow<'a> {
    user: &'a str,
    password: &'a Secret,
    allow_weak_auth: bool,
    binding: Binding,
    /// The SCRAM exchange under way (or done) is SCRAM-SHA-256-PLUS.
    bound: bool,
    state: State,
    startup: BytesMut,
    key: Option<BackendKey>,
    /// The backend answered NegotiateProtocolVersion (at most once).
    negotiated: bool,
}

impl<'a> Flow<'a> {
    pub fn new(user: &'a str, password: &'a Secret, allow_weak_auth: bool) -> Flow<'a> {
        Flow {
            user,
            password,
            allow_weak_auth,
            binding: Binding::none(),
            bound: false,
            state: State::Authenticating,
            startup: BytesMut::new(),
            key: None,
            negotiated: false,
        }
    }

    /// Binds SCRAM to the TLS connection as `binding` says.
    pub fn with_binding(mut self, binding: Binding) -> Flow<'a> {
        self.binding = binding;
        self
    }

    /// Whether the login was SCRAM-SHA-256-PLUS (channel-bound).
    pub fn bound(&self) -> bool {
        self.bound
    }

    /// The StartupMessage that opens the login.
    pub fn startup_message(
        &self,
        database: &str,
        forward: &[(String, String)],
    ) -> Result<BytesMut, LoginError> {
        let mut out = BytesMut::new();
        let params = [("user", self.user), ("database", database)]
            .into_iter()
            .chain(forward.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        frontend::startup_message(params, &mut out)
            .map_err(|e| LoginError::protocol(format!("startup message: {e}")))?;
        // `postgres_protocol` writes 3.0 after the length word; ask for 3.2.
        out[4..8].copy_from_slice(&PROTOCOL_REQUESTED.to_be_bytes());
        Ok(out)
    }

    /// Takes one whole backend message (tag, length and body).
    pub fn step(&mut self, frame: &[u8]) -> Result<Step, LoginError> {
        let result = self.advance(frame);
        if result.is_err() {
            self.state = State::Done;
        }
        result
    }

    fn advance(&mut self, frame: &[u8]) -> Result<Step, LoginError> {
        // One whole message, its length word true: the parser would
        // otherwise reserve whatever length a frame claims.
        let claimed = frame
            .get(1..5)
            .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize);
        if claimed.is_none() || claimed != frame.len().checked_sub(1) {
            return Err(LoginError::protocol("malformed message length"));
        }
        // Two messages `postgres_protocol` does not parse as protocol 3.2
        // has them: NegotiateProtocolVersion, and a BackendKeyData with a
        // secret longer than four bytes.
        match (frame[0], &self.state) {
            (b'v', State::Authenticating) if !self.negotiated => {
                self.negotiated = true;
                return negotiated(&frame[5..]).map(|()| Step::Read);
            }
            (b'K', State::Startup) if self.key.is_none() => {
                self.key = Some(backend_key(&frame[5..])?);
                return Ok(Step::Read);
            }
            _ => {}
        }
        let mut buf = BytesMut::from(frame);
        let message = match Message::parse(&mut buf) {
            Ok(Some(message)) if buf.is_empty() => message,
            Ok(_) => return Err(LoginError::protocol("malformed message")),
            Err(e) => return Err(LoginError::protocol(format!("malformed message: {e}"))),
        };
        let state = std::mem::replace(&mut self.state, State::Done);
        match (message, state) {
            (Message::ErrorResponse(body), _) => Err(server_error(&body)),
            (Message::AuthenticationOk, state) => self.authenticated(state),
            (Message::AuthenticationCleartextPassword, State::Authenticating) => {
                self.weak("a cleartext password")?;
                self.send_password(self.password.expose().as_bytes())
            }
            (Message::AuthenticationMd5Password(body), State::Authenticating) => {
                self.weak("an MD5 password")?;
                let hash = postgres_protocol::authentication::md5_hash(
                    self.user.as_bytes(),
                    self.password.expose().as_bytes(),
                    body.salt(),
                );
                self.send_password(hash.as_bytes())
            }
            (Message::AuthenticationSasl(body), State::Authenticating) => {
                let mut mechanisms = body.mechanisms();
                let (mut offers_scram, mut offers_plus) = (false, false);
                while let Some(m) = mechanisms
                    .next()
                    .map_err(|e| LoginError::protocol(format!("SASL mechanisms: {e}")))?
                {
                    offers_scram |= m == SCRAM_SHA_256;
                    offers_plus |= m == SCRAM_SHA_256_PLUS;
                }
                let (mechanism, binding) = self.mechanism(offers_plus)?;
                if mechanism == SCRAM_SHA_256 && !offers_scram {
                    return Err(LoginError::Scram(
                        "backend does not offer SCRAM-SHA-256".into(),
                    ));
                }
                self.bound = mechanism == SCRAM_SHA_256_PLUS;
                let scram = ScramSha256::new(self.password.expose().as_bytes(), binding);
                let mut out = BytesMut::new();
                frontend::sasl_initial_response(mechanism, scram.message(), &mut out)
                    .map_err(|e| LoginError::protocol(e.to_string()))?;
                self.state = State::Scram(Box::new(scram));
                Ok(Step::Send(out))
            }
            (Message::AuthenticationSaslContinue(body), State::Scram(mut scram)) => {
                check_server_first(body.data())?;
                scram
                    .update(body.data())
                    .map_err(|e| LoginError::Scram(e.to_string()))?;
                let mut out = BytesMut::new();
                frontend::sasl_response(scram.message(), &mut out)
                    .map_err(|e| LoginError::protocol(e.to_string()))?;
                self.state = State::Scram(scram);
                Ok(Step::Send(out))
            }
            (Message::AuthenticationSaslFinal(body), State::Scram(mut scram)) => {
                if body.data().len() > MAX_SCRAM_MESSAGE {
                    return Err(LoginError::Scram("oversized server-final-message".into()));
                }
                scram
                    .finish(body.data())
                    .map_err(|e| LoginError::Scram(e.to_string()))?;
                self.state = State::ServerProved;
                Ok(Step::Read)
            }
            (Message::ParameterStatus(_) | Message::NoticeResponse(_), state) => {
                if self.startup.len() + frame.len() > MAX_STARTUP_BYTES {
                    return Err(LoginError::protocol("too many startup messages"));
                }
                self.startup.extend_from_slice(frame);
                self.state = state;
                Ok(Step::Read)
            }
            (Message::ReadyForQuery(_), State::Startup) => {
                let key = self.key.take().ok_or_else(|| {
                    LoginError::protocol("no BackendKeyData before ReadyForQuery")
                })?;
                Ok(Step::Ready(Ready {
                    startup: std::mem::take(&mut self.startup),
                    key,
                    ready: Bytes::copy_from_slice(frame),
                }))
            }
            (_, State::Done) => Err(LoginError::protocol("message after the login ended")),
            _ => Err(LoginError::protocol(format!(
                "unexpected message {:?} during login",
                frame.first().map(|t| *t as char).unwrap_or('?')
            ))),
        }
    }

    /// The SASL mechanism and gs2 channel-binding flag, as libpq chooses
    /// them: `-PLUS` when we are on TLS with a certificate to bind to and
    /// the server offers it; flag `y` ("I could bind, you did not offer")
    /// when on TLS and it does not, which a server that did offer `-PLUS`
    /// treats as a downgrade by a man in the middle; flag `n` otherwise.
    fn mechanism(&self, offers_plus: bool) -> Result<(&'static str, ChannelBinding), LoginError> {
        match (self.binding.mode, &self.binding.end_point) {
            (BindingMode::Disable, _) => Ok((SCRAM_SHA_256, ChannelBinding::unsupported())),
            (_, Some(hash)) if offers_plus => Ok((
                SCRAM_SHA_256_PLUS,
                ChannelBinding::tls_server_end_point(hash.clone()),
            )),
            (BindingMode::Require, end_point) => Err(LoginError::Scram(
                if end_point.is_none() {
                    "channel binding required, but the connection has no TLS certificate to bind to"
                } else {
                    "channel binding required, but the backend does not offer SCRAM-SHA-256-PLUS"
                }
                .into(),
            )),
            (BindingMode::Prefer, Some(_)) => Ok((SCRAM_SHA_256, ChannelBinding::unrequested())),
            (BindingMode::Prefer, None) => Ok((SCRAM_SHA_256, ChannelBinding::unsupported())),
        }
    }

    /// AuthenticationOk: allowed after a verified SCRAM exchange, or after a
    /// weak method (or none) when the operator allowed it.
    fn authenticated(&mut self, state: State) -> Result<Step, LoginError> {
        if self.binding.mode == BindingMode::Require && !self.bound {
            // A trust or password login was never bound to anything.
            return Err(LoginError::Scram(
                "channel binding required, but the backend let the role in without it".into(),
            ));
        }
        match state {
            State::ServerProved | State::PasswordSent => {}
            State::Authenticating => self.weak("no authentication (trust)")?,
            // AuthenticationOk before SASLFinal would skip the check that the
            // server knows the verifier.
            State::Scram(_) => {
                return Err(LoginError::Scram(
                    "authentication ended before the server proved itself".into(),
                ))
            }
            State::Startup | State::Done => {
                return Err(LoginError::protocol("a second AuthenticationOk"))
            }
        }
        self.state = State::Startup;
        Ok(Step::Read)
    }

    fn weak(&self, what: &'static str) -> Result<(), LoginError> {
        if self.allow_weak_auth {
            Ok(())
        } else {
            Err(LoginError::WeakAuth(what))
        }
    }

    fn send_password(&mut self, password: &[u8]) -> Result<Step, LoginError> {
        let mut out = BytesMut::new();
        frontend::password_message(password, &mut out)
            .map_err(|e| LoginError::protocol(e.to_string()))?;
        self.state = State::PasswordSent;
        Ok(Step::Send(out))
    }
}

/// NegotiateProtocolVersion's body: the server offers a version below the
/// 3.2 we asked for (3.0 from PostgreSQL 17 and older), and names no
/// protocol option (we sent none).
fn negotiated(body: &[u8]) -> Result<(), LoginError> {
    let bad = || LoginError::protocol("malformed NegotiateProtocolVersion");
    let (version, rest) = body.split_first_chunk::<4>().ok_or_else(bad)?;
    let (count, rest) = rest.split_first_chunk::<4>().ok_or_else(bad)?;
    let version = u32::from_be_bytes(*version);
    if !(PROTOCOL_3_0..PROTOCOL_REQUESTED).contains(&version) {
        return Err(LoginError::protocol(format!(
            "backend offered protocol {}.{} for 3.2",
            version >> 16,
            version & 0xffff
        )));
    }
    if u32::from_be_bytes(*count) != 0 || !rest.is_empty() {
        return Err(LoginError::protocol(
            "backend refused protocol options that were not requested",
        ));
    }
    Ok(())
}

/// BackendKeyData's body: the process id and a secret of 4 to 256 bytes.
fn backend_key(body: &[u8]) -> Result<BackendKey, LoginError> {
    let (pid, secret) = body
        .split_first_chunk::<4>()
        .ok_or_else(|| LoginError::protocol("malformed BackendKeyData"))?;
    let secret = CancelSecret::new(secret)
        .ok_or_else(|| LoginError::protocol("BackendKeyData secret of an invalid length"))?;
    Ok(BackendKey {
        process_id: i32::from_be_bytes(*pid),
        secret,
    })
}

/// Bounds a server-first-message before `ScramSha256` works on it: its
/// size, and the iteration count the client would spend CPU on.
fn check_server_first(data: &[u8]) -> Result<(), LoginError> {
    if data.len() > MAX_SCRAM_MESSAGE {
        return Err(LoginError::Scram("oversized server-first-message".into()));
    }
    let iterations = data
        .split(|b| *b == b',')
        .find_map(|attr| attr.strip_prefix(b"i="))
        .and_then(|i| std::str::from_utf8(i).ok())
        .and_then(|i| i.parse::<u32>().ok());
    match iterations {
        Some(i) if (1..=MAX_SCRAM_ITERATIONS).contains(&i) => Ok(()),
        Some(i) => Err(LoginError::Scram(format!(
            "iteration count {i} above {MAX_SCRAM_ITERATIONS}"
        ))),
        None => Err(LoginError::Scram("no iteration count".into())),
    }
}

/// The SQLSTATE and message of an ErrorResponse, for the log. PostgreSQL
/// always sends a SQLSTATE; a backend that does not is not PostgreSQL.
fn server_error(body: &ErrorResponseBody) -> LoginError {
    let mut code = None;
    let mut message = String::new();
    let mut fields = body.fields();
    loop {
        match fields.next() {
            Ok(Some(field)) => match field.type_() {
                b'C' => code = Some(String::from_utf8_lossy(field.value_bytes()).into_owned()),
                b'M' => message = String::from_utf8_lossy(field.value_bytes()).into_owned(),
                _ => {}
            },
            Ok(None) => break,
            Err(e) => return LoginError::protocol(format!("malformed ErrorResponse: {e}")),
        }
    }
    match code {
        Some(code) => LoginError::Server { code, message },
        None => LoginError::protocol("ErrorResponse without a SQLSTATE"),
    }
}

#[cfg(test)]
mod tests {
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
        let mut flow =
            Flow::new("v-alice", &password, false).with_binding(Binding { mode, end_point });
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
}
