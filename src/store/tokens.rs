//! Vault tokens in PostgreSQL (`rolemint.tokens`, `rolemint.token_leases`),
//! so every instance honours a token and a restart keeps it.
//!
//! - Kept by hash only: the token's SHA-256 (the primary key) and its
//!   accessor's. Neither the token nor the accessor is stored.
//! - The tree: `parent` names the creating token's hash (`NULL` for the
//!   operator's children and orphans). Revoking a token deletes it and its
//!   whole subtree in one statement, and returns the credential leases
//!   any of them created (`token_leases`), for the caller to revoke.
//! - Uses: a token with `num_uses` has `uses_left`, spent one per request
//!   by a conditional `UPDATE` (two requests racing for the last use: the
//!   row lock lets one win). An exhausted token is revoked by the sweep,
//!   leases and children with it, as Vault does.
//! - The sweep deletes expired and exhausted tokens (and their subtrees)
//!   [`SWEEP_BATCH`] roots at a time, and forgets lease rows long past
//!   their expiry.
//!
//! Every statement is a simple-query batch with escaped literals (hashes
//! are hex, from our own code; names and meta are escaped); rows come
//! back as one JSON document each, so arrays and maps need no parsing of
//! PostgreSQL's text formats.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postgres_protocol::escape::escape_literal;
use serde::Deserialize;
use tokio_postgres::SimpleQueryMessage;

use crate::auth::token::TokenHash;
use crate::pg::{AdminClient, MintError};

/// Most expired tokens one sweep round revokes (with their subtrees).
pub const SWEEP_BATCH: usize = 500;
/// How long a lease row outlives its lease's expiry before the sweep
/// forgets it (a renewed lease's row keeps its first expiry).
const LEASE_ROW_GRACE_SECS: u64 = 7 * 24 * 3600;

/// The table's migration: appended to the store's list.
pub const MIGRATION: &str = "CREATE TABLE rolemint.tokens (\
       hash text PRIMARY KEY, \
       accessor_hash text NOT NULL UNIQUE, \
       parent text REFERENCES rolemint.tokens (hash) ON DELETE CASCADE, \
       orphan boolean NOT NULL, \
       policies jsonb NOT NULL, \
       display_name text NOT NULL, \
       meta jsonb NOT NULL, \
       path text NOT NULL, \
       role text NOT NULL, \
       issuer text NOT NULL, \
       subject text NOT NULL, \
       groups jsonb NOT NULL, \
       created_at timestamptz NOT NULL DEFAULT pg_catalog.now(), \
       creation_ttl bigint NOT NULL, \
       explicit_max_ttl bigint NOT NULL, \
       renewable boolean NOT NULL, \
       expires_at timestamptz, \
       num_uses integer NOT NULL, \
       uses_left integer NOT NULL); \
     CREATE INDEX tokens_parent ON rolemint.tokens (parent); \
     CREATE INDEX tokens_expires_at ON rolemint.tokens (expires_at); \
     CREATE TABLE rolemint.token_leases (\
       token text NOT NULL REFERENCES rolemint.tokens (hash) ON DELETE CASCADE, \
       lease_id text NOT NULL, \
       expires_at timestamptz NOT NULL, \
       PRIMARY KEY (token, lease_id))";

#[derive(Debug, thiserror::Error)]
pub enum TokenStoreError {
    /// At `vault.max_client_tokens` already.
    #[error("too many tokens; try again later")]
    Full,
    /// The principal holds its `[quotas] max_tokens_per_principal` live
    /// tokens already.
    #[error("quota exceeded: at most {0} live tokens per identity")]
    PrincipalFull(usize),
    /// The parent was revoked (or expired) meanwhile.
    #[error("parent token was revoked")]
    ParentGone,
    #[error("rolemint's token store: {0}")]
    Backend(#[from] MintError),
    #[error("rolemint's token store: unreadable row")]
    Corrupt,
}

/// SQLSTATE raised when the table is full.
const FULL_SQLSTATE: &str = "54000";

/// A stored token, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    pub hash: TokenHash,
    pub parent: Option<TokenHash>,
    pub orphan: bool,
    pub policies: Vec<String>,
    pub display_name: String,
    pub meta: BTreeMap<String, String>,
    pub path: String,
    /// The auth role it came from (login), or empty.
    pub role: String,
    /// The principal it acts as: a login's identity, or `token`.
    pub issuer: String,
    pub subject: String,
    pub groups: Vec<String>,
    pub created_at: SystemTime,
    pub creation_ttl: Duration,
    pub explicit_max_ttl: Duration,
    pub renewable: bool,
    pub expires_at: Option<SystemTime>,
    pub num_uses: u32,
    pub uses_left: u32,
}

/// A token to insert.
#[derive(Debug, Clone)]
pub struct NewToken<'a> {
    pub hash: TokenHash,
    pub accessor_hash: TokenHash,
    pub parent: Option<TokenHash>,
    pub plan: &'a crate::auth::token::Plan,
    pub role: &'a str,
    pub issuer: &'a str,
    pub subject: &'a str,
    pub groups: &'a [String],
    pub created_at: SystemTime,
}

/// What a revocation took down.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revoked {
    pub tokens: usize,
    /// Credential leases the revoked tokens created, to revoke now.
    pub leases: Vec<String>,
}

/// The row as JSON (see [`ROW`]).
#[derive(Deserialize)]
struct Row {
    hash: String,
    parent: Option<String>,
    orphan: bool,
    policies: Vec<String>,
    display_name: String,
    meta: BTreeMap<String, String>,
    path: String,
    role: String,
    issuer: String,
    subject: String,
    groups: Vec<String>,
    created_at: f64,
    creation_ttl: i64,
    explicit_max_ttl: i64,
    renewable: bool,
    expires_at: Option<f64>,
    num_uses: i32,
    uses_left: i32,
}

/// One row as a JSON document, times as epoch seconds.
const ROW: &str = "pg_catalog.json_build_object(\
    'hash', t.hash, 'parent', t.parent, 'orphan', t.orphan, 'policies', t.policies, \
    'display_name', t.display_name, 'meta', t.meta, 'path', t.path, 'role', t.role, \
    'issuer', t.issuer, 'subject', t.subject, 'groups', t.groups, \
    'created_at', extract(epoch FROM t.created_at), 'creation_ttl', t.creation_ttl, \
    'explicit_max_ttl', t.explicit_max_ttl, 'renewable', t.renewable, \
    'expires_at', extract(epoch FROM t.expires_at), 'num_uses', t.num_uses, \
    'uses_left', t.uses_left)::text";

/// A live token: not expired, a use left if counted.
const LIVE: &str = "(t.expires_at IS NULL OR t.expires_at > pg_catalog.now()) \
    AND (t.num_uses = 0 OR t.uses_left > 0)";

fn hex(h: &TokenHash) -> String {
    h.0.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<TokenHash> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(TokenHash(out))
}

fn epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn from_epoch(secs: f64) -> Option<SystemTime> {
    (secs.is_finite() && secs >= 0.0)
        .then(|| UNIX_EPOCH.checked_add(Duration::from_secs_f64(secs)))
        .flatten()
}

fn json_literal(v: &impl serde::Serialize) -> String {
    escape_literal(&serde_json::to_string(v).unwrap_or_else(|_| "null".into()))
}

fn parse(text: &str) -> Result<StoredToken, TokenStoreError> {
    let r: Row = serde_json::from_str(text).map_err(|_| TokenStoreError::Corrupt)?;
    let secs = |s: i64| Duration::from_secs(u64::try_from(s).unwrap_or(0));
    Ok(StoredToken {
        hash: unhex(&r.hash).ok_or(TokenStoreError::Corrupt)?,
        parent: match r.parent {
            Some(p) => Some(unhex(&p).ok_or(TokenStoreError::Corrupt)?),
            None => None,
        },
        orphan: r.orphan,
        policies: r.policies,
        display_name: r.display_name,
        meta: r.meta,
        path: r.path,
        role: r.role,
        issuer: r.issuer,
        subject: r.subject,
        groups: r.groups,
        created_at: from_epoch(r.created_at).ok_or(TokenStoreError::Corrupt)?,
        creation_ttl: secs(r.creation_ttl),
        explicit_max_ttl: secs(r.explicit_max_ttl),
        renewable: r.renewable,
        expires_at: match r.expires_at {
            Some(e) => Some(from_epoch(e).ok_or(TokenStoreError::Corrupt)?),
            None => None,
        },
        num_uses: u32::try_from(r.num_uses).unwrap_or(0),
        uses_left: u32::try_from(r.uses_left).unwrap_or(0),
    })
}

/// The text of every row the batch returned.
fn rows(messages: &[SimpleQueryMessage]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect()
}

/// `INSERT ... SELECT` of `token`'s row, for a `WHERE` to follow.
fn insert_select(token: &NewToken<'_>, parent: &str, issuer: &str, subject: &str) -> String {
    let p = token.plan;
    let expires = match p.expires_at {
        Some(t) => format!("pg_catalog.to_timestamp({})", epoch(t)),
        None => "NULL".into(),
    };
    format!(
        "INSERT INTO rolemint.tokens (hash, accessor_hash, parent, orphan, policies, \
           display_name, meta, path, role, issuer, subject, groups, created_at, \
           creation_ttl, explicit_max_ttl, renewable, expires_at, num_uses, uses_left) \
         SELECT {hash}, {acc}, {parent}, {orphan}, {policies}::jsonb, {display}, \
           {meta}::jsonb, {path}, {role}, {issuer}, {subject}, {groups}::jsonb, \
           pg_catalog.to_timestamp({created}), {ttl}, {emax}, {renewable}, {expires}, \
           {uses}, {uses}",
        hash = escape_literal(&hex(&token.hash)),
        acc = escape_literal(&hex(&token.accessor_hash)),
        orphan = p.orphan,
        policies = json_literal(&p.policies),
        display = escape_literal(&p.display_name),
        meta = json_literal(&p.meta),
        path = escape_literal(&p.path),
        role = escape_literal(token.role),
        groups = json_literal(&token.groups),
        created = epoch(token.created_at),
        ttl = p.ttl.as_secs(),
        emax = p.explicit_max_ttl.as_secs(),
        renewable = p.renewable,
        uses = p.num_uses,
    )
}

/// The tokens table, over the admin pool.
#[derive(Clone)]
pub struct Tokens {
    admin: std::sync::Arc<AdminClient>,
    /// Most tokens stored at once (`vault.max_client_tokens`).
    max: usize,
    /// Most live tokens one principal (issuer, subject) holds; unlimited
    /// unless [`Tokens::with_max_per_principal`] says.
    max_per_principal: usize,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("max", &self.max)
            .field("max_per_principal", &self.max_per_principal)
            .finish()
    }
}

impl Tokens {
    pub fn new(admin: std::sync::Arc<AdminClient>, max: usize) -> Tokens {
        Tokens {
            admin,
            max: max.max(1),
            max_per_principal: usize::MAX,
        }
    }

    /// The same table, with at most `max` live tokens per principal.
    pub fn with_max_per_principal(mut self, max: usize) -> Tokens {
        self.max_per_principal = max.max(1);
        self
    }

    async fn run(&self, sql: &str) -> Result<Vec<SimpleQueryMessage>, MintError> {
        let mut conn = self.admin.admin_connection().await?;
        conn.batch(sql).await
    }

    /// Stores `token`; refused when the table is full, its principal holds
    /// its quota of live tokens, or the parent is gone.
    ///
    /// The table lock serializes inserts across instances, so two racing
    /// creations cannot both take a principal's last place. The principal's
    /// count is a condition of the `INSERT` (its names are claims: they
    /// stay out of the `DO` block's dollar quotes); the statement says
    /// which condition failed, a full quota or a parent gone.
    pub async fn insert(&self, token: &NewToken<'_>) -> Result<(), TokenStoreError> {
        let parent = match &token.parent {
            Some(h) => escape_literal(&hex(h)),
            None => "NULL".into(),
        };
        let issuer = escape_literal(token.issuer);
        let subject = escape_literal(token.subject);
        let mine = format!(
            "(SELECT count(*) FROM rolemint.tokens t WHERE t.issuer = {issuer} \
             AND t.subject = {subject} AND {LIVE})"
        );
        let per_principal = i64::try_from(self.max_per_principal).unwrap_or(i64::MAX);
        let max = self.max;
        let sql = format!(
            "BEGIN; \
             LOCK TABLE rolemint.tokens IN SHARE ROW EXCLUSIVE MODE; \
             DO $rolemint$ BEGIN \
               IF (SELECT count(*) FROM rolemint.tokens) >= {max} THEN \
                 RAISE EXCEPTION USING ERRCODE = '{FULL_SQLSTATE}', MESSAGE = 'too many tokens'; \
               END IF; \
             END $rolemint$; \
             WITH inserted AS ({insert} \
               WHERE ({parent} IS NULL OR EXISTS (SELECT 1 FROM rolemint.tokens t \
                 WHERE t.hash = {parent} AND {LIVE})) AND {mine} < {per_principal} \
               RETURNING 1) \
             SELECT CASE WHEN EXISTS (SELECT 1 FROM inserted) THEN 'inserted' \
               WHEN {mine} >= {per_principal} THEN 'quota' ELSE 'parent gone' END; \
             COMMIT",
            insert = insert_select(token, &parent, &issuer, &subject),
        );
        let messages = self.run(&sql).await.map_err(|e| match &e {
            MintError::Sql { sqlstate, .. } if sqlstate == FULL_SQLSTATE => TokenStoreError::Full,
            _ => TokenStoreError::Backend(e),
        })?;
        match rows(&messages).first().map(String::as_str) {
            Some("inserted") => Ok(()),
            Some("quota") => Err(TokenStoreError::PrincipalFull(self.max_per_principal)),
            _ => Err(TokenStoreError::ParentGone),
        }
    }

    /// The live token with hash `hash`, without spending a use.
    pub async fn lookup(&self, hash: &TokenHash) -> Result<Option<StoredToken>, TokenStoreError> {
        self.find("t.hash", &hex(hash)).await
    }

    /// The live token whose accessor hashes to `accessor`.
    pub async fn lookup_accessor(
        &self,
        accessor: &TokenHash,
    ) -> Result<Option<StoredToken>, TokenStoreError> {
        self.find("t.accessor_hash", &hex(accessor)).await
    }

    async fn find(
        &self,
        column: &str,
        value: &str,
    ) -> Result<Option<StoredToken>, TokenStoreError> {
        let sql = format!(
            "SELECT {ROW} FROM rolemint.tokens t WHERE {column} = {} AND {LIVE}",
            escape_literal(value)
        );
        rows(&self.run(&sql).await?)
            .first()
            .map(|r| parse(r))
            .transpose()
    }

    /// The live token `hash` for one request: a use spent when counted.
    /// `None` when unknown, expired or used up.
    pub async fn use_once(&self, hash: &TokenHash) -> Result<Option<StoredToken>, TokenStoreError> {
        let Some(token) = self.lookup(hash).await? else {
            return Ok(None);
        };
        if token.num_uses == 0 {
            return Ok(Some(token));
        }
        // The row lock of the UPDATE decides races for the last use.
        let sql = format!(
            "UPDATE rolemint.tokens t SET uses_left = t.uses_left - 1 \
             WHERE t.hash = {} AND {LIVE} RETURNING {ROW}",
            escape_literal(&hex(hash))
        );
        rows(&self.run(&sql).await?)
            .first()
            .map(|r| parse(r))
            .transpose()
    }

    /// Sets a live token's expiry (a renewal).
    pub async fn set_expiry(
        &self,
        hash: &TokenHash,
        expires_at: SystemTime,
    ) -> Result<bool, TokenStoreError> {
        let sql = format!(
            "UPDATE rolemint.tokens t SET expires_at = pg_catalog.to_timestamp({}) \
             WHERE t.hash = {} AND {LIVE}",
            epoch(expires_at),
            escape_literal(&hex(hash))
        );
        let messages = self.run(&sql).await?;
        Ok(messages
            .iter()
            .any(|m| matches!(m, SimpleQueryMessage::CommandComplete(1))))
    }

    /// Records that `token` created the credential lease `lease_id`.
    /// `false` when the token is gone (revoked meanwhile): the caller
    /// revokes the lease.
    pub async fn add_lease(
        &self,
        token: &TokenHash,
        lease_id: &str,
        expires_at: SystemTime,
    ) -> Result<bool, TokenStoreError> {
        let t = escape_literal(&hex(token));
        let sql = format!(
            "INSERT INTO rolemint.token_leases (token, lease_id, expires_at) \
             SELECT {t}, {}, pg_catalog.to_timestamp({}) \
             WHERE EXISTS (SELECT 1 FROM rolemint.tokens WHERE hash = {t}) \
             ON CONFLICT DO NOTHING",
            escape_literal(lease_id),
            epoch(expires_at),
        );
        let messages = self.run(&sql).await?;
        Ok(messages
            .iter()
            .any(|m| matches!(m, SimpleQueryMessage::CommandComplete(1))))
    }

    /// Revokes the tokens `roots` (hashes) and every descendant: deleted in
    /// one statement; the leases they created come back for revocation.
    pub async fn revoke(&self, roots: &[TokenHash]) -> Result<Revoked, TokenStoreError> {
        if roots.is_empty() {
            return Ok(Revoked::default());
        }
        let list: Vec<String> = roots.iter().map(|h| escape_literal(&hex(h))).collect();
        let sql = format!(
            "WITH RECURSIVE tree AS (\
               SELECT hash FROM rolemint.tokens WHERE hash IN ({list}) \
               UNION SELECT c.hash FROM rolemint.tokens c JOIN tree ON c.parent = tree.hash), \
             leases AS (DELETE FROM rolemint.token_leases \
               WHERE token IN (SELECT hash FROM tree) RETURNING lease_id), \
             gone AS (DELETE FROM rolemint.tokens WHERE hash IN (SELECT hash FROM tree) \
               RETURNING hash) \
             SELECT 'L' || lease_id FROM leases \
             UNION ALL SELECT 'T' || pg_catalog.count(*)::text FROM gone",
            list = list.join(", ")
        );
        let mut revoked = Revoked::default();
        for row in rows(&self.run(&sql).await?) {
            if let Some(lease) = row.strip_prefix('L') {
                revoked.leases.push(lease.to_owned());
            } else if let Some(n) = row.strip_prefix('T') {
                revoked.tokens = n.parse().unwrap_or(0);
            }
        }
        Ok(revoked)
    }

    /// One sweep round: revokes up to [`SWEEP_BATCH`] expired or used-up
    /// tokens with their subtrees, and forgets lease rows long expired.
    pub async fn sweep(&self) -> Result<Revoked, TokenStoreError> {
        let sql =
            format!("SELECT t.hash FROM rolemint.tokens t WHERE NOT ({LIVE}) LIMIT {SWEEP_BATCH}");
        let roots: Vec<TokenHash> = rows(&self.run(&sql).await?)
            .iter()
            .filter_map(|h| unhex(h))
            .collect();
        let revoked = self.revoke(&roots).await?;
        let forget = format!(
            "DELETE FROM rolemint.token_leases WHERE ctid IN (SELECT ctid FROM \
             rolemint.token_leases WHERE expires_at < pg_catalog.now() - \
             interval '{LEASE_ROW_GRACE_SECS} seconds' LIMIT {SWEEP_BATCH})"
        );
        self.run(&forget).await?;
        Ok(revoked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_round_trip_through_hex_and_rows_parse() {
        let h = TokenHash::of("rmv.x");
        assert_eq!(unhex(&hex(&h)), Some(h));
        assert_eq!(unhex("zz"), None);
        let row = serde_json::json!({
            "hash": hex(&h), "parent": null, "orphan": true, "policies": ["apps", "default"],
            "display_name": "token", "meta": {"a": "b"}, "path": "auth/token/create",
            "role": "", "issuer": "token", "subject": "token-1", "groups": [],
            "created_at": 1_800_000_000.5, "creation_ttl": 3600, "explicit_max_ttl": 0,
            "renewable": true, "expires_at": 1_800_003_600.5, "num_uses": 0, "uses_left": 0,
        });
        let t = parse(&row.to_string()).unwrap();
        assert_eq!(t.hash, h);
        assert_eq!(t.policies, ["apps", "default"]);
        assert_eq!(t.creation_ttl, Duration::from_secs(3600));
        assert!(t.expires_at.unwrap() > t.created_at);
        assert!(parse("{}").is_err());
    }
}
