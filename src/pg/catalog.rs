//! Leases as the catalog records them: every live role rolemint minted, on
//! any instance, read from `pg_roles` and its lease comment
//! (`pg_shdescription`).
//!
//! The database is the record (a role is a member of `rolemint_managed`
//! and carries its lease as JSON in `COMMENT ON ROLE`), so the lease API of
//! any instance finds the leases of every instance here, and acts on them
//! through the same revoke and renew SQL as its own.
//!
//! A lease is *live* when its role can still log in (revocation begins
//! with `NOLOGIN`) and its `VALID UNTIL` has not passed: a role being
//! dropped, or waiting for the reaper past its expiry, is a lease that is
//! over, and the API no longer shows it.
//!
//! Filters are pushed into the query as plain substring tests (`strpos`,
//! no pattern characters) on the comment, with needles built by the same
//! JSON serializer that wrote the comments, so the row limit applies after
//! filtering; every row is then parsed and checked exactly here. Comments
//! are not cast to `jsonb` in SQL: one malformed comment would fail the
//! whole query.
//!
//! Reads come in pages of at most [`CATALOG_PAGE`] leases, in role-name
//! order, each page starting after the last role name of the one before
//! (keyset pagination: a role dropped or minted meanwhile shifts nothing).
//! A caller that must see every match (a list, a revoke) reads on until a
//! page says there is no next one: the catalog holds as many leases as
//! clients asked for, and no read may silently stop at a bound.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postgres_protocol::escape::escape_literal;
use tokio_postgres::SimpleQueryMessage;

use super::sql::{minted_role, LeaseComment};
use super::{AdminClient, MintError};

/// Leases one catalog read returns unless asked for more: a page of the
/// lease API, and a page of a mass revocation.
pub const CATALOG_PAGE: usize = 1_000;

/// Most leases one catalog read returns (a `LIST` gathering every key asks
/// for this many): bounds the memory of a read, a few MiB of rows.
pub const MAX_CATALOG_READ: usize = 10_000;

/// Which leases to read: every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatalogFilter {
    /// Exactly this lease id.
    pub lease_id: Option<String>,
    /// Lease ids starting with this.
    pub prefix: Option<String>,
    pub identity: Option<String>,
    pub template: Option<String>,
    pub database: Option<String>,
}

impl CatalogFilter {
    /// Whether a parsed comment passes the filter (the SQL needles only
    /// narrow the rows; this is the exact test).
    pub fn matches(&self, c: &LeaseComment) -> bool {
        let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        eq(&self.lease_id, &c.lease_id)
            && eq(&self.identity, &c.identity)
            && eq(&self.template, &c.template)
            && eq(&self.database, &c.database)
            && self
                .prefix
                .as_deref()
                .is_none_or(|p| c.lease_id.starts_with(p))
    }
}

/// One live lease, as the catalog has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogLease {
    /// The minted role.
    pub role: String,
    /// The role's `VALID UNTIL`; `None` if it has none, or has `infinity`
    /// (an epoch of `infinity` does not fit the `int8` the query reads, so
    /// the query reads it as NULL): then the comment's expiry counts.
    pub valid_until: Option<SystemTime>,
    /// The lease comment: id, identity, template, database, instance,
    /// issue time, kind.
    pub comment: LeaseComment,
}

impl CatalogLease {
    /// When the lease was issued, if its comment says (comments written
    /// before `issued_at` existed do not).
    pub fn issued_at(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339(&self.comment.issued_at).ok()
    }

    /// When it runs out: `VALID UNTIL`, else the comment's expiry.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.valid_until
            .or_else(|| humantime::parse_rfc3339(&self.comment.expires_at).ok())
    }
}

/// One page of a catalog read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatalogPage {
    /// The leases of the page that match the filter exactly, by role name.
    pub leases: Vec<CatalogLease>,
    /// The role name the next page starts after; `None` when this page
    /// was the last. Set whenever the page was full, even if the exact
    /// test left fewer leases in it: the marker is the last role the query
    /// returned, not the last lease kept.
    pub next: Option<String>,
}

impl AdminClient {
    /// A page of the live leases matching `filter`, from the catalog (all
    /// instances): at most `limit` (capped at [`MAX_CATALOG_READ`]), ordered by
    /// role name, starting after the role named `after`. One statement on
    /// an admin connection, bounded by `mint.statement_timeout`.
    pub async fn catalog_page(
        &self,
        filter: &CatalogFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<CatalogPage, MintError> {
        let limit = limit.clamp(1, MAX_CATALOG_READ);
        let mut conn = self.pool.get(&self.admin_database).await?;
        let rows = conn.batch(&live_leases(filter, after, limit)).await?;
        Ok(parse_page(&rows, filter, limit))
    }

    /// One live lease by id: from the lease index (`lease_index.rs`)
    /// when it knows the lease, else from the catalog (all instances),
    /// reading comments. The index is a hint checked against the role's
    /// comment; a lease it misses (minted moments ago on another instance,
    /// before the index existed, or whose row was lost) is still found here,
    /// at the cost of the comment read.
    pub async fn catalog_lease(&self, lease_id: &str) -> Result<Option<CatalogLease>, MintError> {
        if self.lease_index_enabled() {
            match self.indexed_lease(lease_id).await {
                Ok(Some(lease)) => return Ok(Some(lease)),
                Ok(None) => {}
                Err(e) => tracing::warn!("lease index: lookup failed, reading the catalog: {e}"),
            }
        }
        let filter = CatalogFilter {
            lease_id: Some(lease_id.to_owned()),
            ..CatalogFilter::default()
        };
        let mut after = None;
        // Ids are unique, so the first page holds it; the loop only guards
        // against a page of hand-edited comments that merely contain it.
        loop {
            let page = self
                .catalog_page(&filter, after.as_deref(), CATALOG_PAGE)
                .await?;
            if let Some(lease) = page.leases.into_iter().next() {
                return Ok(Some(lease));
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(None),
            }
        }
    }
}

/// The query: minted roles after `after` that can still log in and have
/// not expired, whose comment contains every needle of `filter`; `limit`
/// of them, by name.
///
/// The cheap conditions sort the candidates by name in a subquery (`OFFSET
/// 0` keeps the planner from pulling the comment tests into it); the
/// comment, a `pg_shdescription` probe per role, is then read in that order
/// only until the page is full. Written as one flat query, the planner
/// starts from the marker's members and tests every member's comment
/// before its top-N sort: one probe per lease for the first page, whatever
/// the page size (25,200 marked roles: 550–660 ms flat, 240–330 ms so).
pub fn live_leases(filter: &CatalogFilter, after: Option<&str>, limit: usize) -> String {
    let mut conditions = vec![
        "r.rolcanlogin".to_owned(),
        "(r.rolvaliduntil IS NULL OR r.rolvaliduntil > pg_catalog.now())".to_owned(),
        minted_role("r.oid"),
    ];
    if let Some(after) = after {
        // `name` compares in the C collation: the order of ORDER BY below.
        conditions.push(format!("r.rolname > {}", escape_literal(after)));
    }
    let tests: Vec<String> = needles(filter)
        .iter()
        .map(|needle| {
            format!(
                "pg_catalog.strpos(pg_catalog.shobj_description(s.oid, 'pg_authid'), {}) > 0",
                escape_literal(needle)
            )
        })
        .collect();
    let tests = if tests.is_empty() {
        String::new()
    } else {
        format!("\n WHERE {}", tests.join("\n   AND "))
    };
    format!(
        "SELECT s.rolname,
       CASE WHEN pg_catalog.isfinite(s.rolvaliduntil)
            THEN pg_catalog.date_part('epoch', s.rolvaliduntil)::pg_catalog.int8 END,
       pg_catalog.shobj_description(s.oid, 'pg_authid')
  FROM (SELECT r.oid, r.rolname, r.rolvaliduntil
          FROM pg_catalog.pg_roles r
         WHERE {}
         ORDER BY r.rolname
        OFFSET 0) s{tests}
 ORDER BY s.rolname
 LIMIT {limit}",
        conditions.join("\n           AND ")
    )
}

/// Substrings the comment of a matching lease contains: `"key":"value"`
/// exactly as `serde_json` writes it (a prefix without its closing quote).
fn needles(filter: &CatalogFilter) -> Vec<String> {
    let json = |s: &str| serde_json::to_string(s).expect("a string serializes");
    let mut out = Vec::new();
    let fields = [
        ("lease_id", &filter.lease_id),
        ("identity", &filter.identity),
        ("template", &filter.template),
        ("database", &filter.database),
    ];
    for (key, value) in fields {
        if let Some(value) = value {
            out.push(format!("\"{key}\":{}", json(value)));
        }
    }
    if let Some(prefix) = &filter.prefix {
        let quoted = json(prefix);
        // Drop the closing quote: the id goes on after the prefix.
        out.push(format!("\"lease_id\":{}", &quoted[..quoted.len() - 1]));
    }
    out
}

/// The leases of the rows that match exactly, and the next page's marker
/// when the query returned a full page of `limit` rows.
fn parse_page(rows: &[SimpleQueryMessage], filter: &CatalogFilter, limit: usize) -> CatalogPage {
    let mut page = CatalogPage::default();
    let mut returned = 0;
    let mut last = None;
    for row in rows.iter().filter_map(|m| match m {
        SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    }) {
        returned += 1;
        last = row.get(0);
        if let Some(lease) = parse_row(row.get(0), row.get(1), row.get(2)) {
            if filter.matches(&lease.comment) {
                page.leases.push(lease);
            }
        }
    }
    if returned >= limit {
        page.next = last.map(str::to_owned);
    }
    page
}

/// A row, or `None` when its comment is not a lease (a role an operator
/// marked by hand, a comment edited since).
pub(super) fn parse_row(
    role: Option<&str>,
    valid_until: Option<&str>,
    comment: Option<&str>,
) -> Option<CatalogLease> {
    let comment: LeaseComment = serde_json::from_str(comment?).ok()?;
    if comment.lease_id.is_empty() {
        return None;
    }
    let valid_until = valid_until
        .and_then(|s| s.parse::<i64>().ok())
        .and_then(|secs| {
            UNIX_EPOCH.checked_add(Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
        });
    Some(CatalogLease {
        role: role?.to_owned(),
        valid_until,
        comment,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comment(id: &str, identity: &str) -> String {
        serde_json::to_string(&LeaseComment {
            lease_id: id.into(),
            identity: identity.into(),
            issuer: "local".into(),
            template: "readonly".into(),
            database: "appdb".into(),
            expires_at: "2026-11-22T10:00:00Z".into(),
            instance: "node-b".into(),
            issued_at: "2026-11-22T09:00:00Z".into(),
            kind: "session".into(),
        })
        .unwrap()
    }

    #[test]
    fn only_live_minted_roles_are_read_and_bounded() {
        let sql = live_leases(&CatalogFilter::default(), None, CATALOG_PAGE);
        assert!(sql.contains("r.rolcanlogin"), "{sql}");
        assert!(sql.contains("r.rolvaliduntil > pg_catalog.now()"), "{sql}");
        assert!(sql.contains("g.rolname = 'rolemint_managed'"), "{sql}");
        assert!(sql.contains("NOT m.admin_option"), "{sql}");
        assert!(sql.contains(&format!("LIMIT {CATALOG_PAGE}")), "{sql}");
        assert!(!sql.contains("strpos"), "{sql}");
        assert!(!sql.contains("r.rolname >"), "{sql}");
    }

    #[test]
    fn a_page_starts_after_the_escaped_marker() {
        let sql = live_leases(&CatalogFilter::default(), Some("v-o'b-1"), 7);
        assert!(sql.contains("r.rolname > 'v-o''b-1'"), "{sql}");
        assert!(sql.contains("ORDER BY s.rolname\n LIMIT 7"), "{sql}");
    }

    #[test]
    fn filters_become_escaped_substring_needles() {
        let filter = CatalogFilter {
            identity: Some("o'brien\"; DROP ROLE x; --".into()),
            prefix: Some("database/sessions/".into()),
            ..CatalogFilter::default()
        };
        let sql = live_leases(&filter, None, CATALOG_PAGE);
        // The identity as serde_json writes it (`\"`), inside one escaped
        // literal: quotes doubled, backslashes doubled in E'' syntax.
        assert!(
            sql.contains(r#"E'"identity":"o''brien\\"; DROP ROLE x; --"'"#),
            "{sql}"
        );
        assert!(sql.contains(r#"'"lease_id":"database/sessions/'"#), "{sql}");
        // The needles are found in a real comment.
        let c = comment(
            "database/sessions/readonly/abc",
            "o'brien\"; DROP ROLE x; --",
        );
        for needle in needles(&filter) {
            assert!(c.contains(&needle), "{needle} in {c}");
        }
    }

    #[test]
    fn rows_are_parsed_and_checked_exactly() {
        let id = "database/sessions/readonly/abc";
        let good = comment(id, "alice");
        let lease = parse_row(Some("v-alice-1"), Some("1800000000"), Some(&good)).unwrap();
        assert_eq!(lease.role, "v-alice-1");
        assert_eq!(
            lease.expires_at(),
            Some(UNIX_EPOCH + Duration::from_secs(1_800_000_000))
        );
        assert!(lease.issued_at().is_some());
        assert_eq!(lease.comment.instance, "node-b");
        // No VALID UNTIL: the comment's expiry.
        let lease = parse_row(Some("v-alice-1"), None, Some(&good)).unwrap();
        assert_eq!(
            lease.expires_at(),
            humantime::parse_rfc3339("2026-11-22T10:00:00Z").ok()
        );
        assert!(parse_row(Some("v-x"), None, Some("not json")).is_none());
        assert!(parse_row(Some("v-x"), None, None).is_none());

        let exact = CatalogFilter {
            lease_id: Some("database/sessions/readonly/ab".into()),
            ..CatalogFilter::default()
        };
        assert!(!exact.matches(&lease.comment), "a longer id is not the id");
        let prefix = CatalogFilter {
            prefix: Some("database/sessions/readonly/ab".into()),
            identity: Some("alice".into()),
            ..CatalogFilter::default()
        };
        assert!(prefix.matches(&lease.comment));
    }
}
