//! The few PostgreSQL messages rolemint speaks itself, sans IO.
//!
//! Everything after the handshake is spliced as bytes; before it, rolemint
//! reads the client's startup packet and password message and writes
//! authentication requests, errors and the swapped BackendKeyData. Decoders
//! take a complete message body and never panic on what a peer sends;
//! encoders append to a caller's buffer, in the style of `postgres-protocol`.

use bytes::{BufMut, BytesMut};

use crate::error::ClientError;
use crate::pg::backend::{CancelSecret, MAX_CANCEL_SECRET};

/// PostgreSQL's own cap on a startup packet (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_PACKET: usize = 10_000;
/// Protocol 3.0.
pub const PROTOCOL_3_0: u32 = 196_608;
/// The newest minor version rolemint speaks with clients: 3.2 (PostgreSQL
/// 18), whose one change from 3.0 is the longer cancel secret, which is
/// rolemint's own whatever the backend speaks.
pub const LATEST_MINOR: u16 = 2;
/// Request codes carried in the version field of a startup packet.
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;
/// Most startup parameters a client may send.
const MAX_STARTUP_PARAMS: usize = 64;

/// The first message of a connection (untyped, length-prefixed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    /// A CancelRequest; the secret is 4 bytes (protocol 3.0) to 256 (3.2).
    Cancel {
        process_id: i32,
        secret: CancelSecret,
    },
    /// Protocol 3.x; a client asking for a minor version above 3.2 is told
    /// 3.2 with NegotiateProtocolVersion, as PostgreSQL 18 does.
    Startup {
        minor: u16,
        params: Vec<(String, String)>,
    },
}

/// Validates the length word of a startup packet: the whole packet,
/// including the four length bytes.
pub fn startup_packet_len(len_word: [u8; 4]) -> Result<usize, ClientError> {
    let len = u32::from_be_bytes(len_word) as usize;
    if !(8..=MAX_STARTUP_PACKET).contains(&len) {
        return Err(ClientError::Protocol("invalid startup packet length"));
    }
    Ok(len)
}

/// Parses a startup packet body (everything after the length word).
pub fn parse_startup_packet(body: &[u8]) -> Result<StartupPacket, ClientError> {
    let Some((code, rest)) = body.split_first_chunk::<4>() else {
        return Err(ClientError::Protocol("startup packet too short"));
    };
    match u32::from_be_bytes(*code) {
        SSL_REQUEST_CODE if rest.is_empty() => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE if rest.is_empty() => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST_CODE if rest.len() <= 4 + MAX_CANCEL_SECRET => {
            let invalid = ClientError::Protocol("invalid cancel request");
            let (pid, secret) = rest.split_first_chunk::<4>().ok_or(invalid.clone())?;
            Ok(StartupPacket::Cancel {
                process_id: i32::from_be_bytes(*pid),
                secret: CancelSecret::new(secret).ok_or(invalid)?,
            })
        }
        CANCEL_REQUEST_CODE => Err(ClientError::Protocol("invalid cancel request")),
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => {
            Err(ClientError::Protocol("invalid encryption request"))
        }
        v if v >> 16 == 3 => Ok(StartupPacket::Startup {
            minor: (v & 0xffff) as u16,
            params: parse_params(rest)?,
        }),
        v => Err(ClientError::UnsupportedProtocol(
            (v >> 16) as u16,
            (v & 0xffff) as u16,
        )),
    }
}

/// `name\0value\0 ... \0`
fn parse_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, ClientError> {
    let mut params = Vec::new();
    loop {
        let (name, after) = cstr(rest)?;
        if name.is_empty() {
            if !after.is_empty() {
                return Err(ClientError::Protocol(
                    "trailing bytes after startup parameters",
                ));
            }
            return Ok(params);
        }
        let (value, after) = cstr(after)?;
        if params.len() == MAX_STARTUP_PARAMS {
            return Err(ClientError::Protocol("too many startup parameters"));
        }
        params.push((name.to_owned(), value.to_owned()));
        rest = after;
    }
}

/// A NUL-terminated UTF-8 string and what follows it.
fn cstr(buf: &[u8]) -> Result<(&str, &[u8]), ClientError> {
    let end = buf
        .iter()
        .position(|b| *b == 0)
        .ok_or(ClientError::Protocol("unterminated string"))?;
    let s = std::str::from_utf8(&buf[..end])
        .map_err(|_| ClientError::Protocol("startup string is not UTF-8"))?;
    Ok((s, &buf[end + 1..]))
}

/// Parses a PasswordMessage body: one NUL-terminated string (the token).
pub fn parse_password(body: &[u8]) -> Result<&str, ClientError> {
    match cstr(body) {
        Ok((token, [])) => Ok(token),
        _ => Err(ClientError::Protocol("malformed password message")),
    }
}

fn message(tag: u8, buf: &mut BytesMut, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let len_at = buf.len();
    buf.put_i32(0);
    body(buf);
    let len = (buf.len() - len_at) as i32;
    buf[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

/// A message of type `tag` with a body read elsewhere (forwarded as is).
pub fn message_with_body(tag: u8, body: &[u8], buf: &mut BytesMut) {
    message(tag, buf, |b| b.extend_from_slice(body));
}

/// NegotiateProtocolVersion (B): rolemint speaks 3.`minor` and none of the
/// `_pq_.` protocol options the client asked for. The first field is the
/// whole version number (major << 16 | minor), as PostgreSQL sends its
/// `FrontendProtocol`; libpq 18 refuses anything below 3.0 as a downgrade.
pub fn negotiate_protocol_version(minor: u16, unrecognized: &[String], buf: &mut BytesMut) {
    message(b'v', buf, |b| {
        b.put_u32(PROTOCOL_3_0 | u32::from(minor));
        b.put_i32(unrecognized.len() as i32);
        for option in unrecognized {
            b.extend_from_slice(option.as_bytes());
            b.put_u8(0);
        }
    });
}

/// AuthenticationCleartextPassword (B): asks the client for its token.
pub fn auth_cleartext_password(buf: &mut BytesMut) {
    message(b'R', buf, |b| b.put_i32(3));
}

/// AuthenticationOk (B).
pub fn auth_ok(buf: &mut BytesMut) {
    message(b'R', buf, |b| b.put_i32(0));
}

/// BackendKeyData (B): the process id and secret the client will cancel with.
/// The secret is 4 bytes for a protocol 3.0 client, longer for 3.2.
pub fn backend_key_data(process_id: i32, secret: &[u8], buf: &mut BytesMut) {
    message(b'K', buf, |b| {
        b.put_i32(process_id);
        b.extend_from_slice(secret);
    });
}

/// ErrorResponse (B) with severity FATAL: the session ends after it.
pub fn fatal(err: &ClientError, buf: &mut BytesMut) {
    error_response("FATAL", err.sqlstate(), &err.to_string(), buf);
}

/// ErrorResponse (B) with the given fields.
pub fn error_response(severity: &str, code: &str, text: &str, buf: &mut BytesMut) {
    message(b'E', buf, |b| {
        for (field, value) in [
            (b'S', severity),
            (b'V', severity),
            (b'C', code),
            (b'M', text),
        ] {
            b.put_u8(field);
            // A NUL inside would end the field early; our texts never hold one
            // but names echoed from a client might.
            b.extend(value.bytes().filter(|c| *c != 0));
            b.put_u8(0);
        }
        b.put_u8(0);
    });
}

/// Tracks message boundaries in a stream of protocol messages as bytes pass
/// through, so that rolemint can inject a message (the lease-expired FATAL)
/// without cutting one in half, and, for a session whose statements are
/// audited, show the audit each client message as it goes by
/// ([`Framer::advance_with`]). It costs a few comparisons per message.
#[derive(Debug, Default, Clone)]
pub struct Framer {
    header: [u8; 5],
    header_len: usize,
    /// Body bytes of the current message still to come.
    remaining: usize,
    /// A length word below 4: the stream cannot be followed any more.
    lost: bool,
}

/// A part of a message, as [`Framer::advance_with`] passes over it.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// A message begins: its type byte and the length of its body.
    Start { tag: u8, body_len: usize },
    /// Some of the current message's body.
    Body(&'a [u8]),
}

impl Framer {
    /// Feeds bytes that were forwarded.
    pub fn advance(&mut self, data: &[u8]) {
        self.advance_with(data, |_| {});
    }

    /// Feeds bytes that were forwarded, showing `seen` every message start
    /// and every piece of body among them, in order.
    pub fn advance_with(&mut self, mut data: &[u8], mut seen: impl FnMut(Piece<'_>)) {
        while !data.is_empty() && !self.lost {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len());
                seen(Piece::Body(&data[..n]));
                self.remaining -= n;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
            self.header_len += n;
            data = &data[n..];
            if self.header_len == 5 {
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]) as usize;
                self.header_len = 0;
                match len.checked_sub(4) {
                    Some(body_len) => {
                        self.remaining = body_len;
                        seen(Piece::Start {
                            tag: self.header[0],
                            body_len,
                        });
                    }
                    None => self.lost = true,
                }
            }
        }
    }

    /// True once a length word below 4 went by: what follows cannot be
    /// split into messages.
    pub fn is_lost(&self) -> bool {
        self.lost
    }

    /// True between two messages.
    pub fn at_boundary(&self) -> bool {
        !self.lost && self.header_len == 0 && self.remaining == 0
    }

    /// How many of `data` can be forwarded without passing the end of the
    /// current message; `None` when the stream cannot be followed.
    pub fn until_boundary(&self, data: &[u8]) -> Option<usize> {
        if self.lost {
            return None;
        }
        if self.header_len == 0 {
            return Some(self.remaining.min(data.len()));
        }
        // Inside a header: its length word decides where the message ends.
        let need = 5 - self.header_len;
        if data.len() < need {
            return Some(data.len());
        }
        let mut probe = self.clone();
        probe.advance(&data[..need]);
        if probe.lost {
            return None;
        }
        Some((need + probe.remaining).min(data.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup_body(params: &[(&str, &str)]) -> Vec<u8> {
        let mut b = PROTOCOL_3_0.to_be_bytes().to_vec();
        for (k, v) in params {
            b.extend_from_slice(k.as_bytes());
            b.push(0);
            b.extend_from_slice(v.as_bytes());
            b.push(0);
        }
        b.push(0);
        b
    }

    #[test]
    fn parses_startup_parameters() {
        let body = startup_body(&[("user", "readonly"), ("database", "appdb")]);
        let StartupPacket::Startup { minor, params } = parse_startup_packet(&body).unwrap() else {
            panic!("not a startup")
        };
        assert_eq!(minor, 0);
        assert_eq!(params[0], ("user".into(), "readonly".into()));
        assert_eq!(params[1], ("database".into(), "appdb".into()));
    }

    #[test]
    fn parses_requests() {
        assert_eq!(
            parse_startup_packet(&SSL_REQUEST_CODE.to_be_bytes()).unwrap(),
            StartupPacket::SslRequest
        );
        let mut cancel = CANCEL_REQUEST_CODE.to_be_bytes().to_vec();
        cancel.extend_from_slice(&7i32.to_be_bytes());
        cancel.extend_from_slice(&(-9i32).to_be_bytes());
        assert_eq!(
            parse_startup_packet(&cancel).unwrap(),
            StartupPacket::Cancel {
                process_id: 7,
                secret: CancelSecret::new(&(-9i32).to_be_bytes()).unwrap()
            }
        );
        // Protocol 3.2: a secret of up to 256 bytes; not shorter than 4,
        // not longer than 256.
        for len in [32, 256] {
            let mut long = CANCEL_REQUEST_CODE.to_be_bytes().to_vec();
            long.extend_from_slice(&7i32.to_be_bytes());
            long.extend(std::iter::repeat_n(0xab, len));
            let StartupPacket::Cancel { secret, .. } = parse_startup_packet(&long).unwrap() else {
                panic!("not a cancel")
            };
            assert_eq!(secret.as_bytes(), vec![0xab; len]);
        }
        for len in [0, 3, 257] {
            let mut bad = CANCEL_REQUEST_CODE.to_be_bytes().to_vec();
            bad.extend_from_slice(&7i32.to_be_bytes());
            bad.extend(std::iter::repeat_n(0xab, len));
            assert!(parse_startup_packet(&bad).is_err(), "{len}");
        }
    }

    #[test]
    fn refuses_malformed_packets_without_panicking() {
        let bad: &[&[u8]] = &[
            b"",
            b"\x00\x03",
            &[0, 3, 0, 0, b'u', b's'],          // unterminated
            &[0, 3, 0, 0, b'u', 0, b'x', 0, 1], // trailing
            &[0, 3, 0, 0, 0xff, 0, b'x', 0, 0], // not UTF-8
            &[4, 210, 22, 46, 0],               // cancel too short
            &[4, 210, 22, 47, 1],               // SSLRequest with a body
            &[0, 2, 0, 0, 0],                   // protocol 2
            &[0, 4, 0, 0, 0],                   // protocol 4
        ];
        for b in bad {
            assert!(parse_startup_packet(b).is_err(), "{b:?}");
        }
        assert!(startup_packet_len(3u32.to_be_bytes()).is_err());
        assert!(startup_packet_len(10_001u32.to_be_bytes()).is_err());
        assert!(parse_password(b"tok").is_err());
        assert!(parse_password(b"tok\0x").is_err());
        assert_eq!(parse_password(b"tok\0").unwrap(), "tok");
    }

    #[test]
    fn newer_minor_versions_are_parsed_for_negotiation() {
        let mut body = startup_body(&[("user", "u")]);
        body[..4].copy_from_slice(&0x0003_0002u32.to_be_bytes());
        let StartupPacket::Startup { minor, .. } = parse_startup_packet(&body).unwrap() else {
            panic!("not a startup")
        };
        assert_eq!(minor, 2);
        let mut buf = BytesMut::new();
        negotiate_protocol_version(0, &["_pq_.x".into()], &mut buf);
        assert_eq!(&buf[..], b"v\0\0\0\x13\0\x03\0\0\0\0\0\x01_pq_.x\0");
        let mut buf = BytesMut::new();
        negotiate_protocol_version(2, &[], &mut buf);
        assert_eq!(&buf[..], b"v\0\0\0\x0c\0\x03\0\x02\0\0\0\0");
    }

    #[test]
    fn too_many_parameters_are_refused() {
        let many: Vec<(String, String)> = (0..100).map(|i| (format!("k{i}"), "v".into())).collect();
        let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert!(parse_startup_packet(&startup_body(&refs)).is_err());
    }

    #[test]
    fn error_response_layout() {
        let mut buf = BytesMut::new();
        fatal(&ClientError::BadToken, &mut buf);
        assert_eq!(buf[0], b'E');
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        assert_eq!(len + 1, buf.len());
        let text = String::from_utf8_lossy(&buf);
        assert!(text.contains("C28P01\0"));
        assert!(text.contains("SFATAL\0"));
    }

    #[test]
    fn framer_follows_boundaries_across_chunks() {
        let mut stream = BytesMut::new();
        auth_ok(&mut stream);
        backend_key_data(1, &[2; 32], &mut stream);
        error_response("ERROR", "XX000", "boom", &mut stream);
        for split in 0..stream.len() {
            let mut f = Framer::default();
            f.advance(&stream[..split]);
            f.advance(&stream[split..]);
            assert!(f.at_boundary(), "split at {split}");
        }
        let mut f = Framer::default();
        f.advance(&stream[..3]);
        assert!(!f.at_boundary());
        // 9 bytes of AuthenticationOk in all: 6 still to come.
        assert_eq!(f.until_boundary(&stream[3..]), Some(6));
        let mut g = Framer::default();
        g.advance(&stream[..9]);
        assert!(g.at_boundary());
        assert_eq!(g.until_boundary(&stream[9..]), Some(0));
    }

    /// A small deterministic generator: the same inputs on every run.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes() {
        let mut state = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200_000 {
            let len = (xorshift(&mut state) % 64) as usize;
            let mut body: Vec<u8> = (0..len).map(|_| xorshift(&mut state) as u8).collect();
            // Half the time, a valid request code in front, so the parameter
            // parser gets exercised too.
            if len >= 4 && xorshift(&mut state) % 2 == 0 {
                body[..4].copy_from_slice(&PROTOCOL_3_0.to_be_bytes());
            }
            let _ = parse_startup_packet(&body);
            let _ = parse_password(&body);
            let mut word = [0u8; 4];
            word.copy_from_slice(&xorshift(&mut state).to_be_bytes()[..4]);
            let _ = startup_packet_len(word);
        }
    }

    #[test]
    fn framer_agrees_with_whole_message_parsing_on_any_split() {
        let mut state = 0x2545_f491_4f6c_dd1d;
        for _ in 0..2_000 {
            // A stream of random messages, fed in random chunks.
            let mut stream = BytesMut::new();
            let mut ends = Vec::new();
            for _ in 0..(xorshift(&mut state) % 8 + 1) {
                let body_len = (xorshift(&mut state) % 300) as usize;
                message(b'D', &mut stream, |b| {
                    b.extend((0..body_len).map(|i| i as u8))
                });
                ends.push(stream.len());
            }
            let mut framer = Framer::default();
            let mut fed = 0;
            while fed < stream.len() {
                let chunk = ((xorshift(&mut state) % 97) as usize + 1).min(stream.len() - fed);
                let data = &stream[fed..fed + chunk];
                let take = framer.until_boundary(data).expect("a well-formed stream");
                // Zero at a boundary; else up to the end of the message in
                // flight, or the whole chunk when it ends later.
                let expected = if fed == 0 || ends.contains(&fed) {
                    0
                } else {
                    let next_end = ends.iter().find(|e| **e > fed).expect("an end ahead");
                    (next_end - fed).min(chunk)
                };
                assert_eq!(take, expected, "at {fed}, chunk {chunk}");
                framer.advance(data);
                fed += chunk;
                assert_eq!(framer.at_boundary(), ends.contains(&fed), "at {fed}");
            }
        }
    }

    #[test]
    fn framer_gives_up_on_an_impossible_length() {
        let mut f = Framer::default();
        f.advance(&[b'Z', 0, 0, 0, 1]);
        assert!(!f.at_boundary());
        assert_eq!(f.until_boundary(b"abc"), None);
    }
}
