//! The lease API, in Vault's shape, over a [`LeaseDirectory`].
//!
//! | request | answer |
//! |---|---|
//! | `LIST /v1/sys/leases/lookup/<prefix>` (or `GET ...?list=true`) | `{"data":{"keys":[...]}}`, the next path segment of every lease under the prefix (all of them, read a page at a time); 404 `{"errors":[]}` when none |
//! | `PUT /v1/sys/leases/lookup` `{"lease_id"}` | `data{id, issue_time, expire_time, last_renewal, renewable, ttl, ...}`; 400 unknown |
//! | `PUT /v1/sys/leases/renew` `{"lease_id","increment"}` | 200 with `lease_duration` (a warning when capped at max_ttl); 400 at the cap |
//! | `PUT /v1/sys/leases/revoke` `{"lease_id","sync"}`, `PUT .../revoke/<id>` | 204 (202 when `"sync": false`); unknown: 204 |
//! | `PUT /v1/sys/leases/revoke-prefix/<prefix>` | 204 once every lease under it is revoked (202 with `"sync": false`); 503 when that did not finish in time (it goes on) |
//! | `GET /v1/rolemint/leases?identity=&template=&database=&after=&limit=` | `data.leases`, full records, one page; `data.next`: the `after` of the next page, `null` after the last |
//! | `PUT /v1/rolemint/leases/revoke` `{"identity"\|"template"\|"database"}` | `{"revoked": N}`, every match; 503 as revoke-prefix |
//!
//! The handlers parse, authorize (an operator acts on every lease, a
//! workload on its own) and shape answers; the directory behind the trait
//! owns the leases, their deadlines and revocation (and writes the
//! `lease.revoked` audit line before a synchronous revoke resolves).

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize, Serializer};

use super::access::Access;
use super::auth::Caller;
use super::vault::{envelope, lease_envelope, ApiError};
use super::AdminState;
use crate::lease::end::EndReason;
use crate::lease::registry::LeaseKind;
use crate::observe::audit::Event;

/// Longest lease id or prefix accepted.
const MAX_LEASE_ID_BYTES: usize = 512;

/// Largest `increment` a renewal may ask for. Every lease is capped at its
/// template's `max_ttl` (at most 7 days) anyway; past this bound the number
/// is nonsense, and near `u64::MAX` seconds `now + increment` would
/// overflow the clock.
pub const MAX_INCREMENT: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Most leases one page of a listing holds: bounds the memory of a page
/// (and of the answer of `/v1/rolemint/leases`, which pages explicitly).
pub const MAX_PAGE: usize = 1_000;

/// Most keys one `LIST` answers. Vault's clients expect the whole list, so
/// the directory is read to its end; this bounds the answer (about 50 MB of
/// keys) and is far beyond the leases one cluster holds. A prefix with more
/// keys gets an error that says so, never a silently cut list.
pub const MAX_LIST_KEYS: usize = 1_000_000;

/// A boxed future, so the directory can sit behind `Arc<dyn ...>`.
pub type DirFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, LeaseApiError>> + Send + 'a>>;

/// What the directory can refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseApiError {
    #[error("lease not found")]
    NotFound,
    #[error("past the max TTL, cannot renew")]
    PastMaxTtl,
    #[error("lease is not renewable")]
    NotRenewable,
    #[error("{0}")]
    BadRequest(String),
    /// The directory cannot answer now (backend down, not wired).
    #[error("{0}")]
    Unavailable(String),
    /// A failure whose detail is for the log, not the caller.
    #[error("internal error")]
    Internal(String),
}

impl From<LeaseApiError> for ApiError {
    fn from(e: LeaseApiError) -> ApiError {
        match &e {
            LeaseApiError::NotFound
            | LeaseApiError::PastMaxTtl
            | LeaseApiError::NotRenewable
            | LeaseApiError::BadRequest(_) => ApiError::bad_request(e.to_string()),
            LeaseApiError::Unavailable(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            LeaseApiError::Internal(detail) => {
                tracing::error!("lease API: {detail}");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
        }
    }
}

/// One lease as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeaseView {
    /// `database/sessions/<template>/<random>` or `database/creds/...`.
    pub id: String,
    #[serde(serialize_with = "rfc3339")]
    pub issue_time: SystemTime,
    #[serde(serialize_with = "rfc3339")]
    pub expire_time: SystemTime,
    #[serde(serialize_with = "rfc3339_opt")]
    pub last_renewal: Option<SystemTime>,
    pub renewable: bool,
    /// Seconds left.
    pub ttl: u64,
    pub identity: String,
    /// The issuer entry of `identity`; empty for a lease minted before
    /// leases recorded it (operators only may act on those).
    pub issuer: String,
    pub role: String,
    pub template: String,
    pub database: String,
    pub client_addr: Option<String>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub instance: String,
    pub kind: LeaseKind,
}

fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_seconds(*t))
}

fn rfc3339_opt<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => rfc3339(t, s),
        None => s.serialize_none(),
    }
}

/// Which leases: every set field must match (all unset: every lease).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseFilter {
    pub identity: Option<String>,
    /// With `identity`: the issuer entry of the principal.
    pub issuer: Option<String>,
    pub template: Option<String>,
    pub database: Option<String>,
    /// Lease ids starting with this.
    #[serde(skip)]
    pub prefix: Option<String>,
}

impl LeaseFilter {
    pub fn matches(&self, lease: &LeaseView) -> bool {
        let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        eq(&self.identity, &lease.identity)
            && eq(&self.issuer, &lease.issuer)
            && eq(&self.template, &lease.template)
            && eq(&self.database, &lease.database)
            && self
                .prefix
                .as_deref()
                .is_none_or(|p| lease.id.starts_with(p))
    }

    fn is_unrestricted(&self) -> bool {
        self.identity.is_none()
            && self.issuer.is_none()
            && self.template.is_none()
            && self.database.is_none()
            && self.prefix.is_none()
    }
}

/// Which page of a listing: the leases after the marker `after` (the
/// `next` of the page before; `None` for the first), at most `limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub after: Option<String>,
    pub limit: usize,
}

impl PageRequest {
    /// The first page of [`MAX_PAGE`] leases.
    pub fn first() -> PageRequest {
        PageRequest {
            after: None,
            limit: MAX_PAGE,
        }
    }
}

/// One page of a listing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeasePage {
    /// At most the page's `limit`; maybe fewer, even none, when `next` is
    /// set (the directory filters after it reads).
    pub leases: Vec<LeaseView>,
    /// The marker the next page starts after; `None` on the last page.
    /// Opaque to callers: each directory orders its leases its own way.
    pub next: Option<String>,
}

/// The outcome of a renewal.
#[derive(Debug, Clone, PartialEq)]
pub struct Renewed {
    /// The lease with its new expiry.
    pub lease: LeaseView,
    /// The increment asked for (or the template's default TTL).
    pub requested: Duration,
    /// What was granted: shorter than `requested` when capped at max_ttl.
    pub granted: Duration,
}

/// The new expiry of a renewal: `now + increment`, capped at
/// `issue_time + max_ttl`. A lease whose expiry already is at the cap (or
/// past it) cannot be renewed. For directories to share one rule.
pub fn renewal(
    issue_time: SystemTime,
    expire_time: SystemTime,
    max_ttl: Duration,
    now: SystemTime,
    increment: Duration,
) -> Result<(SystemTime, Duration), LeaseApiError> {
    let cap = issue_time
        .checked_add(max_ttl)
        .ok_or_else(|| LeaseApiError::BadRequest("max_ttl out of range".into()))?;
    // Within a second of the cap counts as at it: expiries are whole
    // seconds (VALID UNTIL), so a capped lease may sit a fraction below.
    let at_cap = cap
        .duration_since(expire_time)
        .map_or(true, |left| left < Duration::from_secs(1));
    if at_cap || now >= cap {
        return Err(LeaseApiError::PastMaxTtl);
    }
    match now.checked_add(increment) {
        Some(expiry) if expiry < cap => Ok((expiry, increment)),
        // At or past the cap, or beyond what the clock can hold: capped.
        _ => {
            let granted = cap.duration_since(now).unwrap_or_default();
            Ok((cap, Duration::from_secs(granted.as_secs())))
        }
    }
}

/// The leases rolemint knows, wherever they live. Implemented over the
/// lease registry (and, in tests, in memory: `memory.rs`).
pub trait LeaseDirectory: Send + Sync + 'static {
    /// A page of the leases matching `filter`; a listing reads pages until
    /// one has no `next`.
    fn list(&self, filter: LeaseFilter, page: PageRequest) -> DirFuture<'_, LeasePage>;
    /// One lease, or `None`.
    fn lookup(&self, lease_id: String) -> DirFuture<'_, Option<LeaseView>>;
    /// Moves the lease's deadline (and the role's VALID UNTIL) by
    /// `increment` from now, `None` meaning the template's default TTL;
    /// capped as [`renewal`] says.
    fn renew(&self, lease_id: String, increment: Option<Duration>) -> DirFuture<'_, Renewed>;
    /// Ends a lease: its session gets 57P01, its backend is terminated, its
    /// role dropped. With `sync`, resolves once the role is gone and the
    /// `lease.revoked` audit line is written. `false` when there was no
    /// such lease.
    fn revoke(&self, lease_id: String, by: EndReason, sync: bool) -> DirFuture<'_, bool>;
    /// Revokes every lease matching `filter`, however many there are: a
    /// directory that reads them in pages goes on to the last page (also
    /// when the caller stops waiting). With `sync`, resolves when all are
    /// revoked, with how many, or with an error when that did not happen
    /// in time (the revocation goes on); without, once it is under way,
    /// with how many were begun by then.
    fn revoke_matching(
        &self,
        filter: LeaseFilter,
        by: EndReason,
        sync: bool,
    ) -> DirFuture<'_, usize>;
}

/// Vault's `LIST` method.
pub(crate) fn is_list(method: &Method, query: &ListQuery) -> bool {
    method.as_str() == "LIST" || (method == Method::GET && query.list.as_deref() == Some("true"))
}

#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    list: Option<String>,
}

/// `/v1/sys/leases/lookup` and `/v1/sys/leases/lookup/`: LIST from the
/// root, or PUT/POST a lookup.
pub async fn lookup_root(
    State(state): State<Arc<AdminState>>,
    method: Method,
    Query(query): Query<ListQuery>,
    access: Access,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if is_list(&method, &query) {
        return list_keys(&state, &access, "").await;
    }
    if method != Method::PUT && method != Method::POST {
        return Err(super::method_not_allowed_error());
    }
    #[derive(Deserialize, Default)]
    struct Body {
        lease_id: Option<String>,
    }
    let body: Body = parse_body(body)?;
    let id = lease_id(body.lease_id)?;
    let lease = find_own(&state, &access, id).await?;
    Ok(envelope(lease))
}

/// `LIST /v1/sys/leases/lookup/<prefix>`.
pub async fn lookup_prefix(
    State(state): State<Arc<AdminState>>,
    method: Method,
    Query(query): Query<ListQuery>,
    Path(prefix): Path<String>,
    access: Access,
) -> Result<Response, ApiError> {
    if !is_list(&method, &query) {
        return Err(super::method_not_allowed_error());
    }
    bounded(&prefix)?;
    list_keys(&state, &access, &prefix).await
}

async fn list_keys(
    state: &AdminState,
    access: &Access,
    prefix: &str,
) -> Result<Response, ApiError> {
    let prefix = match prefix {
        "" => String::new(),
        p if p.ends_with('/') => p.to_owned(),
        p => format!("{p}/"),
    };
    let filter = LeaseFilter {
        prefix: (!prefix.is_empty()).then(|| prefix.clone()),
        ..LeaseFilter::default()
    };
    // Every page, to the last: Vault's clients take the answer as the
    // whole list. Only the keys are kept, and they are what is answered.
    let mut keys = BTreeSet::new();
    let mut page = PageRequest::first();
    loop {
        let found = state.directory.list(filter.clone(), page.clone()).await?;
        add_segments(
            &mut keys,
            &prefix,
            found
                .leases
                .iter()
                .filter(|l| access.may_act_on(&l.issuer, &l.identity))
                .map(|l| l.id.as_str()),
        );
        if keys.len() > MAX_LIST_KEYS {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "more than {MAX_LIST_KEYS} keys under this prefix; list a longer prefix, or page through /v1/rolemint/leases"
                ),
            ));
        }
        match found.next {
            Some(next) => page.after = Some(next),
            None => break,
        }
    }
    if keys.is_empty() {
        return Err(ApiError::empty_list());
    }
    Ok(envelope(serde_json::json!({ "keys": keys })))
}

/// The distinct path segments right after `prefix`, "folders" ending in
/// `/`, sorted: what Vault's LIST answers.
pub fn next_segments<'a>(prefix: &str, ids: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut keys = BTreeSet::new();
    add_segments(&mut keys, prefix, ids);
    keys.into_iter().collect()
}

/// Adds the segment after `prefix` of each id to `keys`.
fn add_segments<'a>(keys: &mut BTreeSet<String>, prefix: &str, ids: impl Iterator<Item = &'a str>) {
    for id in ids {
        let Some(rest) = id.strip_prefix(prefix) else {
            continue;
        };
        let key = match rest.find('/') {
            Some(i) => &rest[..=i],
            None if !rest.is_empty() => rest,
            None => continue,
        };
        if !keys.contains(key) {
            keys.insert(key.to_owned());
        }
    }
}

/// Vault's `increment`: seconds as a number, or a duration string
/// (`"3600"`, `"90m"`, `"1h"`); `null` or absent: the template's default.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Increment {
    Seconds(u64),
    Text(String),
}

/// A request's `increment`, at most [`MAX_INCREMENT`] (400 beyond it).
fn increment(value: Option<Increment>) -> Result<Option<Duration>, ApiError> {
    let bad = || ApiError::bad_request("increment must be seconds or a duration such as \"1h\"");
    let asked = match value {
        None => return Ok(None),
        Some(Increment::Seconds(s)) => Duration::from_secs(s),
        Some(Increment::Text(t)) => {
            let t = t.trim();
            if t.len() > 32 {
                return Err(bad());
            }
            match t.parse::<u64>() {
                Ok(s) => Duration::from_secs(s),
                Err(_) => humantime::parse_duration(t).map_err(|_| bad())?,
            }
        }
    };
    if asked > MAX_INCREMENT {
        return Err(ApiError::bad_request(format!(
            "increment must be at most {}s",
            MAX_INCREMENT.as_secs()
        )));
    }
    Ok(Some(asked))
}

#[derive(Deserialize, Default)]
struct RenewBody {
    lease_id: Option<String>,
    increment: Option<Increment>,
}

/// `PUT /v1/sys/leases/renew`.
pub async fn renew(
    State(state): State<Arc<AdminState>>,
    access: Access,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: RenewBody = parse_body(body)?;
    let id = lease_id(body.lease_id)?;
    renew_lease(&state, &access, id, increment(body.increment)?).await
}

/// `PUT /v1/sys/leases/renew/<lease_id>`.
pub async fn renew_path(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
    access: Access,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: RenewBody = parse_body(body)?;
    let id = lease_id(Some(body.lease_id.unwrap_or(id)))?;
    renew_lease(&state, &access, id, increment(body.increment)?).await
}

async fn renew_lease(
    state: &AdminState,
    access: &Access,
    id: String,
    increment: Option<Duration>,
) -> Result<Response, ApiError> {
    find_own(state, access, id.clone()).await?;
    let renewed = state.directory.renew(id.clone(), increment).await?;
    let mut warnings = Vec::new();
    if renewed.granted < renewed.requested {
        // Vault's own wording, which its clients may look for.
        warnings.push(format!(
            "TTL of \"{}s\" exceeded the effective max_ttl of \"{}s\"; TTL value is capped accordingly",
            renewed.requested.as_secs(),
            renewed.granted.as_secs()
        ));
    }
    let line = Event::LeaseRenewed {
        lease_id: id.clone(),
        role: renewed.lease.role.clone(),
        expire_time: humantime::format_rfc3339_seconds(renewed.lease.expire_time).to_string(),
        capped: !warnings.is_empty(),
        caller: access.caller.label(),
    };
    state.audit_durable(line).await?;
    Ok(lease_envelope(&id, renewed.granted.as_secs(), warnings))
}

#[derive(Deserialize)]
struct RevokeBody {
    lease_id: Option<String>,
    #[serde(default = "yes")]
    sync: bool,
}

impl Default for RevokeBody {
    fn default() -> Self {
        RevokeBody {
            lease_id: None,
            sync: true,
        }
    }
}

fn yes() -> bool {
    true
}

/// `PUT /v1/sys/leases/revoke`.
pub async fn revoke(
    State(state): State<Arc<AdminState>>,
    access: Access,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: RevokeBody = parse_body(body)?;
    let id = lease_id(body.lease_id)?;
    revoke_lease(&state, &access, id, body.sync).await
}

/// `PUT /v1/sys/leases/revoke/<lease_id>`.
pub async fn revoke_path(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
    access: Access,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: RevokeBody = parse_body(body)?;
    let id = lease_id(Some(id))?;
    revoke_lease(&state, &access, id, body.sync).await
}

async fn revoke_lease(
    state: &AdminState,
    access: &Access,
    id: String,
    sync: bool,
) -> Result<Response, ApiError> {
    match find_own(state, access, id.clone()).await {
        // Revoking what does not exist succeeds, as in Vault: the caller's
        // goal (no such lease) holds.
        Err(e) if e.status == StatusCode::BAD_REQUEST => return Ok(no_content(sync)),
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    let by = revoked_by(&access.caller);
    state.directory.revoke(id, by, sync).await?;
    Ok(no_content(sync))
}

fn no_content(sync: bool) -> Response {
    if sync {
        StatusCode::NO_CONTENT.into_response()
    } else {
        StatusCode::ACCEPTED.into_response()
    }
}

/// `PUT /v1/sys/leases/revoke-prefix/<prefix>` (operators only).
pub async fn revoke_prefix(
    State(state): State<Arc<AdminState>>,
    Path(prefix): Path<String>,
    access: Access,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: RevokeBody = parse_body(body)?;
    bounded(&prefix)?;
    let filter = LeaseFilter {
        prefix: Some(prefix),
        ..LeaseFilter::default()
    };
    state
        .directory
        .revoke_matching(filter, revoked_by(&access.caller), body.sync)
        .await?;
    Ok(no_content(body.sync))
}

/// The query of `/v1/rolemint/leases`: the filter and the page.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FullListQuery {
    identity: Option<String>,
    /// With `identity`: the issuer entry of the principal.
    issuer: Option<String>,
    template: Option<String>,
    database: Option<String>,
    /// The `next` of the page before.
    after: Option<String>,
    /// Leases per page, 1 to [`MAX_PAGE`] (the default).
    limit: Option<usize>,
}

/// `GET /v1/rolemint/leases?identity=&template=&database=&after=&limit=`
/// (operators): one page, and the marker of the next.
pub async fn list_full(
    State(state): State<Arc<AdminState>>,
    Query(query): Query<FullListQuery>,
    access: Access,
) -> Result<Response, ApiError> {
    let limit = query.limit.unwrap_or(MAX_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_PAGE}"
        )));
    }
    if let Some(after) = &query.after {
        bounded(after)?;
    }
    let mut filter = LeaseFilter {
        identity: query.identity,
        issuer: query.issuer,
        template: query.template,
        database: query.database,
        prefix: None,
    };
    // A workload pages through its own principal's leases only.
    if !access.every_lease() {
        if let Some((issuer, identity)) = principal(&access.caller) {
            filter.identity = Some(identity);
            filter.issuer = Some(issuer);
        }
    }
    let page = PageRequest {
        after: query.after,
        limit,
    };
    let found = state.directory.list(filter, page).await?;
    let leases: Vec<&LeaseView> = found
        .leases
        .iter()
        .filter(|l| access.may_act_on(&l.issuer, &l.identity))
        .take(limit)
        .collect();
    Ok(envelope(
        serde_json::json!({ "leases": leases, "next": found.next }),
    ))
}

/// `PUT /v1/rolemint/leases/revoke` `{"identity"|"template"|"database"}`
/// (operators): everything matching, at once.
pub async fn revoke_selected(
    State(state): State<Arc<AdminState>>,
    access: Access,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let filter: LeaseFilter = parse_body(body)?;
    if filter.is_unrestricted() {
        return Err(ApiError::bad_request(
            "name an identity, a template or a database to revoke",
        ));
    }
    let revoked = state
        .directory
        .revoke_matching(filter, revoked_by(&access.caller), true)
        .await?;
    Ok(Json(serde_json::json!({ "revoked": revoked })).into_response())
}

/// The lease, if it exists and the caller may act on it; 400 otherwise
/// (a workload is not told that another identity's lease exists).
async fn find_own(state: &AdminState, access: &Access, id: String) -> Result<LeaseView, ApiError> {
    match state.directory.lookup(id).await? {
        Some(lease) if access.may_act_on(&lease.issuer, &lease.identity) => Ok(lease),
        _ => Err(LeaseApiError::NotFound.into()),
    }
}

/// How the audit log names who revoked: the operator, or a workload or
/// token (its label is on the request's `admin.request` line).
fn revoked_by(caller: &Caller) -> EndReason {
    if caller.is_operator() {
        EndReason::RevokedByOperator
    } else {
        EndReason::RevokedByWorkload
    }
}

/// The `(issuer, identity)` of a caller that has one.
fn principal(caller: &Caller) -> Option<(String, String)> {
    match caller {
        Caller::Operator => None,
        Caller::Workload {
            issuer, identity, ..
        } => Some((issuer.clone(), identity.clone())),
    }
}

fn lease_id(id: Option<String>) -> Result<String, ApiError> {
    let id = id.unwrap_or_default();
    if id.is_empty() {
        return Err(ApiError::bad_request("missing lease ID"));
    }
    bounded(&id)?;
    Ok(id)
}

fn bounded(s: &str) -> Result<(), ApiError> {
    if s.len() > MAX_LEASE_ID_BYTES {
        return Err(ApiError::bad_request("lease ID or prefix too long"));
    }
    Ok(())
}

/// A JSON body, or the type's default for an empty one (Vault's clients
/// send none for some calls); 400 / 413 with the errors shape otherwise.
pub(crate) fn parse_body<T: DeserializeOwned + Default>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|rejection| {
        ApiError::new(rejection.status(), "request body too large or unreadable")
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("failed to parse JSON input: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_capped_at_max_ttl_from_issue() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let hour = Duration::from_secs(3600);
        // Issued at t0 with max_ttl 2h; at t0+30m asking for 1h: granted.
        let now = t0 + hour / 2;
        let (exp, granted) = renewal(t0, t0 + hour, 2 * hour, now, hour).unwrap();
        assert_eq!((exp, granted), (now + hour, hour));
        // Asking for 5h: capped at t0+2h, i.e. 1.5h from now.
        let (exp, granted) = renewal(t0, t0 + hour, 2 * hour, now, 5 * hour).unwrap();
        assert_eq!(exp, t0 + 2 * hour);
        assert_eq!(granted, hour + hour / 2);
        // Already at the cap.
        assert_eq!(
            renewal(t0, t0 + 2 * hour, 2 * hour, now, hour),
            Err(LeaseApiError::PastMaxTtl)
        );
    }

    #[test]
    fn list_keys_are_the_next_segment() {
        let ids = [
            "database/sessions/readonly/a1",
            "database/sessions/readonly/b2",
            "database/sessions/readwrite/c3",
            "database/creds/readonly/d4",
        ];
        assert_eq!(next_segments("", ids.iter().copied()), ["database/"]);
        assert_eq!(
            next_segments("database/", ids.iter().copied()),
            ["creds/", "sessions/"]
        );
        assert_eq!(
            next_segments("database/sessions/readonly/", ids.iter().copied()),
            ["a1", "b2"]
        );
        assert!(next_segments("other/", ids.iter().copied()).is_empty());
    }

    #[test]
    fn increments_are_seconds_or_durations() {
        let parse = |j: &str| {
            let b: RenewBody = serde_json::from_str(j).unwrap();
            increment(b.increment)
        };
        assert_eq!(
            parse(r#"{"increment": 60}"#),
            Ok(Some(Duration::from_secs(60)))
        );
        assert_eq!(
            parse(r#"{"increment": "90"}"#),
            Ok(Some(Duration::from_secs(90)))
        );
        assert_eq!(
            parse(r#"{"increment": "1h"}"#),
            Ok(Some(Duration::from_secs(3600)))
        );
        assert_eq!(parse(r#"{"increment": null}"#), Ok(None));
        assert_eq!(parse(r#"{}"#), Ok(None));
        assert!(parse(r#"{"increment": "soon"}"#).is_err());
        // Numbers past any TTL are refused, not added to the clock.
        assert!(parse(r#"{"increment": 18446744073709551615}"#).is_err());
        assert!(parse(r#"{"increment": "18446744073709551615"}"#).is_err());
        assert!(parse(r#"{"increment": "500000000000y"}"#).is_err());
        assert!(parse(r#"{"increment": 315360000}"#).is_ok());
    }

    #[test]
    fn renewal_never_overflows_the_clock() {
        let t0 = SystemTime::now();
        let hour = Duration::from_secs(3600);
        let huge = Duration::from_secs(u64::MAX);
        let (exp, _) = renewal(t0, t0 + hour, 2 * hour, t0, huge).unwrap();
        assert_eq!(exp, t0 + 2 * hour);
        assert!(renewal(t0, t0 + hour, huge, t0, hour).is_err());
    }
}
