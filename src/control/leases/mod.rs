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
//! What the handlers ask of a directory, and the types it answers in, is
//! `contract.rs`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;

mod contract;

pub use contract::{
    renewal, DirFuture, LeaseApiError, LeaseDirectory, LeaseFilter, LeasePage, LeaseView,
    PageRequest, Renewed, MAX_INCREMENT, MAX_LIST_KEYS, MAX_PAGE,
};

use super::access::Access;
use super::auth::Caller;
use super::vault::{envelope, lease_envelope, ApiError};
use super::AdminState;
use crate::lease::end::EndReason;
use crate::observe::audit::Event;

/// Longest lease id or prefix accepted.
const MAX_LEASE_ID_BYTES: usize = 512;

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
    use std::time::SystemTime;

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
