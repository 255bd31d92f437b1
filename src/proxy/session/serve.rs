//! A session with its lease: the login as the minted role (or the warm
//! pool's backend), the startup forwarded with rolemint's own cancel key,
//! the splice (in user space or in the kernel), and on every way out the
//! `session.ended` line and the role handed to the revoker.

use std::sync::Arc;
use std::time::Instant;

use super::relay::{self, End};
use super::{handshake, kernel, statements, wire, Minted, Started};
use crate::error::ClientError;
use crate::lease::registry::Lease;
use crate::observe::audit::Event;
use crate::observe::logging::LogSafe;
use crate::observe::metrics::{ConnectionResult, Direction};
use crate::pg::backend;
use crate::proxy::Proxy;
use crate::runtime::state::Shared;
use crate::tls::{BackendStream, ClientStream};

/// Logs in as the minted role, splices until the session ends, and hands
/// the role to the revoker.
pub(super) async fn serve_lease(
    proxy: &Proxy,
    stream: ClientStream,
    startup: &handshake::Startup,
    minted: Minted,
    started: Started,
) {
    let Minted {
        registered,
        password,
        warm,
        quota,
    } = minted;
    let lease = &registered.lease;
    let shared = &*proxy.shared;
    crate::failpoint::hit(crate::failpoint::AFTER_MINT).await;
    let (end, traffic) = connect_and_splice(
        proxy,
        stream,
        startup,
        &password,
        warm,
        lease,
        started.accepted,
    )
    .await;
    drop(password);
    lease.set_traffic(traffic.client_to_backend, traffic.backend_to_client);
    crate::observe::metrics::relay_bytes(Direction::ClientToBackend, traffic.client_to_backend);
    crate::observe::metrics::relay_bytes(Direction::BackendToClient, traffic.backend_to_client);
    // The session is over: its slots are free while the role is revoked.
    drop(started.permit);
    drop(quota);
    let reason = end.reason(lease.end_reason());
    let duration = lease
        .issued_at
        .elapsed()
        .unwrap_or_else(|_| started.accepted.elapsed());
    shared.audit.record(Event::SessionEnded {
        lease_id: lease.id.clone(),
        role: lease.role.clone(),
        identity: lease.identity.clone(),
        reason: end.audit_reason(reason).to_owned(),
        duration_seconds: duration.as_secs_f64(),
        bytes_in: traffic.client_to_backend,
        bytes_out: traffic.backend_to_client,
    });
    shared.revoker.schedule_lease(
        &lease.id,
        &lease.role,
        &lease.database,
        Some(&lease.template),
        reason,
    );
    tracing::info!(
        lease = %lease.id, role = %lease.role, end = ?end,
        bytes_in = traffic.client_to_backend, bytes_out = traffic.backend_to_client,
        duration_ms = duration.as_millis() as u64,
        "session ended; role handed to the revoker"
    );
    // Only now does the registry forget the lease: until the revoker has
    // it, the role counts as held (the reaper asks).
    drop(registered);
}

/// Keeps `rolemint_sessions_active{template}` true on every way out of a
/// splice, a panic included.
struct ActiveSession<'a>(&'a str);

impl<'a> ActiveSession<'a> {
    fn start(template: &'a str) -> ActiveSession<'a> {
        crate::observe::metrics::session_started(template);
        ActiveSession(template)
    }
}

impl Drop for ActiveSession<'_> {
    fn drop(&mut self) {
        crate::observe::metrics::session_ended(self.0);
    }
}

/// Logs in as the minted role and splices; every outcome ends here so that
/// the caller revokes in one place.
async fn connect_and_splice(
    proxy: &Proxy,
    mut stream: ClientStream,
    startup: &handshake::Startup,
    password: &crate::secret::Secret,
    warm: Option<Box<backend::Login>>,
    lease: &Arc<Lease>,
    accepted: Instant,
) -> (End, relay::Traffic) {
    let failed = (End::Failed, relay::Traffic::default());
    let role = lease.role.as_str();
    let shared = &*proxy.shared;
    let Some(mut login) = log_in(shared, &mut stream, startup, password, warm, lease).await else {
        return failed;
    };
    crate::failpoint::hit(crate::failpoint::AFTER_LOGIN).await;
    // A protocol 3.2 client gets a long secret, whatever the backend speaks.
    let long_key = startup.minor >= wire::LATEST_MINOR;
    let cancel_key = proxy.cancels.issue(login.key.clone(), role, long_key);
    let audited = statement_audit(&proxy.shared, lease);
    // Into the kernel before the client can send anything more: it waits
    // for its first ReadyForQuery. Not a session whose statements are
    // audited: the kernel would never show rolemint its bytes.
    let mut kernel = proxy
        .sockmap
        .as_ref()
        .filter(|_| audited.is_none())
        .and_then(|map| kernel::begin(map, &stream, &login.stream, login.leftover.len()));
    let framer = match relay::forward_startup(&mut stream, &mut login, &cancel_key.key).await {
        Ok((framer, written)) => {
            if let Some(k) = kernel.as_mut() {
                k.wrote_to_client(written);
            }
            framer
        }
        Err(e) => {
            tracing::debug!(lease = %lease.id, "client went away during startup: {e}");
            crate::observe::metrics::connection(ConnectionResult::ProtocolError);
            return failed;
        }
    };
    // The client has its first ReadyForQuery.
    crate::observe::metrics::connection(ConnectionResult::Ok);
    crate::observe::metrics::connect_duration(accepted.elapsed());
    let _active = ActiveSession::start(&lease.template);
    match kernel {
        Some(k) => {
            k.run(shared, stream, login.stream, lease, login.key.process_id)
                .await
        }
        None => splice(proxy, stream, login.stream, framer, lease, audited).await,
    }
}

/// Splices in user space, on a relay thread (`relay_threads.rs`: one
/// thread owns both sockets of the session).
async fn splice(
    proxy: &Proxy,
    client: ClientStream,
    backend: BackendStream,
    framer: wire::Framer,
    lease: &Arc<Lease>,
    audited: Option<relay::Audited<'static>>,
) -> (End, relay::Traffic) {
    let failed = (End::Failed, relay::Traffic::default());
    // Out of this runtime's reactor, into the relay thread's below.
    let (client, backend) = match (client.detach(), backend.detach()) {
        (Ok(client), Ok(backend)) => (client, backend),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(lease = %lease.id, "cannot hand the session to a relay thread: {e}");
            return failed;
        }
    };
    let moved = Arc::clone(lease);
    let spliced = proxy.relays.run(move || async move {
        match (client.attach(), backend.attach()) {
            (Ok(client), Ok(backend)) => {
                relay::splice(client, backend, framer, &moved, audited).await
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(lease = %moved.id, "relay thread cannot take the session: {e}");
                failed
            }
        }
    });
    match spliced.await {
        Ok(out) => out,
        Err(e) => {
            tracing::error!(lease = %lease.id, "{e}");
            failed
        }
    }
}

/// The backend, logged in as the lease's role (or the warm pool's,
/// logged in already), within twice the connect timeout. A client whose
/// login failed is told the backend is unavailable.
async fn log_in(
    shared: &Shared,
    stream: &mut ClientStream,
    startup: &handshake::Startup,
    password: &crate::secret::Secret,
    warm: Option<Box<backend::Login>>,
    lease: &Lease,
) -> Option<backend::Login> {
    let role = lease.role.as_str();
    let backend_config = &shared.config.backend;
    let login_started = Instant::now();
    let warm_hit = warm.is_some();
    let login = async {
        if let Some(login) = warm {
            return Ok(*login);
        }
        let conn = backend::connect(backend_config, shared.backend_tls.as_ref()).await?;
        backend::login(
            conn,
            role,
            password,
            &startup.database,
            &startup.forward,
            backend_config,
        )
        .await
    };
    match tokio::time::timeout(2 * backend_config.connect_timeout, login).await {
        Ok(Ok(login)) => {
            if !warm_hit {
                crate::observe::metrics::backend_login_duration(login_started.elapsed());
            }
            return Some(login);
        }
        Ok(Err(e)) => {
            let e = e.to_string();
            tracing::warn!(lease = %lease.id, role, "backend login failed: {}", LogSafe(&e));
        }
        Err(_) => tracing::warn!(lease = %lease.id, role, "backend login timed out"),
    }
    crate::observe::metrics::connection(ConnectionResult::Refused);
    relay::send_fatal(stream, &ClientError::BackendUnavailable).await;
    None
}

/// The statement audit of `lease`'s session, when its template asks for
/// one (`audit_queries`): each statement becomes a `session.statement`
/// line. Read from the current runtime, as the template is right after
/// the mint.
fn statement_audit(shared: &Arc<Shared>, lease: &Arc<Lease>) -> Option<relay::Audited<'static>> {
    let runtime = shared.runtime();
    let template = runtime.config.template(&lease.template)?;
    if !template.audit_queries {
        return None;
    }
    let tap = statements::StatementTap::new(template.audit_parameters);
    let (shared, lease) = (Arc::clone(shared), Arc::clone(lease));
    let sink = move |s: statements::Statement| {
        shared.audit.record(Event::SessionStatement {
            lease_id: lease.id.clone(),
            role: lease.role.clone(),
            identity: lease.identity.clone(),
            issuer: lease.issuer.clone(),
            template: lease.template.clone(),
            database: lease.database.clone(),
            seq: s.seq,
            kind: s.kind.as_str(),
            name: s.name,
            statement: s.text,
            params: s.params,
            truncated: s.truncated,
        });
    };
    Some(relay::Audited {
        tap,
        sink: Box::new(sink),
    })
}
