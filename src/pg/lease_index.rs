//! The lease index: `rolemint.leases`, lease id → role, a table of
//! rolemint's own in the admin database, so that a lease is found by its id
//! (or an id prefix) without reading the comment of every minted role.
//!
//! **A row is a hint; the role's comment is the truth.** Whatever the
//! index says is checked against the catalog in the same statement: the
//! role must exist, be a live member of `rolemint_managed`, and carry a
//! lease comment naming that very lease id. A lease the index does not
//! know (or knows wrongly) is found the old way, by reading the comments
//! (`catalog.rs`), so a missing or stale row costs time, never a lease.
//!
//! # Where and when a row is written
//!
//! The mint runs in the template's database, which is rarely the admin
//! database (where the table is, and where the demo and most deployments
//! keep rolemint's schema). So the row is not written in the mint
//! transaction: each mint that committed queues `(lease id, role)`, and one
//! writer task ([`AdminClient::run_lease_index`]) writes what has queued,
//! every few milliseconds, in one statement. One path for every database,
//! and a mint never waits for, nor fails because of, its hint: a mint
//! costs a push onto a queue (measured: the bench's mint rate is unchanged
//! within its spread). The same queue carries the deletes: every
//! revocation that ended (the role dropped, gone, retained or refused)
//! forgets the role's row ([`AdminClient::revoke_batch`]).
//!
//! What can leave the index behind the catalog, and what repairs it:
//! - a lease minted moments ago (still queued), a crash between a mint's
//!   commit and the write, an admin database that was unreachable, a
//!   queue that overflowed ([`MAX_QUEUED`]), a lease minted before this
//!   table existed: the lease has no row. Lookups fall back to the
//!   catalog; mass revocations read the catalog after the index
//!   (`control/directory.rs`); and the tidy pass adds a row for every live
//!   lease without one.
//! - a crash between a `DROP ROLE` and the delete: a row whose role is
//!   gone. The lookup's check ignores it, and the tidy pass deletes it.
//! - another instance revoking a lease (found through the catalog) in the
//!   milliseconds before the minting instance's writer wrote its row: the
//!   delete finds nothing and the row lands after it. The same.
//!
//! The tidy pass's own inserts race revocations the same way (a lease
//! that ends while the insert of its row is in flight), so it checks what
//! it added once that has committed ([`recheck_added_sql`]).
//!
//! A row whose role still exists is not stale, even when its lease is
//! over: an ended session's role waits in the revoker's queue (behind a
//! mass revocation, for seconds), and its row goes when the role does.
//!
//! The tidy pass ([`AdminClient::tidy_lease_index`]) runs after a reaper
//! sweep, the first [`TIDY_FIRST`] after the process started, then at most
//! once every [`TIDY_EVERY`], sooner after this process lost a write. It
//! reads [`TIDY_CHUNK`] rows (and marker members) per statement.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use postgres_protocol::escape::escape_literal;
use tokio::sync::Notify;
use tokio_postgres::SimpleQueryMessage;
use tokio_util::sync::CancellationToken;

use super::batch::{Batch, Finish};
use super::catalog::{parse_row, CatalogFilter, CatalogLease, CatalogPage, CATALOG_PAGE};
use super::sql::minted_role;
use super::{AdminClient, MintError};

/// The table, appended to the store's migrations. `lease_id` sorts
/// bytewise (`COLLATE "C"`), so its primary key serves a prefix as a range
/// (`>= prefix AND < the next string`) on every PostgreSQL version, and
/// keyset pages in the same order; `leases_role` serves the deletes, which
/// know the role only.
pub const MIGRATION: &str = "CREATE TABLE rolemint.leases (\
       lease_id text COLLATE \"C\" PRIMARY KEY, \
       role text NOT NULL); \
     CREATE INDEX leases_role ON rolemint.leases (role)";

/// Most changes waiting for the writer. Past it a change is dropped (and
/// the tidy pass made due): the queue is bounded, the catalog is the truth.
pub const MAX_QUEUED: usize = 100_000;

/// Most changes one write carries.
const MAX_PER_WRITE: usize = 5_000;

/// How long the writer lets changes gather before it writes them: one
/// statement for a burst of mints instead of one each.
const GATHER: Duration = Duration::from_millis(10);

/// Longest pause after a failed write.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How often the tidy pass runs at most (besides after a lost write).
pub const TIDY_EVERY: Duration = Duration::from_secs(3600);

/// The first tidy pass of a process waits this long after the index is
/// enabled: lookups never need it (they fall back to the catalog), and a
/// new instance's first minute is better spent serving.
pub const TIDY_FIRST: Duration = Duration::from_secs(60);

/// One change to the index, in the order they happened.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    /// A mint committed: `lease_id` is `role`'s lease.
    Record { lease_id: String, role: String },
    /// The role's lease is over.
    Forget { role: String },
}

/// The index's state in this process, inside [`AdminClient`].
#[derive(Debug)]
pub(super) struct LeaseIndex {
    /// The table exists (the store migrated the schema): until then
    /// nothing is queued or read.
    enabled: AtomicBool,
    queue: Mutex<Vec<Change>>,
    wake: Notify,
    /// A change was dropped or a write failed since the last tidy pass.
    lost: AtomicBool,
    /// When the last tidy pass ended.
    tidied: Mutex<Option<Instant>>,
    /// When this index was made (the first tidy pass waits [`TIDY_FIRST`]).
    since: Instant,
}

impl Default for LeaseIndex {
    fn default() -> LeaseIndex {
        LeaseIndex {
            enabled: AtomicBool::default(),
            queue: Mutex::default(),
            wake: Notify::new(),
            lost: AtomicBool::default(),
            tidied: Mutex::default(),
            since: Instant::now(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LeaseIndex {
    fn push(&self, changes: impl Iterator<Item = Change>) {
        if !self.enabled.load(Ordering::Acquire) {
            return;
        }
        let mut queue = lock(&self.queue);
        for change in changes {
            if queue.len() >= MAX_QUEUED {
                if !self.lost.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        "lease index: {MAX_QUEUED} changes waiting; dropping changes until the writer catches up (lookups fall back to the catalog, the next tidy pass repairs the index)"
                    );
                }
                break;
            }
            queue.push(change);
        }
        drop(queue);
        self.wake.notify_one();
    }

    /// Takes up to [`MAX_PER_WRITE`] changes, oldest first.
    fn take(&self) -> Vec<Change> {
        let mut queue = lock(&self.queue);
        let n = queue.len().min(MAX_PER_WRITE);
        queue.drain(..n).collect()
    }

    /// Whether the tidy pass is due: [`TIDY_FIRST`] after the start, then
    /// every [`TIDY_EVERY`], and at once after a change was dropped or a
    /// write failed (so a row left behind that way is gone after the next
    /// reaper sweep).
    fn tidy_due(&self) -> bool {
        let scheduled = match *lock(&self.tidied) {
            None => self.since.elapsed() >= TIDY_FIRST,
            Some(t) => t.elapsed() >= TIDY_EVERY,
        };
        scheduled || self.lost.load(Ordering::Acquire)
    }

    /// Puts changes whose write failed back in front, as room allows.
    fn put_back(&self, mut changes: Vec<Change>) {
        let mut queue = lock(&self.queue);
        let room = MAX_QUEUED.saturating_sub(queue.len());
        if changes.len() > room {
            changes.truncate(room);
            self.lost.store(true, Ordering::Release);
        }
        changes.append(&mut queue);
        *queue = changes;
    }
}

impl AdminClient {
    /// The table exists: queue changes and read it from now on. Called by
    /// the store once its migrations have run.
    pub fn enable_lease_index(&self) {
        self.lease_index.enabled.store(true, Ordering::Release);
    }

    /// Whether lookups may ask the index.
    pub fn lease_index_enabled(&self) -> bool {
        self.lease_index.enabled.load(Ordering::Acquire)
    }

    /// Queues the row of a lease whose mint committed.
    pub(super) fn record_lease(&self, lease_id: &str, role: &str) {
        self.lease_index.push(std::iter::once(Change::Record {
            lease_id: lease_id.to_owned(),
            role: role.to_owned(),
        }));
    }

    /// Queues the deletion of the rows of `roles`, whose leases are over.
    pub(super) fn forget_roles<'a>(&self, roles: impl Iterator<Item = &'a str>) {
        self.lease_index.push(roles.map(|role| Change::Forget {
            role: role.to_owned(),
        }));
    }

    /// The writer: writes what has queued, a few milliseconds after it
    /// was queued, until `stop`; then writes what is left once. Started by
    /// the store, which owns the schema.
    pub async fn run_lease_index(&self, stop: CancellationToken) {
        let index = &self.lease_index;
        let mut backoff = Duration::from_millis(100);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = index.wake.notified() => {}
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(GATHER) => {}
            }
            loop {
                let changes = index.take();
                if changes.is_empty() {
                    backoff = Duration::from_millis(100);
                    break;
                }
                if let Err(e) = self.write_changes(&changes).await {
                    tracing::warn!(
                        changes = changes.len(),
                        "lease index: write failed, retrying in {backoff:?}: {e}"
                    );
                    index.put_back(changes);
                    index.lost.store(true, Ordering::Release);
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    index.wake.notify_one();
                    break;
                }
            }
        }
        // What the last moments queued (the tidy pass of any instance
        // repairs whatever this misses).
        let changes = index.take();
        if !changes.is_empty() {
            if let Err(e) = self.write_changes(&changes).await {
                tracing::debug!("lease index: last write failed: {e}");
            }
        }
    }

    async fn write_changes(&self, changes: &[Change]) -> Result<(), MintError> {
        let sql = write_sql(changes);
        let mut conn = self.pool.get(&self.admin_database).await?;
        conn.batch(&sql).await.map(drop)
    }

    /// The live lease `lease_id` as the index points to it, checked
    /// against its role's comment; `None` when the index does not know it
    /// (or points to a role that does not carry it).
    pub(super) async fn indexed_lease(
        &self,
        lease_id: &str,
    ) -> Result<Option<CatalogLease>, MintError> {
        let sql = indexed_lookup(lease_id);
        let mut conn = self.pool.get(&self.admin_database).await?;
        let rows = conn.batch(&sql).await?;
        let filter = CatalogFilter {
            lease_id: Some(lease_id.to_owned()),
            ..CatalogFilter::default()
        };
        Ok(parse_indexed(&rows, &filter, 1).leases.into_iter().next())
    }

    /// A page of the live leases the index lists whose id starts with
    /// `filter.prefix` (all of them without one), in lease-id order after
    /// the id `after`, each checked against its role's comment and the
    /// whole filter: at most `limit` (capped at [`CATALOG_PAGE`]) index rows
    /// are read. `next` is the lease id the next page starts after. `None`
    /// when the index is not in use.
    pub async fn lease_index_page(
        &self,
        filter: &CatalogFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<CatalogPage>, MintError> {
        if !self.lease_index_enabled() {
            return Ok(None);
        }
        let limit = limit.clamp(1, CATALOG_PAGE);
        let sql = page_query(filter.prefix.as_deref(), after, limit);
        let mut conn = self.pool.get(&self.admin_database).await?;
        let rows = conn.batch(&sql).await?;
        Ok(Some(parse_indexed(&rows, filter, limit)))
    }

    /// The tidy pass, when due (see the module doc). Errors are logged;
    /// the next sweep tries again.
    pub async fn tidy_lease_index(&self) {
        let index = &self.lease_index;
        if !self.lease_index_enabled() {
            return;
        }
        if !index.tidy_due() {
            return;
        }
        index.lost.store(false, Ordering::Release);
        let start = Instant::now();
        match self.tidy_lease_index_now().await {
            Ok((removed, added)) => {
                tracing::info!(
                    removed,
                    added,
                    ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
                    "lease index tidied"
                );
                *lock(&index.tidied) = Some(Instant::now());
            }
            Err(e) => {
                index.lost.store(true, Ordering::Release);
                tracing::warn!("lease index: tidy pass failed, retried after the next sweep: {e}");
            }
        }
    }

    /// The tidy pass itself: deletes the rows whose role is gone or can no
    /// longer log in, then adds one for every live lease without one; how
    /// many rows it removed and added. A statement per [`TIDY_CHUNK`] rows
    /// (or marker members), each a keyset range of an index, so no
    /// statement grows with the number of leases (in one statement each
    /// half took over `mint.statement_timeout` at 100,000 leases among
    /// 1,100,000 roles).
    pub async fn tidy_lease_index_now(&self) -> Result<(u64, u64), MintError> {
        let mut conn = self.pool.get(&self.admin_database).await?;
        let (mut removed, mut added) = (0, 0);
        let mut after = String::new();
        while let (Some(last), n) = chunk_row(&conn.batch(&tidy_rows_sql(&after)).await?) {
            removed += n;
            after = last;
        }
        let mut after = String::from("0");
        loop {
            let rows = conn.batch(&tidy_roles_sql(&after)).await?;
            let (Some(last), n) = chunk_row(&rows) else {
                break;
            };
            added += n;
            after = last;
            // The chunk's rows are committed now: whichever of their
            // leases ended meanwhile is seen in this statement's snapshot.
            let ids = added_ids(&rows);
            if !ids.is_empty() {
                let gone = chunk_row(&conn.batch(&recheck_added_sql(&ids)).await?).1;
                removed += gone;
                added -= gone.min(added);
            }
        }
        Ok((removed, added))
    }
}

/// The lease ids a chunk of [`tidy_roles_sql`] added (its third cell, a
/// JSON array; none when it added nothing or the cell is unreadable).
fn added_ids(rows: &[SimpleQueryMessage]) -> Vec<String> {
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(2),
            _ => None,
        })
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_default()
}

/// A tidy chunk's row: the last key it covered (`None`: nothing left) and
/// how many rows it changed.
fn chunk_row(rows: &[SimpleQueryMessage]) -> (Option<String>, u64) {
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some((
                row.get(0).map(str::to_owned),
                row.get(1).and_then(|n| n.parse().ok()).unwrap_or(0),
            )),
            _ => None,
        })
        .unwrap_or((None, 0))
}

/// One transaction applying `changes` in order: the final state of each
/// role (a lease recorded, or forgotten) is what is written, so a role
/// recorded and forgotten within one write leaves no row.
fn write_sql(changes: &[Change]) -> String {
    let mut rows: HashMap<&str, &str> = HashMap::new();
    let mut forgotten: HashSet<&str> = HashSet::new();
    for change in changes {
        match change {
            Change::Record { lease_id, role } => {
                forgotten.remove(role.as_str());
                rows.insert(role, lease_id);
            }
            Change::Forget { role } => {
                rows.remove(role.as_str());
                forgotten.insert(role);
            }
        }
    }
    // By lease id: one row each (`ON CONFLICT DO UPDATE` may not touch a
    // row twice in one statement), in a stable order.
    let by_id: BTreeMap<&str, &str> = rows.into_iter().map(|(r, id)| (id, r)).collect();
    let mut batch = Batch::begin();
    if !forgotten.is_empty() {
        let mut roles: Vec<&str> = forgotten.into_iter().collect();
        roles.sort_unstable();
        batch = batch.statement(&format!(
            "DELETE FROM rolemint.leases WHERE role = ANY ({})",
            text_array(roles.into_iter())
        ));
    }
    if !by_id.is_empty() {
        batch = batch.statement(&format!(
            "INSERT INTO rolemint.leases (lease_id, role) \
             SELECT * FROM ROWS FROM (pg_catalog.unnest({}), pg_catalog.unnest({})) \
             ON CONFLICT (lease_id) DO UPDATE SET role = EXCLUDED.role",
            text_array(by_id.keys().copied()),
            text_array(by_id.values().copied()),
        ));
    }
    batch.end(Finish::Commit)
}

fn text_array<'a>(values: impl Iterator<Item = &'a str>) -> String {
    let items: Vec<String> = values.map(escape_literal).collect();
    format!("ARRAY[{}]::pg_catalog.text[]", items.join(", "))
}

/// The first string after every string that starts with `prefix`, in the
/// bytewise order of `COLLATE "C"` (UTF-8 bytes sort as code points): the
/// prefix with its last character moved to the next one (the last
/// character dropped first when it has no next one). `None` when no string
/// is (every string of a prefix of `char::MAX`s sorts under it).
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// The index rows a page reads: the prefix as a range of the primary key,
/// after the marker.
fn page_conditions(prefix: Option<&str>, after: Option<&str>) -> String {
    let mut conditions = vec!["true".to_owned()];
    if let Some(prefix) = prefix.filter(|p| !p.is_empty()) {
        conditions.push(format!("lease_id >= {}", escape_literal(prefix)));
        if let Some(end) = prefix_end(prefix) {
            conditions.push(format!("lease_id < {}", escape_literal(&end)));
        }
    }
    if let Some(after) = after {
        conditions.push(format!("lease_id > {}", escape_literal(after)));
    }
    conditions.join(" AND ")
}

/// The lookup of one lease id through the index.
pub fn indexed_lookup(lease_id: &str) -> String {
    indexed_leases(&format!("lease_id = {}", escape_literal(lease_id)), 1)
}

/// A page of the index: ids starting with `prefix`, after `after`.
pub fn page_query(prefix: Option<&str>, after: Option<&str>, limit: usize) -> String {
    indexed_leases(&page_conditions(prefix, after), limit)
}

/// Up to `limit` index rows matching `conditions`, by lease id, each with
/// its role when that role is a live minted one (else NULLs): lease id,
/// role, `VALID UNTIL` as Unix seconds, the role's comment. The role is
/// looked up by name for each row (`pg_authid`'s name index), checked
/// exactly as the catalog read checks it (`catalog::live_leases`); the
/// comment is read for those rows only.
///
/// A `LATERAL` subquery, not a plain `LEFT JOIN ... ON`: the planner may
/// push the join's conditions on the role into a scan of every role and
/// hash-join the result, testing marker membership for each of them (a
/// page of 1,000 rows among 1,100,000 roles took 32 s that way).
fn indexed_leases(conditions: &str, limit: usize) -> String {
    format!(
        "SELECT l.lease_id, r.rolname,
       CASE WHEN pg_catalog.isfinite(r.rolvaliduntil)
            THEN pg_catalog.date_part('epoch', r.rolvaliduntil)::pg_catalog.int8 END,
       pg_catalog.shobj_description(r.oid, 'pg_authid')
  FROM (SELECT lease_id, role FROM rolemint.leases
         WHERE {conditions}
         ORDER BY lease_id
         LIMIT {limit}) l
  LEFT JOIN LATERAL (
        SELECT cand.oid, cand.rolname, cand.rolvaliduntil
          FROM pg_catalog.pg_roles cand
         WHERE cand.rolname = l.role::pg_catalog.name
           AND cand.rolcanlogin
           AND (cand.rolvaliduntil IS NULL OR cand.rolvaliduntil > pg_catalog.now())
           AND {minted}
         LIMIT 1) r ON true
 ORDER BY l.lease_id",
        // Not `x`: `minted_role` names its own join `x`, and would compare
        // the member with itself.
        minted = minted_role("cand.oid"),
    )
}

/// The leases of an index read whose role carries the very lease id of
/// its row and that pass `filter` exactly; the next page's marker when
/// `limit` rows were read.
fn parse_indexed(rows: &[SimpleQueryMessage], filter: &CatalogFilter, limit: usize) -> CatalogPage {
    let rows = rows.iter().filter_map(|m| match m {
        SimpleQueryMessage::Row(row) => Some([row.get(0), row.get(1), row.get(2), row.get(3)]),
        _ => None,
    });
    page_of(rows, filter, limit)
}

/// [`parse_indexed`] over the rows' cells: lease id, role, `VALID UNTIL`,
/// comment.
fn page_of<'a>(
    rows: impl Iterator<Item = [Option<&'a str>; 4]>,
    filter: &CatalogFilter,
    limit: usize,
) -> CatalogPage {
    let mut page = CatalogPage::default();
    let mut read = 0;
    let mut last = None;
    for [id, role, valid_until, comment] in rows {
        read += 1;
        last = id;
        let Some(lease) = parse_row(role, valid_until, comment) else {
            continue;
        };
        if Some(lease.comment.lease_id.as_str()) == id && filter.matches(&lease.comment) {
            page.leases.push(lease);
        }
    }
    if read >= limit {
        page.next = last.map(str::to_owned);
    }
    page
}

/// Rows the tidy pass reads per statement.
pub const TIDY_CHUNK: usize = 1_000;

/// The tidy pass's first half, one chunk: of the [`TIDY_CHUNK`] rows after
/// the lease id `after`, delete those whose role is gone or can no longer
/// log in (a lease that is over). The role is looked up by name for each
/// row (a scalar subquery, so an index probe, never a scan of
/// `pg_authid`). One row: the chunk's last lease id, rows deleted.
fn tidy_rows_sql(after: &str) -> String {
    format!(
        "WITH chunk AS (
  SELECT lease_id, role FROM rolemint.leases
   WHERE lease_id > {after} ORDER BY lease_id LIMIT {TIDY_CHUNK}),
gone AS (
  DELETE FROM rolemint.leases l USING chunk c
   WHERE l.lease_id = c.lease_id
     AND NOT COALESCE((SELECT r.rolcanlogin FROM pg_catalog.pg_roles r
                        WHERE r.rolname = c.role::pg_catalog.name), false)
  RETURNING 1)
SELECT (SELECT pg_catalog.max(lease_id) FROM chunk), (SELECT pg_catalog.count(*) FROM gone)",
        after = escape_literal(after),
    )
}

/// The tidy pass's second half, one chunk: of the [`TIDY_CHUNK`] members
/// of `rolemint_managed` after the oid `after` (a range of
/// `pg_auth_members`' (roleid, member) index), add a row for each live
/// minted role without one, with the lease id of its comment. The id is cut
/// out of the comment with a pattern (spaces around the `:` allowed, as
/// `jsonb` writes it) rather than cast to JSON, which would
/// fail the whole statement on one malformed comment; lease ids
/// (`database/<kind>/<template>/<random>`) hold no `"` or `\`. A row is only
/// a hint, checked on every read. One row: the chunk's last member oid,
/// rows added, their lease ids (a JSON array, NULL when none).
///
/// The statement reads the catalog in its snapshot and commits later: a
/// lease that ends in between (its role dropped, and its row's delete run
/// before this insert committed, so finding nothing to delete) would keep
/// the row this adds. So the rows a chunk added are checked again once it
/// has committed ([`recheck_added_sql`]).
fn tidy_roles_sql(after: &str) -> String {
    format!(
        "WITH chunk AS (
  SELECT m.member FROM pg_catalog.pg_auth_members m
   WHERE m.roleid = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = {marker})
     AND m.member > {after}::pg_catalog.oid AND NOT m.admin_option
   ORDER BY m.member LIMIT {TIDY_CHUNK}),
added AS (
  INSERT INTO rolemint.leases (lease_id, role)
  SELECT DISTINCT ON (s.id) s.id, s.role
    FROM (SELECT pg_catalog.substring(pg_catalog.shobj_description(r.oid, 'pg_authid'), {pattern}) AS id,
                 r.rolname::pg_catalog.text AS role
            FROM chunk c JOIN pg_catalog.pg_roles r ON r.oid = c.member
           WHERE r.rolcanlogin AND NOT r.rolsuper AND NOT r.rolcreaterole
             AND r.rolname <> CURRENT_USER
             AND NOT EXISTS (SELECT 1 FROM rolemint.leases l
                              WHERE l.role = r.rolname::pg_catalog.text)) s
   WHERE s.id IS NOT NULL
   ORDER BY s.id, s.role
  ON CONFLICT (lease_id) DO NOTHING
  RETURNING lease_id)
SELECT (SELECT pg_catalog.max(member)::pg_catalog.text FROM chunk), (SELECT pg_catalog.count(*) FROM added),
       (SELECT pg_catalog.json_agg(lease_id)::pg_catalog.text FROM added)",
        marker = escape_literal(super::MARKER_ROLE),
        after = escape_literal(after),
        pattern = escape_literal(r#""lease_id"\s*:\s*"([^"\\]+)""#),
    )
}

/// Of the rows `ids` that a tidy chunk added, deletes those whose role is
/// gone or can no longer log in, in a snapshot taken after that chunk
/// committed. Whatever revocation ended a lease before then has dropped
/// its role (or made it NOLOGIN) before, so this sees it; one that ends
/// later deletes the row itself, since the row is committed by then. One
/// row: NULL, rows deleted (the shape [`chunk_row`] reads).
fn recheck_added_sql(ids: &[String]) -> String {
    format!(
        "WITH gone AS (
  DELETE FROM rolemint.leases l
   WHERE l.lease_id = ANY ({ids})
     AND NOT COALESCE((SELECT r.rolcanlogin FROM pg_catalog.pg_roles r
                        WHERE r.rolname = l.role::pg_catalog.name), false)
  RETURNING 1)
SELECT NULL::pg_catalog.text, (SELECT pg_catalog.count(*) FROM gone)",
        ids = text_array(ids.iter().map(String::as_str)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, role: &str) -> Change {
        Change::Record {
            lease_id: id.into(),
            role: role.into(),
        }
    }

    fn forget(role: &str) -> Change {
        Change::Forget { role: role.into() }
    }

    #[test]
    fn a_write_applies_the_last_change_of_each_role() {
        let sql = write_sql(&[
            record("database/creds/r/a", "v-a"),
            record("database/creds/r/b", "v-b"),
            forget("v-a"),
            forget("v-c"),
            record("database/creds/r/o'x", "v-o'x"),
        ]);
        assert!(
            sql.starts_with("BEGIN;\n") && sql.ends_with("COMMIT"),
            "{sql}"
        );
        // v-a recorded then forgotten: deleted, not inserted.
        assert!(
            sql.contains("DELETE FROM rolemint.leases WHERE role = ANY (ARRAY['v-a', 'v-c']::pg_catalog.text[])"),
            "{sql}"
        );
        assert!(
            sql.contains("ROWS FROM (pg_catalog.unnest(ARRAY['database/creds/r/b', 'database/creds/r/o''x']::pg_catalog.text[]), pg_catalog.unnest(ARRAY['v-b', 'v-o''x']::pg_catalog.text[]))"),
            "{sql}"
        );
        let only_deletes = write_sql(&[forget("v-a")]);
        assert!(!only_deletes.contains("INSERT"), "{only_deletes}");
        let only_inserts = write_sql(&[record("i", "v-a")]);
        assert!(!only_inserts.contains("DELETE"), "{only_inserts}");
    }

    /// The queue is bounded: a change past [`MAX_QUEUED`] is dropped, and
    /// a failed write put back keeps the order (oldest first) as far as
    /// room allows; either way the tidy pass is due at once.
    #[test]
    fn a_dropped_change_makes_the_tidy_pass_due() {
        let index = LeaseIndex::default();
        index.enabled.store(true, Ordering::Release);
        *lock(&index.tidied) = Some(Instant::now());
        assert!(!index.tidy_due(), "tidied just now");

        index.push((0..=MAX_QUEUED).map(|i| forget(&format!("v-{i}"))));
        assert_eq!(lock(&index.queue).len(), MAX_QUEUED);
        assert!(index.tidy_due(), "a dropped delete leaves a row behind");

        index.lost.store(false, Ordering::Release);
        let taken = index.take();
        assert_eq!(taken.len(), MAX_PER_WRITE);
        assert_eq!(taken[0], forget("v-0"));
        index.push(std::iter::once(forget("v-new")));
        assert!(!index.tidy_due(), "room for it");
        // The write failed: back in front, but one no longer fits.
        index.put_back(taken);
        let queue = lock(&index.queue);
        assert_eq!(queue.len(), MAX_QUEUED);
        assert_eq!(queue[0], forget("v-0"));
        assert_eq!(
            queue[MAX_PER_WRITE - 2],
            forget(&format!("v-{}", MAX_PER_WRITE - 2))
        );
        assert_eq!(
            queue[MAX_PER_WRITE - 1],
            forget(&format!("v-{MAX_PER_WRITE}"))
        );
        assert_eq!(queue[MAX_QUEUED - 1], forget("v-new"));
        drop(queue);
        assert!(index.tidy_due());
    }

    #[test]
    fn what_a_tidy_chunk_added_is_checked_again() {
        // The chunk returns the lease ids it added, which are checked in a
        // statement of their own, escaped.
        assert!(tidy_roles_sql("0").contains("RETURNING lease_id"));
        assert!(tidy_roles_sql("0").contains("pg_catalog.json_agg(lease_id)"));
        let ids = [
            "database/creds/r/a".to_owned(),
            "database/sessions/r/o'b".to_owned(),
        ];
        let sql = recheck_added_sql(&ids);
        assert!(
            sql.contains("l.lease_id = ANY (ARRAY['database/creds/r/a', 'database/sessions/r/o''b']::pg_catalog.text[])"),
            "{sql}"
        );
        assert!(sql.contains("NOT COALESCE((SELECT r.rolcanlogin"), "{sql}");
        assert!(
            sql.contains("WHERE r.rolname = l.role::pg_catalog.name"),
            "{sql}"
        );
        assert!(added_ids(&[]).is_empty());
    }

    #[test]
    fn a_prefix_is_a_range_of_the_key() {
        assert_eq!(
            prefix_end("database/creds/").as_deref(),
            Some("database/creds0")
        );
        assert_eq!(prefix_end("ab").as_deref(), Some("ac"));
        assert_eq!(prefix_end("a\u{d7ff}").as_deref(), Some("a\u{e000}"));
        assert_eq!(prefix_end("a\u{10ffff}").as_deref(), Some("b"));
        assert_eq!(prefix_end("\u{10ffff}"), None);
        assert_eq!(prefix_end(""), None);
        let c = page_conditions(Some("database/creds/ro'"), Some("database/creds/ro'/x"));
        assert_eq!(
            c,
            "true AND lease_id >= 'database/creds/ro''' AND lease_id < 'database/creds/ro(' AND lease_id > 'database/creds/ro''/x'"
        );
        assert_eq!(page_conditions(Some(""), None), "true");
    }

    #[test]
    fn rows_count_only_when_the_role_carries_their_lease_id() {
        let comment = |id: &str| {
            serde_json::to_string(&super::super::LeaseComment {
                lease_id: id.into(),
                identity: "alice".into(),
                issuer: "local".into(),
                template: "readonly".into(),
                database: "appdb".into(),
                expires_at: "2026-11-22T10:00:00Z".into(),
                instance: "a".into(),
                issued_at: "2026-11-22T09:00:00Z".into(),
                kind: "creds".into(),
            })
            .unwrap()
        };
        let good = comment("database/creds/readonly/a");
        let other = comment("database/creds/readonly/zzz");
        // A row whose role carries its id; one whose role carries another
        // id (a stale row); one whose role is gone.
        let rows = [
            [
                Some("database/creds/readonly/a"),
                Some("v-a"),
                Some("1800000000"),
                Some(good.as_str()),
            ],
            [
                Some("database/creds/readonly/b"),
                Some("v-b"),
                None,
                Some(other.as_str()),
            ],
            [Some("database/creds/readonly/c"), None, None, None],
        ];
        let page = page_of(rows.into_iter(), &CatalogFilter::default(), 3);
        assert_eq!(page.leases.len(), 1, "{page:?}");
        assert_eq!(page.leases[0].role, "v-a");
        assert_eq!(page.next.as_deref(), Some("database/creds/readonly/c"));
    }

    #[test]
    fn the_tidy_pass_never_casts_comments_and_probes_roles_by_name() {
        let sql = format!("{}\n{}", tidy_rows_sql("a'b"), tidy_roles_sql("42"));
        assert!(
            sql.contains("lease_id > 'a''b' ORDER BY lease_id LIMIT 1000"),
            "{sql}"
        );
        assert!(sql.contains("m.member > '42'::pg_catalog.oid"), "{sql}");
        assert!(!sql.contains("jsonb"), "{sql}");
        // The pattern in one escaped literal (E'' for its backslash, which
        // is doubled there).
        assert!(
            sql.contains(r#" E'"lease_id"\\s*:\\s*"([^"\\\\]+)"')"#),
            "{sql}"
        );
        assert!(
            sql.contains("WHERE r.rolname = c.role::pg_catalog.name"),
            "{sql}"
        );
        assert!(sql.contains("WHERE rolname = 'rolemint_managed'"), "{sql}");
        let page = indexed_leases("lease_id = 'x'", 1);
        assert!(
            page.contains("cand.rolcanlogin") && page.contains("m.member = cand.oid"),
            "{page}"
        );
        assert!(page.contains("LEFT JOIN LATERAL"), "{page}");
    }
}
