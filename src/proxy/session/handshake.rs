//! The client's side of the handshake: encryption, startup, token.
//!
//! ```text
//! [direct TLS (ALPN "postgresql")] | [SSLRequest -> 'S' -> TLS] | [GSSENCRequest -> 'N']
//!   -> StartupMessage | CancelRequest
//!   -> AuthenticationCleartextPassword -> PasswordMessage (the token)
//! ```
//!
//! Every read here is exact: rolemint never reads past the message it is
//! waiting for. That is what closes CVE-2021-23214 by construction: bytes a
//! client (or a man in the middle) pipelines after an SSLRequest are not
//! sitting in a plaintext buffer when TLS starts; they are handed to rustls
//! as the ClientHello and fail the handshake. It also means nothing a client
//! pipelined after its password is lost: it is still in the socket (or in
//! rustls) when the splice starts reading.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::wire::{self, StartupPacket};
use crate::error::ClientError;
use crate::pg::backend::CancelSecret;
use crate::secret::Secret;
use crate::tls::{ClientStream, MaybeTls, Socket, ALPN_POSTGRESQL};

/// First byte of a TLS handshake record: a client doing direct TLS
/// (PostgreSQL 17 `sslnegotiation=direct`) sends it instead of a length.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What a client asked for.
pub enum Hello {
    /// A session: the startup parameters, on a stream ready for auth.
    Startup {
        stream: ClientStream,
        startup: Startup,
    },
    /// A cancel request for the session holding this key, with the stream
    /// it came on (closed once the cancel is forwarded).
    Cancel {
        stream: ClientStream,
        process_id: i32,
        secret: CancelSecret,
    },
}

/// A handshake that failed. With a stream, the client is still there and is
/// owed an ErrorResponse; without one, it is gone or not speaking our
/// protocol (a failed TLS handshake, an early EOF) and there is no one to
/// tell.
pub struct Refused {
    pub stream: Option<ClientStream>,
    pub error: ClientError,
    /// Detail for the log.
    pub detail: String,
}

impl Refused {
    fn gone(detail: impl Into<String>) -> Refused {
        Refused {
            stream: None,
            error: ClientError::Protocol("connection closed during handshake"),
            detail: detail.into(),
        }
    }

    fn tell(stream: ClientStream, error: ClientError) -> Refused {
        let detail = error.to_string();
        Refused {
            stream: Some(stream),
            error,
            detail,
        }
    }
}

/// The startup parameters rolemint acts on, and the rest to pass along.
#[derive(Debug, Clone)]
pub struct Startup {
    /// The role template (`user`).
    pub template: String,
    /// The target database (`database`, defaulting to `user`).
    pub database: String,
    /// The allowed session settings (application_name, client_encoding,
    /// options with `-c` settings, ...; see [`crate::pg::backend::params`]), forwarded to
    /// the backend.
    pub forward: Vec<(String, String)>,
    /// The protocol's minor version spoken with the client: 2 when it asked
    /// for 3.2 or newer (a long cancel secret), else 0.
    pub minor: u16,
    /// The client asked for a version rolemint does not speak (above 3.2, or
    /// 3.1, which never existed), or for `_pq_.` options: it is owed a
    /// NegotiateProtocolVersion naming [`Self::minor`] and the options refused.
    pub negotiate: Option<Vec<String>>,
}

impl Startup {
    /// Sorts a startup packet's parameters (sans IO; public for fuzzing).
    pub fn from_params(minor: u16, params: Vec<(String, String)>) -> Result<Startup, ClientError> {
        let mut template = None;
        let mut database = None;
        let mut forward = Vec::with_capacity(params.len());
        let mut unrecognized = Vec::new();
        for (name, value) in params {
            match name.as_str() {
                "user" => template = Some(value),
                "database" => database = Some(value),
                // Protocol options: none is supported. They are refused to
                // the client (NegotiateProtocolVersion) and never sent on,
                // so the backend speaks plain 3.0 or 3.2 through the splice.
                n if n.starts_with("_pq_.") => unrecognized.push(name),
                _ => forward.extend(crate::pg::backend::params::filter(&name, &value)?),
            }
        }
        let template = template
            .filter(|t| !t.is_empty())
            .ok_or(ClientError::NoUser)?;
        let database = database
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| template.clone());
        let spoken = if minor >= wire::LATEST_MINOR {
            wire::LATEST_MINOR
        } else {
            0
        };
        let negotiate = (minor != spoken || !unrecognized.is_empty()).then_some(unrecognized);
        Ok(Startup {
            template,
            database,
            forward,
            minor: spoken,
            negotiate,
        })
    }
}

/// Negotiates encryption and reads the startup packet.
pub async fn accept(tcp: TcpStream, tls: Option<&TlsAcceptor>) -> Result<Hello, Refused> {
    let mut stream = match tls {
        Some(acceptor) if starts_with_tls_record(&tcp).await => direct_tls(tcp, acceptor).await?,
        _ => MaybeTls::Plain(tcp),
    };
    let mut gss_answered = false;
    loop {
        let packet = match read_startup_packet(&mut stream).await {
            Ok(Ok(packet)) => packet,
            Ok(Err(error)) => return Err(Refused::tell(stream, error)),
            Err(e) => return Err(Refused::gone(format!("reading startup packet: {e}"))),
        };
        match packet {
            StartupPacket::SslRequest if !stream.is_tls() => {
                stream = match (stream, tls) {
                    (MaybeTls::Plain(mut tcp), Some(acceptor)) => {
                        write_byte(&mut tcp, b'S').await?;
                        let tls = acceptor
                            .accept(Socket::from(tcp))
                            .await
                            .map_err(|e| Refused::gone(format!("TLS handshake: {e}")))?;
                        MaybeTls::Tls(Box::new(tls))
                    }
                    (MaybeTls::Plain(mut tcp), None) => {
                        write_byte(&mut tcp, b'N').await?;
                        MaybeTls::Plain(tcp)
                    }
                    (tls_stream, _) => tls_stream,
                };
            }
            StartupPacket::SslRequest => {
                return Err(Refused::tell(
                    stream,
                    ClientError::Protocol("SSLRequest inside TLS"),
                ))
            }
            // GSSAPI encryption is not offered; libpq then goes on to
            // SSLRequest or plaintext, as with a PostgreSQL built without it.
            StartupPacket::GssEncRequest if !gss_answered && !stream.is_tls() => {
                gss_answered = true;
                if let MaybeTls::Plain(tcp) = &mut stream {
                    write_byte(tcp, b'N').await?;
                }
            }
            StartupPacket::GssEncRequest => {
                return Err(Refused::tell(
                    stream,
                    ClientError::Protocol("unexpected GSSENCRequest"),
                ))
            }
            StartupPacket::Cancel { process_id, secret } => {
                return Ok(Hello::Cancel {
                    stream,
                    process_id,
                    secret,
                })
            }
            StartupPacket::Startup { minor, params } => {
                return match Startup::from_params(minor, params) {
                    Ok(startup) => Ok(Hello::Startup { stream, startup }),
                    Err(error) => Err(Refused::tell(stream, error)),
                }
            }
        }
    }
}

/// Peeks at the first byte without consuming it.
async fn starts_with_tls_record(tcp: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(tcp.peek(&mut first).await, Ok(1) if first[0] == TLS_HANDSHAKE_RECORD)
}

/// Direct TLS: no SSLRequest, so ALPN is what says this is PostgreSQL. As in
/// PostgreSQL 17, a direct TLS client that does not offer "postgresql" is
/// refused (it might be an HTTPS client aimed at the wrong port).
async fn direct_tls(tcp: TcpStream, acceptor: &TlsAcceptor) -> Result<ClientStream, Refused> {
    let tls = acceptor
        .accept(Socket::from(tcp))
        .await
        .map_err(|e| Refused::gone(format!("direct TLS handshake: {e}")))?;
    if tls.get_ref().1.alpn_protocol() != Some(ALPN_POSTGRESQL) {
        return Err(Refused::gone("direct TLS without ALPN \"postgresql\""));
    }
    Ok(MaybeTls::Tls(Box::new(tls)))
}

async fn write_byte(tcp: &mut TcpStream, b: u8) -> Result<(), Refused> {
    tcp.write_all(&[b])
        .await
        .map_err(|e| Refused::gone(format!("writing encryption response: {e}")))
}

/// Reads one startup packet exactly; the outer error is I/O, the inner one a
/// protocol error the client should be told about.
pub async fn read_startup_packet<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> std::io::Result<Result<StartupPacket, ClientError>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = match wire::startup_packet_len(len) {
        Ok(len) => len,
        Err(e) => return Ok(Err(e)),
    };
    let mut body = vec![0u8; len - 4];
    stream.read_exact(&mut body).await?;
    Ok(wire::parse_startup_packet(&body))
}

/// What a token buffer starts with; typical JWTs fit.
const TOKEN_INITIAL_CAPACITY: usize = 4096;

/// Asks for the password (after a NegotiateProtocolVersion when the client
/// asked for more than 3.0) and reads the token, at most `max_bytes` long.
pub async fn read_token<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    startup: &Startup,
    max_bytes: usize,
) -> Result<Secret, (ClientError, String)> {
    let mut buf = BytesMut::new();
    if let Some(unrecognized) = &startup.negotiate {
        wire::negotiate_protocol_version(startup.minor, unrecognized, &mut buf);
    }
    wire::auth_cleartext_password(&mut buf);
    let io = |e: std::io::Error| {
        (
            ClientError::Protocol("connection closed during authentication"),
            format!("password exchange: {e}"),
        )
    };
    stream.write_all(&buf).await.map_err(io)?;
    stream.flush().await.map_err(io)?;

    let mut header = [0u8; 5];
    stream.read_exact(&mut header).await.map_err(io)?;
    if header[0] != b'p' {
        let e = ClientError::Protocol("expected a password message");
        return Err((e, format!("got message type {:?}", header[0] as char)));
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len < 5 || len - 4 > max_bytes + 1 {
        let e = ClientError::Protocol("password message too long or malformed");
        return Err((e, format!("password message of {len} bytes")));
    }
    // The buffer grows with the bytes that arrive, not with the length the
    // peer announced: a client that claims a megabyte and sends nothing costs
    // nothing.
    let want = len - 4;
    let mut body = Vec::with_capacity(want.min(TOKEN_INITIAL_CAPACITY));
    (&mut *stream)
        .take(want as u64)
        .read_to_end(&mut body)
        .await
        .map_err(io)?;
    if body.len() < want {
        return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    let token = wire::parse_password(&body).map_err(|e| (e.clone(), e.to_string()))?;
    Ok(Secret::new(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn startup_names_template_and_database() {
        let s = Startup::from_params(
            0,
            params(&[
                ("user", "readonly"),
                ("database", "appdb"),
                ("application_name", "psql"),
                ("_pq_.foo", "bar"),
            ]),
        )
        .unwrap();
        assert_eq!(s.template, "readonly");
        assert_eq!(s.database, "appdb");
        assert_eq!(s.forward, params(&[("application_name", "psql")]));
        assert_eq!(s.negotiate, Some(vec!["_pq_.foo".to_string()]));
        let plain = Startup::from_params(0, params(&[("user", "r")])).unwrap();
        assert_eq!(plain.negotiate, None);
        // 3.2 is spoken as asked; a newer minor is told 3.2, 3.1 (which never
        // existed) is told 3.0, as is 3.0 with options.
        for (asked, spoken, negotiate) in [(0, 0, false), (1, 0, true), (2, 2, false), (3, 2, true)]
        {
            let s = Startup::from_params(asked, params(&[("user", "r")])).unwrap();
            assert_eq!(
                (s.minor, s.negotiate.is_some()),
                (spoken, negotiate),
                "3.{asked}"
            );
        }
        assert_eq!(s.minor, 0);
    }

    #[test]
    fn database_defaults_to_user_and_user_is_required() {
        let s = Startup::from_params(0, params(&[("user", "readonly")])).unwrap();
        assert_eq!(s.database, "readonly");
        assert_eq!(
            Startup::from_params(0, params(&[("database", "x")])).unwrap_err(),
            ClientError::NoUser
        );
    }

    #[test]
    fn replication_is_refused() {
        let e = Startup::from_params(0, params(&[("user", "r"), ("replication", "database")]));
        assert!(matches!(e, Err(ClientError::Unsupported(_))));
        assert!(
            Startup::from_params(0, params(&[("user", "r"), ("replication", "false")])).is_ok()
        );
    }
}
