//! What a session ran: the statements of a session whose template says
//! `audit_queries = true`, taken from the client's messages as the relay
//! forwards them.
//!
//! Sans-IO: the relay's [`Framer`](super::wire::Framer) shows each client
//! message to [`StatementTap::see`] piece by piece, whatever the reads cut;
//! the tap keeps at most [`MAX_STATEMENT_BYTES`] of a message's body and
//! hands out each finished statement once. Only three messages matter:
//! `Query` (simple protocol), `Parse` (a statement of the extended
//! protocol, named or not) and, with `audit_parameters = true`, `Bind`
//! (the values of one execution). Everything else (`Execute`, `Sync`,
//! `CopyData`, ...) passes without a copy.
//!
//! Parameter values are the one part of a statement that routinely holds
//! personal data or secrets, so they are never kept unless the template
//! asks for them.

use std::collections::VecDeque;

use super::wire::Piece;

/// Most bytes of a message body kept for the audit line; the rest of a
/// longer statement is counted, not kept (`truncated` says so).
pub const MAX_STATEMENT_BYTES: usize = 16 * 1024;

/// Most bytes of one parameter value written, and most values of one Bind.
const MAX_PARAM_BYTES: usize = 256;
const MAX_PARAMS: usize = 64;

/// Which message a statement came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementKind {
    Query,
    Parse,
    Bind,
}

impl StatementKind {
    /// The audit line's `kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            StatementKind::Query => "query",
            StatementKind::Parse => "parse",
            StatementKind::Bind => "bind",
        }
    }
}

/// One audited client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// 1, 2, 3, ... per session, in the order the client sent them.
    pub seq: u64,
    pub kind: StatementKind,
    /// The prepared statement's name (`Parse`, `Bind`); empty for the
    /// unnamed one.
    pub name: Option<String>,
    /// The SQL text (`Query`, `Parse`).
    pub text: Option<String>,
    /// The values of a `Bind`: text as sent, binary as `\x` hex, NULL as
    /// `None`; each cut at 256 bytes, at most 64 of them.
    pub params: Option<Vec<Option<String>>>,
    /// The message was longer than what was kept.
    pub truncated: bool,
}

/// The message being read.
struct Partial {
    kind: StatementKind,
    kept: Vec<u8>,
    /// Body bytes still to come.
    left: usize,
    truncated: bool,
}

/// Follows a session's client messages and collects its statements.
pub struct StatementTap {
    /// Keep `Bind` values (`audit_parameters`).
    params: bool,
    current: Option<Partial>,
    /// Body bytes of a message that is not kept, still to come.
    skipping: usize,
    seq: u64,
    /// Finished, not yet taken. The relay takes them after every write, so
    /// this holds at most one read's worth of messages.
    done: VecDeque<Statement>,
}

impl StatementTap {
    pub fn new(params: bool) -> StatementTap {
        StatementTap {
            params,
            current: None,
            skipping: 0,
            seq: 0,
            done: VecDeque::new(),
        }
    }

    /// One piece of the client's stream, as the framer saw it.
    pub fn see(&mut self, piece: Piece<'_>) {
        match piece {
            Piece::Start { tag, body_len } => {
                let kind = match tag {
                    b'Q' => Some(StatementKind::Query),
                    b'P' => Some(StatementKind::Parse),
                    b'B' if self.params => Some(StatementKind::Bind),
                    _ => None,
                };
                match kind {
                    Some(kind) => {
                        let keep = body_len.min(MAX_STATEMENT_BYTES);
                        self.current = Some(Partial {
                            kind,
                            kept: Vec::with_capacity(keep),
                            left: body_len,
                            truncated: body_len > MAX_STATEMENT_BYTES,
                        });
                        if body_len == 0 {
                            self.finish();
                        }
                    }
                    None => self.skipping = body_len,
                }
            }
            Piece::Body(bytes) => {
                if self.skipping > 0 {
                    self.skipping -= bytes.len().min(self.skipping);
                    return;
                }
                let Some(partial) = &mut self.current else {
                    return;
                };
                let room = MAX_STATEMENT_BYTES - partial.kept.len();
                partial
                    .kept
                    .extend_from_slice(&bytes[..bytes.len().min(room)]);
                partial.left -= bytes.len().min(partial.left);
                if partial.left == 0 {
                    self.finish();
                }
            }
        }
    }

    /// The statements finished since the last call, in order.
    pub fn take(&mut self) -> impl Iterator<Item = Statement> + '_ {
        self.done.drain(..)
    }

    fn finish(&mut self) {
        let Some(partial) = self.current.take() else {
            return;
        };
        self.seq += 1;
        let mut body = Fields(&partial.kept);
        let mut statement = Statement {
            seq: self.seq,
            kind: partial.kind,
            name: None,
            text: None,
            params: None,
            truncated: partial.truncated,
        };
        match partial.kind {
            StatementKind::Query => statement.text = Some(body.string()),
            StatementKind::Parse => {
                statement.name = Some(body.string());
                statement.text = Some(body.string());
            }
            StatementKind::Bind => {
                let _portal = body.string();
                statement.name = Some(body.string());
                let (params, cut) = bind_values(&mut body);
                statement.params = Some(params);
                statement.truncated |= cut;
            }
        }
        self.done.push_back(statement);
    }
}

/// The parameter values of a Bind body after its two names; whether any
/// were cut.
fn bind_values(body: &mut Fields<'_>) -> (Vec<Option<String>>, bool) {
    let formats: Vec<i16> = (0..body.i16().unwrap_or(0).max(0))
        .map_while(|_| body.i16())
        .collect();
    let count = body.i16().unwrap_or(0).max(0) as usize;
    let mut values = Vec::new();
    let mut cut = count > MAX_PARAMS;
    for i in 0..count.min(MAX_PARAMS) {
        let Some(len) = body.i32() else {
            return (values, true);
        };
        if len < 0 {
            values.push(None);
            continue;
        }
        let Some(bytes) = body.take(len as usize) else {
            return (values, true);
        };
        // One format code applies to all; none means text.
        let binary = match formats.len() {
            0 => false,
            1 => formats[0] == 1,
            _ => formats.get(i) == Some(&1),
        };
        let shown = &bytes[..bytes.len().min(MAX_PARAM_BYTES)];
        cut |= shown.len() < bytes.len();
        values.push(Some(if binary {
            let mut hex = String::from("\\x");
            for b in shown {
                hex.push_str(&format!("{b:02x}"));
            }
            hex
        } else {
            String::from_utf8_lossy(shown).into_owned()
        }));
    }
    (values, cut)
}

/// A cursor over a message body whose fields may have been cut short.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    /// A NUL-terminated string (lossily decoded), or the rest if the NUL
    /// was cut off.
    fn string(&mut self) -> String {
        let end = self.0.iter().position(|b| *b == 0).unwrap_or(self.0.len());
        let s = String::from_utf8_lossy(&self.0[..end]).into_owned();
        self.0 = &self.0[(end + 1).min(self.0.len())..];
        s
    }

    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn i16(&mut self) -> Option<i16> {
        self.take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Option<i32> {
        self.take(4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};

    use super::super::wire::{message_with_body, Framer};
    use super::*;

    fn query(sql: &str, buf: &mut BytesMut) {
        let mut body = sql.as_bytes().to_vec();
        body.push(0);
        message_with_body(b'Q', &body, buf);
    }

    fn parse(name: &str, sql: &str, buf: &mut BytesMut) {
        let mut body = BytesMut::new();
        body.put_slice(name.as_bytes());
        body.put_u8(0);
        body.put_slice(sql.as_bytes());
        body.put_u8(0);
        body.put_i16(0);
        message_with_body(b'P', &body, buf);
    }

    fn bind(statement: &str, values: &[Option<&[u8]>], binary: bool, buf: &mut BytesMut) {
        let mut body = BytesMut::new();
        body.put_u8(0); // unnamed portal
        body.put_slice(statement.as_bytes());
        body.put_u8(0);
        body.put_i16(1);
        body.put_i16(binary as i16);
        body.put_i16(values.len() as i16);
        for v in values {
            match v {
                Some(v) => {
                    body.put_i32(v.len() as i32);
                    body.put_slice(v);
                }
                None => body.put_i32(-1),
            }
        }
        body.put_i16(0);
        message_with_body(b'B', &body, buf);
    }

    /// Feeds `stream` in chunks of `chunk` bytes; what the tap collected.
    fn run(stream: &[u8], chunk: usize, params: bool) -> Vec<Statement> {
        let mut framer = Framer::default();
        let mut tap = StatementTap::new(params);
        let mut out = Vec::new();
        for piece in stream.chunks(chunk) {
            framer.advance_with(piece, |p| tap.see(p));
            out.extend(tap.take());
        }
        out
    }

    #[test]
    fn statements_come_out_in_order_whatever_the_reads_cut() {
        let mut stream = BytesMut::new();
        query("SELECT 1", &mut stream);
        parse("s1", "SELECT $1::int", &mut stream);
        bind("s1", &[Some(b"42")], false, &mut stream);
        message_with_body(b'E', b"\0\0\0\0\0", &mut stream);
        message_with_body(b'S', b"", &mut stream);
        query("", &mut stream);
        let whole = run(&stream, stream.len(), false);
        for chunk in 1..stream.len() {
            assert_eq!(run(&stream, chunk, false), whole, "chunk {chunk}");
        }
        let texts: Vec<_> = whole
            .iter()
            .map(|s| (s.seq, s.kind, s.text.clone()))
            .collect();
        assert_eq!(
            texts,
            [
                (1, StatementKind::Query, Some("SELECT 1".into())),
                (2, StatementKind::Parse, Some("SELECT $1::int".into())),
                (3, StatementKind::Query, Some("".into())),
            ]
        );
        assert_eq!(whole[1].name.as_deref(), Some("s1"));
        assert!(whole.iter().all(|s| s.params.is_none() && !s.truncated));
    }

    #[test]
    fn bind_values_only_when_asked_for_bounded_and_binary_as_hex() {
        let mut stream = BytesMut::new();
        let long = vec![b'x'; 1000];
        bind(
            "",
            &[Some(b"secret"), None, Some(&long)],
            false,
            &mut stream,
        );
        bind("s2", &[Some(&[0xde, 0xad])], true, &mut stream);
        assert!(run(&stream, 7, false).is_empty());
        let seen = run(&stream, 7, true);
        assert_eq!(seen.len(), 2);
        let p = seen[0].params.as_ref().unwrap();
        assert_eq!(p[0].as_deref(), Some("secret"));
        assert_eq!(p[1], None);
        assert_eq!(p[2].as_ref().unwrap().len(), MAX_PARAM_BYTES);
        assert!(seen[0].truncated);
        assert_eq!(seen[1].name.as_deref(), Some("s2"));
        assert_eq!(
            seen[1].params.as_ref().unwrap()[0].as_deref(),
            Some("\\xdead")
        );
    }

    #[test]
    fn a_long_statement_is_kept_to_the_limit_and_marked() {
        let sql = format!("SELECT '{}'", "y".repeat(100_000));
        let mut stream = BytesMut::new();
        query(&sql, &mut stream);
        query("SELECT 2", &mut stream);
        let seen = run(&stream, 4096, false);
        assert_eq!(seen.len(), 2);
        assert!(seen[0].truncated);
        assert_eq!(seen[0].text.as_ref().unwrap().len(), MAX_STATEMENT_BYTES);
        assert_eq!(seen[1].text.as_deref(), Some("SELECT 2"));
        assert!(!seen[1].truncated);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut state = 0x853c_49e6_748f_ea9bu64;
        for _ in 0..20_000 {
            let len = (state % 200) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    if state % 3 == 0 {
                        b"QPB"[((state >> 8) % 3) as usize]
                    } else {
                        state as u8
                    }
                })
                .collect();
            let _ = run(&bytes, (state % 17 + 1) as usize, true);
        }
    }
}
