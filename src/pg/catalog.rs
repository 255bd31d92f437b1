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

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postgres_protocol::escape::escape_literal;
use tokio_postgres::SimpleQueryMessage;

use super::sql::{minted_role, LeaseComment};
use super::{AdminClient, MintError};

/// Most leases one catalog read returns: bounds the memory of a listing
/// (the same bound as one reaper sweep).
pub const MAX_CATALOG_LEASES: usize = super::MAX_ROLES_PER_SWEEP;

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
    /// The role's `VALID UNTIL`; `None` if it has none (a template that
    /// leaves it out).
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

impl AdminClient {
    /// The live leases matching `filter`, from the catalog (all instances),
    /// at most [`MAX_CATALOG_LEASES`], ordered by role name. One statement
    /// on an admin connection, bounded by `mint.statement_timeout`.
    pub async fn catalog_leases(
        &self,
        filter: &CatalogFilter,
    ) -> Result<Vec<CatalogLease>, MintError> {
        let mut conn = self.pool.get(&self.admin_database).await?;
        let rows = conn.batch(&live_leases(filter)).await?;
        Ok(parse_rows(&rows, filter))
    }

    /// One live lease by id, from the catalog.
    pub async fn catalog_lease(&self, lease_id: &str) -> Result<Option<CatalogLease>, MintError> {
        let filter = CatalogFilter {
            lease_id: Some(lease_id.to_owned()),
            ..CatalogFilter::default()
        };
        Ok(self.catalog_leases(&filter).await?.into_iter().next())
    }
}

/// The query: minted roles that can still log in and have not expired,
/// whose comment contains every needle of `filter`.
fn live_leases(filter: &CatalogFilter) -> String {
    let mut conditions = vec![
        "r.rolcanlogin".to_owned(),
        "(r.rolvaliduntil IS NULL OR r.rolvaliduntil > pg_catalog.now())".to_owned(),
        minted_role("r.oid"),
    ];
    for needle in needles(filter) {
        conditions.push(format!(
            "pg_catalog.strpos(pg_catalog.shobj_description(r.oid, 'pg_authid'), {}) > 0",
            escape_literal(&needle)
        ));
    }
    format!(
        "SELECT r.rolname,
       pg_catalog.date_part('epoch', r.rolvaliduntil)::pg_catalog.int8,
       pg_catalog.shobj_description(r.oid, 'pg_authid')
  FROM pg_catalog.pg_roles r
 WHERE {}
 ORDER BY r.rolname
 LIMIT {MAX_CATALOG_LEASES}",
        conditions.join("\n   AND ")
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

fn parse_rows(rows: &[SimpleQueryMessage], filter: &CatalogFilter) -> Vec<CatalogLease> {
    rows.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => parse_row(row.get(0), row.get(1), row.get(2)),
            _ => None,
        })
        .filter(|lease| filter.matches(&lease.comment))
        .collect()
}

/// A row, or `None` when its comment is not a lease (a role an operator
/// marked by hand, a comment edited since).
fn parse_row(
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
        let sql = live_leases(&CatalogFilter::default());
        assert!(sql.contains("r.rolcanlogin"), "{sql}");
        assert!(sql.contains("r.rolvaliduntil > pg_catalog.now()"), "{sql}");
        assert!(sql.contains("g.rolname = 'rolemint_managed'"), "{sql}");
        assert!(sql.contains("NOT m.admin_option"), "{sql}");
        assert!(
            sql.contains(&format!("LIMIT {MAX_CATALOG_LEASES}")),
            "{sql}"
        );
        assert!(!sql.contains("strpos"), "{sql}");
    }

    #[test]
    fn filters_become_escaped_substring_needles() {
        let filter = CatalogFilter {
            identity: Some("o'brien\"; DROP ROLE x; --".into()),
            prefix: Some("database/sessions/".into()),
            ..CatalogFilter::default()
        };
        let sql = live_leases(&filter);
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
