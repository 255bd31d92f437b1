//! The audit log: one JSON object per line, per event, to a file or stdout.
//!
//! ```json
//! {"time":"2026-11-23T11:40:02.118Z","event":"lease.revoked","lease_id":"database/sessions/readonly/k3f9x2ab","role":"v-alice-readonly-k3f9x2ab-1795340000","by":"operator"}
//! ```
//!
//! The events are a typed enum ([`Event`]) whose fields hold no token,
//! password or verifier: there is no field to put one in.
//!
//! Writing: [`Audit::record`] formats the line on the caller's task and
//! hands it to a bounded queue; one writer thread appends each line to the
//! file (opened `O_APPEND`, so concurrent writers and rotation tools see
//! whole lines) and flushes it. Sessions never wait for the disk: when the
//! queue is full (the disk stalled) the line is dropped and counted in
//! `rolemint_audit_lines_dropped_total`, because blocking every session on a
//! slow log would turn a disk problem into an outage. Where the line must be
//! on disk before the action is acknowledged (a revoke), [`Audit::record_durable`]
//! waits for room in the queue and for the write itself. [`Audit::reopen`]
//! (SIGHUP) reopens the path after a log rotation; it goes through the same
//! queue, so no line is written to the old file after it.
//!
//! The writer is a thread rather than a task because file writes block; a
//! thread needs no runtime, and ends when the last [`Audit`] handle drops.
//!
//! Refusals before authentication ([`Event::is_pre_auth`]: a refused
//! connection, a token nobody accepts, an admin request without a valid
//! token) cost an attacker nothing, so they are rate limited
//! (`[audit] pre_auth_lines_per_second`): a flood of them cannot fill the
//! disk. The lines left out are counted in
//! `rolemint_audit_lines_suppressed_total`, and the next pre-auth line
//! written is preceded by an `audit.suppressed` line with their number.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

/// Lines waiting for the writer. At ~300 bytes a line, 8192 lines bound the
/// queue to a few MB while absorbing any burst a disk hiccup causes.
const QUEUE: usize = 8192;

/// Longest wait of [`Audit::record_durable`] for its line to be written.
const DURABLE_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open the audit log {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the audit log: {0}")]
    Write(std::io::Error),
    #[error("the audit writer has stopped")]
    Stopped,
    #[error("the audit writer did not write within {0:?}")]
    Timeout(Duration),
}

/// One audit event. Serialized with its name in `event`, next to `time`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event")]
pub enum Event {
    /// A connection was turned away before its token was read.
    #[serde(rename = "connection.refused")]
    ConnectionRefused {
        client_addr: String,
        /// `too_many_connections`, `shutting_down`, `tls_required`, `protocol`.
        reason: String,
    },
    /// A token was refused, or a valid identity was not allowed.
    #[serde(rename = "auth.failed")]
    AuthFailed {
        /// Why, in full: which claim failed (the client is never told).
        reason: String,
        issuer: Option<String>,
        identity: Option<String>,
        client_addr: String,
        template: String,
        database: String,
    },
    /// A quota (per principal, or a template's own cap) refused a session
    /// or a credential lease.
    #[serde(rename = "quota.refused")]
    QuotaRefused {
        issuer: String,
        identity: String,
        /// `sessions`, `credential_leases`, `mints_per_minute`,
        /// `principals`, `tokens`, `template_leases_per_principal`,
        /// `template_leases`.
        quota: String,
        limit: usize,
        template: String,
        client_addr: Option<String>,
    },
    /// Pre-authentication lines left out since the last one written
    /// (`[audit] pre_auth_lines_per_second`).
    #[serde(rename = "audit.suppressed")]
    AuditSuppressed { count: u64 },
    #[serde(rename = "auth.ok")]
    AuthOk {
        identity: String,
        issuer: Option<String>,
        client_addr: String,
        template: String,
        database: String,
    },
    #[serde(rename = "lease.minted")]
    LeaseMinted {
        lease_id: String,
        role: String,
        identity: String,
        /// The issuer entry of `identity`: together, the principal.
        issuer: String,
        groups: Vec<String>,
        template: String,
        database: String,
        /// RFC 3339.
        expire_time: String,
        client_addr: Option<String>,
    },
    /// A statement of a session whose template audits them
    /// (`audit_queries`): a simple Query, a Parse, or (`audit_parameters`)
    /// the values of a Bind, in the order the client sent them.
    #[serde(rename = "session.statement")]
    SessionStatement {
        lease_id: String,
        role: String,
        identity: String,
        /// With `identity`, the principal (as in `lease.minted`).
        issuer: String,
        template: String,
        database: String,
        /// 1, 2, 3, ... within the session.
        seq: u64,
        /// `query`, `parse` or `bind`.
        kind: &'static str,
        /// The prepared statement's name (parse, bind); "" is the unnamed one.
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// The SQL text (query, parse), at most 16 KiB of it.
        #[serde(skip_serializing_if = "Option::is_none")]
        statement: Option<String>,
        /// Bind values (only with `audit_parameters`): text, `\\x` hex, or null.
        #[serde(skip_serializing_if = "Option::is_none")]
        params: Option<Vec<Option<String>>>,
        /// The message was longer than what is written here.
        truncated: bool,
    },
    #[serde(rename = "session.ended")]
    SessionEnded {
        lease_id: String,
        role: String,
        identity: String,
        /// `client`, `ttl`, `revoked`, `shutdown`, `backend`, `error`.
        reason: String,
        duration_seconds: f64,
        bytes_in: u64,
        bytes_out: u64,
    },
    #[serde(rename = "lease.renewed")]
    LeaseRenewed {
        lease_id: String,
        role: String,
        /// The new expiry, RFC 3339.
        expire_time: String,
        /// True when the renewal was cut at the template's max_ttl.
        capped: bool,
        caller: String,
    },
    #[serde(rename = "lease.revoked")]
    LeaseRevoked {
        lease_id: String,
        role: String,
        /// Who revoked it, in the words of `lease::end::EndReason::revoked_by`
        /// (`client`, `ttl`, `operator`, `workload`, `token`, `shutdown`,
        /// `reaper`): a word, not the type, so that `observe` imports
        /// nothing of `lease`, which writes here.
        by: &'static str,
    },
    #[serde(rename = "lease.revoke_failed")]
    LeaseRevokeFailed {
        lease_id: String,
        role: String,
        attempt: u32,
        error: String,
        /// Whether it is tried again.
        retrying: bool,
    },
    /// The role owns objects and was left NOLOGIN for an operator.
    #[serde(rename = "lease.retained")]
    LeaseRetained {
        lease_id: String,
        role: String,
        detail: String,
    },
    #[serde(rename = "lease.reaped")]
    LeaseReaped {
        lease_id: Option<String>,
        role: String,
        /// `expired` (past VALID UNTIL) or `orphaned` (no session, no lease).
        reason: String,
        instance: Option<String>,
    },
    #[serde(rename = "admin.request")]
    AdminRequest {
        method: String,
        /// The path without the query string.
        path: String,
        status: u16,
        /// `operator`, `workload:<identity>` or `anonymous`.
        caller: String,
        client_addr: String,
    },
    /// Something written to or deleted from rolemint's store through the
    /// API (a template, a policy, an auth role): what and by whom. Never
    /// the body (a template's SQL is for `GET` by an operator).
    #[serde(rename = "store.written")]
    StoreWritten {
        /// `template`, `policy`, `auth_role`, ...
        kind: String,
        name: String,
        /// `write` or `delete`.
        action: String,
        /// The caller, as in `admin.request`.
        written_by: String,
    },
    /// A step of an access request: `created`, `approval` (one approver
    /// agreed, more are needed), `approved` (the grant starts), `denied`,
    /// `revoked`.
    #[serde(rename = "access.request")]
    AccessRequest {
        step: String,
        request_id: String,
        template: String,
        requester_issuer: String,
        requester: String,
        /// Who took the step (the requester for `created`; "operator" for
        /// an operator's revocation).
        actor_issuer: String,
        actor: String,
        reason: Option<String>,
        /// RFC 3339, once approved.
        granted_until: Option<String>,
    },
}

impl Event {
    /// The event's name as written in `event`.
    /// A refusal before anyone authenticated: what a flood is made of,
    /// rate limited (see the module doc).
    pub fn is_pre_auth(&self) -> bool {
        match self {
            Event::ConnectionRefused { .. } => true,
            Event::AuthFailed { identity, .. } => identity.is_none(),
            Event::AdminRequest { caller, .. } => {
                matches!(
                    caller.as_str(),
                    "anonymous" | "invalid-token" | "rate-limited"
                )
            }
            _ => false,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Event::ConnectionRefused { .. } => "connection.refused",
            Event::AuthFailed { .. } => "auth.failed",
            Event::AuthOk { .. } => "auth.ok",
            Event::AuditSuppressed { .. } => "audit.suppressed",
            Event::QuotaRefused { .. } => "quota.refused",
            Event::LeaseMinted { .. } => "lease.minted",
            Event::SessionStatement { .. } => "session.statement",
            Event::SessionEnded { .. } => "session.ended",
            Event::LeaseRenewed { .. } => "lease.renewed",
            Event::LeaseRevoked { .. } => "lease.revoked",
            Event::LeaseRevokeFailed { .. } => "lease.revoke_failed",
            Event::LeaseRetained { .. } => "lease.retained",
            Event::LeaseReaped { .. } => "lease.reaped",
            Event::AdminRequest { .. } => "admin.request",
            Event::StoreWritten { .. } => "store.written",
            Event::AccessRequest { .. } => "access.request",
        }
    }
}

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

impl Target {
    /// `"stdout"` or a path.
    pub fn from_config(path: &Path) -> Target {
        if path == Path::new("stdout") {
            Target::Stdout
        } else {
            Target::File(path.to_owned())
        }
    }
}

enum Command {
    Line(String, Option<oneshot::Sender<Result<(), AuditError>>>),
    Reopen(oneshot::Sender<Result<(), AuditError>>),
}

/// A handle to the audit log; cheap to clone. A disabled log (no
/// `[audit] path`) accepts events and writes nothing.
#[derive(Clone, Debug)]
pub struct Audit {
    queue: Option<mpsc::Sender<Command>>,
    /// The budget of pre-authentication lines.
    pre_auth: std::sync::Arc<std::sync::Mutex<PreAuthBudget>>,
}

/// A token bucket of pre-authentication lines, and the lines left out.
#[derive(Debug)]
struct PreAuthBudget {
    per_second: f64,
    tokens: f64,
    updated: std::time::Instant,
    suppressed: u64,
}

impl PreAuthBudget {
    fn new(per_second: u32) -> PreAuthBudget {
        let per_second = f64::from(per_second.max(1));
        PreAuthBudget {
            per_second,
            tokens: per_second,
            updated: std::time::Instant::now(),
            suppressed: 0,
        }
    }

    /// `Ok(n)`: write the line, after a summary of `n` left out (if any);
    /// `Err(())`: leave it out.
    fn spend(&mut self) -> Result<u64, ()> {
        let now = std::time::Instant::now();
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        self.updated = now;
        if self.tokens < 1.0 {
            self.suppressed += 1;
            return Err(());
        }
        self.tokens -= 1.0;
        Ok(std::mem::take(&mut self.suppressed))
    }
}

impl Default for PreAuthBudget {
    fn default() -> Self {
        PreAuthBudget::new(50)
    }
}

impl Audit {
    /// An audit log that writes nothing.
    pub fn disabled() -> Audit {
        Audit {
            queue: None,
            pre_auth: Default::default(),
        }
    }

    /// The same log with `per_second` pre-authentication lines a second
    /// (`[audit] pre_auth_lines_per_second`; 50 unless set).
    pub fn with_pre_auth_limit(self, per_second: u32) -> Audit {
        Audit {
            pre_auth: std::sync::Arc::new(std::sync::Mutex::new(PreAuthBudget::new(per_second))),
            ..self
        }
    }

    /// Opens the target (creating a file with mode 0640) and starts the
    /// writer thread.
    pub fn open(target: Target) -> Result<Audit, AuditError> {
        let sink = Sink::open(&target)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("rolemint-audit".into())
            .spawn(move || writer(target, sink, rx))
            .map_err(|e| AuditError::Write(std::io::Error::other(e)))?;
        Ok(Audit {
            queue: Some(tx),
            pre_auth: Default::default(),
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// Queues `event`; never waits. Dropped (and counted) when the queue is
    /// full.
    pub fn record(&self, event: Event) {
        let Some(queue) = &self.queue else { return };
        if event.is_pre_auth() {
            let spent = self
                .pre_auth
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .spend();
            match spent {
                Err(()) => return crate::observe::metrics::audit_line_suppressed(),
                Ok(0) => {}
                Ok(count) => self.enqueue(queue, &Event::AuditSuppressed { count }),
            }
        }
        self.enqueue(queue, &event);
    }

    fn enqueue(&self, queue: &mpsc::Sender<Command>, event: &Event) {
        let line = format_line(event, SystemTime::now());
        match queue.try_send(Command::Line(line, None)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                crate::observe::metrics::audit_line_dropped();
                tracing::warn!(event = event.name(), "audit queue full: line dropped");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                crate::observe::metrics::audit_line_dropped();
            }
        }
    }

    /// Writes `event` and returns once it is written and flushed (or
    /// failed): for actions acknowledged only after their audit line.
    pub async fn record_durable(&self, event: Event) -> Result<(), AuditError> {
        let Some(queue) = &self.queue else {
            return Ok(());
        };
        let line = format_line(&event, SystemTime::now());
        let (done, written) = oneshot::channel();
        let sent = async {
            queue
                .send(Command::Line(line, Some(done)))
                .await
                .map_err(|_| AuditError::Stopped)?;
            written.await.map_err(|_| AuditError::Stopped)?
        };
        tokio::time::timeout(DURABLE_WAIT, sent)
            .await
            .map_err(|_| AuditError::Timeout(DURABLE_WAIT))?
    }

    /// Reopens the file (after a log rotation moved it away). Lines queued
    /// before go to the old file, lines after to the new one.
    pub async fn reopen(&self) -> Result<(), AuditError> {
        let Some(queue) = &self.queue else {
            return Ok(());
        };
        let (done, reopened) = oneshot::channel();
        queue
            .send(Command::Reopen(done))
            .await
            .map_err(|_| AuditError::Stopped)?;
        reopened.await.map_err(|_| AuditError::Stopped)?
    }
}

/// One line, without the newline: `time` first, then the event.
pub fn format_line(event: &Event, time: SystemTime) -> String {
    #[derive(Serialize)]
    struct Line<'a> {
        time: String,
        #[serde(flatten)]
        event: &'a Event,
    }
    let line = Line {
        time: humantime::format_rfc3339_millis(time).to_string(),
        event,
    };
    // Serializing strings, numbers and a tagged enum cannot fail; should it
    // ever, the line still says which event it was.
    serde_json::to_string(&line).unwrap_or_else(|e| {
        format!(
            r#"{{"time":"{}","event":"{}","error":"unserializable: {}"}}"#,
            line.time,
            event.name(),
            e.to_string().replace('"', "'")
        )
    })
}

enum Sink {
    Stdout,
    File(File),
}

impl Sink {
    fn open(target: &Target) -> Result<Sink, AuditError> {
        match target {
            Target::Stdout => Ok(Sink::Stdout),
            Target::File(path) => OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o640)
                .open(path)
                .map(Sink::File)
                .map_err(|source| AuditError::Open {
                    path: path.clone(),
                    source,
                }),
        }
    }

    /// One `write` of the whole line: with O_APPEND it lands in one piece.
    fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        match self {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&bytes)?;
                out.flush()
            }
            Sink::File(f) => {
                f.write_all(&bytes)?;
                f.flush()
            }
        }
    }
}

fn writer(target: Target, mut sink: Sink, mut rx: mpsc::Receiver<Command>) {
    while let Some(command) = rx.blocking_recv() {
        match command {
            Command::Line(line, done) => {
                let result = sink.write_line(&line).map_err(AuditError::Write);
                if let Err(e) = &result {
                    crate::observe::metrics::audit_write_error();
                    tracing::error!("{e}");
                }
                if let Some(done) = done {
                    let _ = done.send(result);
                }
            }
            Command::Reopen(done) => {
                let result = Sink::open(&target).map(|new| sink = new);
                if let Err(e) = &result {
                    // Keep writing to the old file rather than nowhere.
                    tracing::error!("{e}; still writing to the previous file");
                }
                let _ = done.send(result);
            }
        }
    }
}

#[cfg(test)]
mod tests;
