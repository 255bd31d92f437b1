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
mod tests;
