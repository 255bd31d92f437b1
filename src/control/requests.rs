//! Access requests over HTTP: a person asks for a template that needs
//! approval, others approve or deny it, anyone entitled revokes the grant.
//!
//! ```text
//! POST /v1/rolemint/requests                {"template","reason","duration"}  the caller's identity
//! GET  /v1/rolemint/requests                own requests, those the caller may approve (operator: all)
//! GET  /v1/rolemint/requests/<id>
//! POST /v1/rolemint/requests/<id>/approve
//! POST /v1/rolemint/requests/<id>/deny      {"reason"}
//! POST /v1/rolemint/requests/<id>/revoke    {"reason"}  requester, approver or operator
//! ```
//!
//! The rules are `auth::access`; the requests live in the store (every
//! instance sees a grant within a second). A decision is a
//! compare-and-replace of the stored request, so two approvers racing
//! cannot both count, nor a deny and an approve both win. Revoking a grant
//! revokes the leases of that principal and template on every instance
//! (their sessions end with 57P01); a grant that runs out ends them too,
//! since it capped their leases. Every step is audited, counted, and sent
//! to the webhook.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use super::leases::{parse_body, LeaseFilter};
use super::people::{identity_of, people};
use super::vault::{envelope, ApiError};
use super::AdminState;
use crate::auth::access::{self, AccessError, Approvers as _, Request, State as ReqState};
use crate::auth::identity::Identity;
use crate::auth::policy::ApprovalRules;
use crate::config::Config;
use crate::lease::end::EndReason;
use crate::observe::audit::Event;
use crate::store::Kind;

/// Default grant when a request names no duration.
const DEFAULT_DURATION: Duration = Duration::from_secs(3600);
/// Tries of a compare-and-replace before giving up (each lost race means
/// someone else decided in between).
const CAS_TRIES: usize = 5;
/// Stale requests forgotten per new request (the store's kind is bounded).
const PRUNE_PER_CREATE: usize = 20;
/// Longest request id looked up.
const MAX_ID_BYTES: usize = 64;
/// How often stored requests are checked for a wait or a grant that ran
/// out.
const LAPSE_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Default, Deserialize)]
pub struct CreateBody {
    #[serde(default)]
    template: String,
    #[serde(default)]
    reason: String,
    /// "30m", "1h", or seconds.
    #[serde(default)]
    duration: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
pub struct DecisionBody {
    #[serde(default)]
    reason: String,
}

/// Who is asking: a person, or an operator (nobody, but may see and
/// revoke everything).
enum Who {
    Person(Identity),
    Operator,
}

impl Who {
    /// Whether this caller may see `r`: its requester, its approvers,
    /// operators.
    fn may_see(&self, r: &Request, config: &Config) -> bool {
        match self {
            Who::Operator => true,
            Who::Person(id) => {
                r.requester == access::Principal::of(id) || may_approve(config, &r.template, id)
            }
        }
    }

    fn principal(&self) -> access::Principal {
        match self {
            Who::Person(p) => access::Principal::of(p),
            Who::Operator => access::Principal {
                issuer: String::new(),
                identity: "operator".into(),
            },
        }
    }
}

fn may_approve(config: &Config, template: &str, id: &Identity) -> bool {
    let rules = ApprovalRules { auth: &config.auth };
    config
        .roles
        .get(template)
        .and_then(|t| t.approval.as_ref())
        .is_some_and(|a| rules.may_approve(a, id))
}

fn who(state: &AdminState, headers: &HeaderMap) -> Result<Who, ApiError> {
    if state
        .authenticate(headers)
        .is_ok_and(|caller| caller.is_operator())
    {
        return Ok(Who::Operator);
    }
    identity_of(state, headers).map(Who::Person)
}

fn duration(v: Option<serde_json::Value>) -> Result<Duration, ApiError> {
    let bad = || ApiError::bad_request("duration: e.g. \"30m\" or whole seconds");
    match v {
        None => Ok(DEFAULT_DURATION),
        Some(serde_json::Value::Number(n)) => n.as_u64().map(Duration::from_secs).ok_or_else(bad),
        Some(serde_json::Value::String(s)) => humantime::parse_duration(&s).map_err(|_| bad()),
        Some(_) => Err(bad()),
    }
}

fn access_error(e: AccessError) -> ApiError {
    crate::observe::metrics::access_request("refused");
    let status = match e {
        AccessError::OwnRequest
        | AccessError::NotApprover(_)
        | AccessError::MayNotRevoke
        | AccessError::NotAllowed(_) => StatusCode::FORBIDDEN,
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, e.to_string())
}

fn store_error(e: crate::store::StoreError) -> ApiError {
    if e.is_client_error() {
        return ApiError::bad_request(e.to_string());
    }
    tracing::error!("access requests: {e}");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the request store is not available",
    )
}

/// The stored requests, as last read, with their stored bodies.
fn all(state: &AdminState) -> Result<Vec<(serde_json::Value, Request)>, ApiError> {
    let snapshot = people(state)?.shared.store.snapshot();
    Ok(snapshot
        .iter(Kind::AccessRequest)
        .filter_map(|(_, s)| {
            let r: Request = serde_json::from_value(s.body.clone()).ok()?;
            Some((s.body.clone(), r))
        })
        .collect())
}

/// How the API shows a request: as stored, with the state as of now.
fn view(r: &Request, now: SystemTime) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    v["state"] = json!(r.state_at(now).to_string());
    v
}

/// `POST /v1/rolemint/requests`.
pub async fn create(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Who::Person(identity) = who(&state, &headers)? else {
        return Err(ApiError::bad_request(
            "an operator is nobody: sign in as a person to ask for access",
        ));
    };
    let body: CreateBody = parse_body(body)?;
    let people = people(&state)?;
    let runtime = people.shared.runtime();
    let config = &runtime.config;
    let t = config
        .roles
        .get(&body.template)
        .ok_or_else(|| ApiError::bad_request(format!("no template \"{}\"", body.template)))?;
    // An approval adds time to a template the allow lists open, never a
    // template they keep closed.
    let allowed = t.databases.iter().any(|db| {
        crate::auth::policy::authorize(config, &runtime.policy, &identity, &body.template, db)
            .is_ok()
    });
    let now = SystemTime::now();
    let id = new_id()?;
    let request = Request::create(
        id.clone(),
        &identity,
        &body.template,
        t.approval.as_ref(),
        allowed,
        &body.reason,
        duration(body.duration)?,
        config.access.pending_ttl,
        now,
    )
    .map_err(access_error)?;
    prune(&state, now).await;
    let value = serde_json::to_value(&request).unwrap_or_default();
    let writer = actor_label(&access::Principal::of(&identity));
    people
        .shared
        .store
        .put(Kind::AccessRequest, &id, &value, &writer)
        .await
        .map_err(store_error)?;
    let reason = request.reason.clone();
    announce(
        &state,
        "created",
        &request,
        &request.requester,
        Some(&reason),
    );
    Ok(envelope(view(&request, now)))
}

/// `GET /v1/rolemint/requests`: the caller's own, and those it may decide,
/// newest first.
pub async fn list(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = who(&state, &headers)?;
    let runtime = people(&state)?.shared.runtime();
    let now = SystemTime::now();
    let mut shown: Vec<&Request> = Vec::new();
    let requests = all(&state)?;
    shown.extend(
        requests
            .iter()
            .map(|(_, r)| r)
            .filter(|r| who.may_see(r, &runtime.config)),
    );
    shown.sort_by_key(|r| std::cmp::Reverse(r.created_at));
    let shown: Vec<serde_json::Value> = shown.into_iter().map(|r| view(r, now)).collect();
    Ok(envelope(json!({ "requests": shown })))
}

/// `GET /v1/rolemint/requests/<id>`: to its requester, its approvers and
/// operators; 404 to anyone else (nobody learns another's request exists).
pub async fn get_one(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = who(&state, &headers)?;
    let runtime = people(&state)?.shared.runtime();
    let (_, r) = find(&state, &id).await?;
    if !who.may_see(&r, &runtime.config) {
        return Err(not_found());
    }
    Ok(envelope(view(&r, SystemTime::now())))
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such request")
}

/// The request `id`: from the snapshot, or (missing there, perhaps written
/// on another instance a moment ago) from a fresh read.
async fn find(state: &AdminState, id: &str) -> Result<(serde_json::Value, Request), ApiError> {
    if id.len() > MAX_ID_BYTES {
        return Err(not_found());
    }
    let lookup = |all: Vec<(serde_json::Value, Request)>| all.into_iter().find(|(_, r)| r.id == id);
    if let Some(found) = lookup(all(state)?) {
        return Ok(found);
    }
    let store = &people(state)?.shared.store;
    store
        .reread(Kind::AccessRequest)
        .await
        .map_err(store_error)?;
    lookup(all(state)?).ok_or_else(not_found)
}

/// What a decision does to a request.
#[derive(Clone, Copy)]
enum Step {
    Approve,
    Deny,
    Revoke,
}

/// `POST /v1/rolemint/requests/<id>/<approve|deny|revoke>`: applies the
/// step to the request as last read and stores it if nobody changed it
/// meanwhile (else reads and decides again).
pub async fn decide(
    State(state): State<Arc<AdminState>>,
    Path((id, step)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let step = match step.as_str() {
        "approve" => Step::Approve,
        "deny" => Step::Deny,
        "revoke" => Step::Revoke,
        _ => return Err(ApiError::new(StatusCode::NOT_FOUND, "unknown path")),
    };
    let who = who(&state, &headers)?;
    let reason = parse_body::<DecisionBody>(body)?.reason;
    let people = people(&state)?;
    let actor = who.principal();
    for _ in 0..CAS_TRIES {
        let runtime = people.shared.runtime();
        let (old, mut r) = find(&state, &id).await?;
        if !who.may_see(&r, &runtime.config) {
            return Err(not_found());
        }
        let now = SystemTime::now();
        apply(&mut r, step, &who, &runtime.config, &reason, now).map_err(access_error)?;
        let new = serde_json::to_value(&r).unwrap_or_default();
        let stored = people
            .shared
            .store
            .replace(Kind::AccessRequest, &id, &old, &new, &actor_label(&actor))
            .await
            .map_err(store_error)?;
        if !stored {
            continue;
        }
        let step_name = match (step, r.state) {
            (Step::Approve, ReqState::Approved) => "approved",
            (Step::Approve, _) => "approval",
            (Step::Deny, _) => "denied",
            (Step::Revoke, _) => "revoked",
        };
        let said = (!reason.is_empty()).then_some(reason.as_str());
        announce(&state, step_name, &r, &actor, said);
        if let Step::Revoke = step {
            end_sessions(&state, &r).await?;
        }
        return Ok(envelope(view(&r, now)));
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "the request kept changing; try again",
    ))
}

/// The rules of `auth::access` for one step.
fn apply(
    r: &mut Request,
    step: Step,
    who: &Who,
    config: &Config,
    reason: &str,
    now: SystemTime,
) -> Result<(), AccessError> {
    let rules = ApprovalRules { auth: &config.auth };
    let approval = config
        .roles
        .get(&r.template)
        .and_then(|t| t.approval.as_ref());
    let person = match who {
        Who::Person(p) => Some(p),
        Who::Operator => None,
    };
    match (step, person, approval) {
        (Step::Revoke, _, a) => r.revoke(person, a, &rules, reason, now),
        // An operator is nobody: approvals come from people.
        (_, None, _) => Err(AccessError::NotApprover(r.template.clone())),
        (_, Some(_), None) => Err(AccessError::NoApprovalNeeded(r.template.clone())),
        (Step::Approve, Some(p), Some(a)) => r.approve(p, a, &rules, now),
        (Step::Deny, Some(p), Some(a)) => r.deny(p, a, &rules, reason, now),
    }
}

/// Revokes every lease of the request's principal and template, on every
/// instance: their sessions end with 57P01.
async fn end_sessions(state: &AdminState, r: &Request) -> Result<(), ApiError> {
    let filter = LeaseFilter {
        identity: Some(r.requester.identity.clone()),
        issuer: Some(r.requester.issuer.clone()),
        template: Some(r.template.clone()),
        ..LeaseFilter::default()
    };
    let n = state
        .directory
        .revoke_matching(filter, EndReason::GrantRevoked, true)
        .await?;
    tracing::info!(request = %r.id, leases = n, "access grant revoked, and its leases");
    Ok(())
}

/// The audit line, the metric and the webhook of one step.
fn announce(
    state: &AdminState,
    step: &'static str,
    r: &Request,
    actor: &access::Principal,
    reason: Option<&str>,
) {
    crate::observe::metrics::access_request(step);
    let granted_until = r
        .granted_until
        .map(|u| crate::pg::rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(u)));
    state.audit.record(Event::AccessRequest {
        step: step.into(),
        request_id: r.id.clone(),
        template: r.template.clone(),
        requester_issuer: r.requester.issuer.clone(),
        requester: r.requester.identity.clone(),
        actor_issuer: actor.issuer.clone(),
        actor: actor.identity.clone(),
        reason: reason.map(str::to_owned),
        granted_until,
    });
    tracing::info!(request = %r.id, step, template = %r.template, "access request");
    if let Some(hook) = &state.webhook {
        hook.send(json!({
            "event": "access.request",
            "step": step,
            "request": view(r, SystemTime::now()),
        }));
    }
}

/// Records, within [`LAPSE_INTERVAL`], each request nobody decided in time
/// (`expired`) and each grant that ran out (`ended`) as a step of its own:
/// stored, audited, counted and sent to the webhook like a decision. Every
/// instance runs it; the compare-and-replace lets exactly one record each.
/// (The state is right before that too: `state_at` reads the clock.)
pub async fn sweep_lapsed(state: Arc<AdminState>, stop: tokio_util::sync::CancellationToken) {
    let Ok(people) = people(&state).map(Arc::clone) else {
        return;
    };
    let rolemint = access::Principal {
        issuer: String::new(),
        identity: "rolemint".into(),
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(LAPSE_INTERVAL) => {}
        }
        let Ok(requests) = all(&state) else {
            continue;
        };
        let now = SystemTime::now();
        for (old, mut r) in requests {
            let step = match r.lapse(now) {
                Some(ReqState::Expired) => "expired",
                Some(ReqState::Ended) => "ended",
                _ => continue,
            };
            let new = serde_json::to_value(&r).unwrap_or_default();
            match people
                .shared
                .store
                .replace(Kind::AccessRequest, &r.id, &old, &new, "rolemint")
                .await
            {
                Ok(true) => announce(&state, step, &r, &rolemint, None),
                // Another instance, or a decision, wrote it first.
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!("access requests: recording {} {step}: {e}", r.id);
                    break;
                }
            }
        }
    }
}

/// Forgets a few requests that ended over a day ago (the audit log keeps
/// their history), so the store's bounded kind never fills with old ones.
async fn prune(state: &AdminState, now: SystemTime) {
    let (Ok(requests), Ok(people)) = (all(state), people(state)) else {
        return;
    };
    let stale = requests.iter().filter(|(_, r)| r.is_stale(now));
    for (_, r) in stale.take(PRUNE_PER_CREATE) {
        if let Err(e) = people.shared.store.delete(Kind::AccessRequest, &r.id).await {
            tracing::warn!("forgetting request {}: {e}", r.id);
            return;
        }
    }
}

fn actor_label(p: &access::Principal) -> String {
    if p.issuer.is_empty() {
        p.identity.clone()
    } else {
        format!("{}:{}", p.issuer, p.identity)
    }
}

/// `req-` and 64 random bits in hex.
fn new_id() -> Result<String, ApiError> {
    let mut bytes = [0u8; 8];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("req-{hex}"))
}
