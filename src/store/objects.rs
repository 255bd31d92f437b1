//! The SQL of `rolemint.objects` and `rolemint.generations`, and the
//! parsing of what comes back.
//!
//! Each write is one simple-query batch, one transaction: bump the kind's
//! generation (its row lock also serializes the writers of one kind, so
//! the per-kind bound below holds under concurrency), check the bound,
//! write, and `pg_notify` the kind. Values reach SQL only as escaped
//! literals; names are checked to a small alphabet before (see `mod.rs`).

use std::collections::BTreeMap;

use postgres_protocol::escape::escape_literal;
use tokio_postgres::{SimpleQueryMessage, SimpleQueryRow};

use super::{Kind, Objects, Stored, CHANNEL};

/// The SQLSTATE of the bound's refusal: `program_limit_exceeded`.
pub(super) const TOO_MANY_SQLSTATE: &str = "54000";

/// Every kind's generation.
pub(super) const GENERATIONS: &str = "SELECT kind, generation::text FROM rolemint.generations";

/// Bumps `kind`'s generation: the first statement of every write.
fn bump(kind: &str) -> String {
    format!(
        "INSERT INTO rolemint.generations AS g (kind, generation) VALUES ({kind}, 1) \
         ON CONFLICT (kind) DO UPDATE SET generation = g.generation + 1"
    )
}

/// Insert or replace `kind`/`name`, refused with [`TOO_MANY_SQLSTATE`] when
/// it would be the `max + 1`th of its kind.
pub(super) fn put(kind: Kind, name: &str, body: &str, writer: &str, max: usize) -> String {
    let k = escape_literal(kind.as_str());
    let n = escape_literal(name);
    let b = escape_literal(body);
    let w = escape_literal(writer);
    let channel = escape_literal(CHANNEL);
    // The DO block's body is dollar-quoted: only the kind and the name go
    // in it, both from alphabets without '$'.
    format!(
        "BEGIN; {bump}; \
         DO $rolemint$ BEGIN \
           IF NOT EXISTS (SELECT 1 FROM rolemint.objects WHERE kind = {k} AND name = {n}) \
              AND (SELECT count(*) FROM rolemint.objects WHERE kind = {k}) >= {max} THEN \
             RAISE EXCEPTION USING ERRCODE = '{TOO_MANY_SQLSTATE}', \
               MESSAGE = 'rolemint store: too many objects of this kind'; \
           END IF; \
         END $rolemint$; \
         INSERT INTO rolemint.objects (kind, name, body, written_by) \
           VALUES ({k}, {n}, {b}::jsonb, {w}) \
           ON CONFLICT (kind, name) DO UPDATE SET body = excluded.body, \
             written_by = excluded.written_by, written_at = pg_catalog.now(); \
         SELECT pg_catalog.pg_notify({channel}, {k}); \
         COMMIT",
        bump = bump(&k),
    )
}

/// Deletes `kind`/`name` (the third statement's count says whether it was there).
pub(super) fn delete(kind: Kind, name: &str) -> String {
    let k = escape_literal(kind.as_str());
    let n = escape_literal(name);
    let channel = escape_literal(CHANNEL);
    format!(
        "BEGIN; {bump}; \
         DELETE FROM rolemint.objects WHERE kind = {k} AND name = {n}; \
         SELECT pg_catalog.pg_notify({channel}, {k}); \
         COMMIT",
        bump = bump(&k),
    )
}

/// Moves template `name` to the retired templates (same body), and drops
/// retired ones older than `kept` or past the newest `max` (the third
/// statement's count says whether the template was there).
pub(super) fn retire(name: &str, writer: &str, kept: std::time::Duration, max: usize) -> String {
    let from = escape_literal(Kind::Template.as_str());
    let to = escape_literal(Kind::RetiredTemplate.as_str());
    let n = escape_literal(name);
    let w = escape_literal(writer);
    let channel = escape_literal(CHANNEL);
    format!(
        "BEGIN; {bump_from}; \
         WITH gone AS (DELETE FROM rolemint.objects WHERE kind = {from} AND name = {n} \
           RETURNING body) \
         INSERT INTO rolemint.objects (kind, name, body, written_by) \
           SELECT {to}, {n}, body, {w} FROM gone \
           ON CONFLICT (kind, name) DO UPDATE SET body = excluded.body, \
             written_by = excluded.written_by, written_at = pg_catalog.now(); \
         {bump_to}; \
         DELETE FROM rolemint.objects WHERE kind = {to} AND \
           (written_at < pg_catalog.now() - pg_catalog.make_interval(secs => {kept}) \
            OR name IN (SELECT name FROM rolemint.objects WHERE kind = {to} \
                        ORDER BY written_at DESC, name OFFSET {max})); \
         SELECT pg_catalog.pg_notify({channel}, {from}); \
         SELECT pg_catalog.pg_notify({channel}, {to}); \
         COMMIT",
        bump_from = bump(&from),
        bump_to = bump(&to),
        kept = kept.as_secs(),
    )
}

/// Replaces `kind`/`name`'s body where it still is `expected` (the third
/// statement's count says whether it was).
pub(super) fn replace(kind: Kind, name: &str, expected: &str, body: &str, writer: &str) -> String {
    let k = escape_literal(kind.as_str());
    let n = escape_literal(name);
    let e = escape_literal(expected);
    let b = escape_literal(body);
    let w = escape_literal(writer);
    let channel = escape_literal(CHANNEL);
    format!(
        "BEGIN; {bump}; \
         UPDATE rolemint.objects SET body = {b}::jsonb, written_by = {w}, \
           written_at = pg_catalog.now() \
           WHERE kind = {k} AND name = {n} AND body = {e}::jsonb; \
         SELECT pg_catalog.pg_notify({channel}, {k}); \
         COMMIT",
        bump = bump(&k),
    )
}

/// Whether [`delete`]'s (or [`replace`]'s) batch changed a row.
pub(super) fn deleted(rows: &[SimpleQueryMessage]) -> bool {
    let counts: Vec<u64> = rows
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .collect();
    // BEGIN, INSERT (bump), DELETE, SELECT, COMMIT.
    counts.get(2).is_some_and(|n| *n > 0)
}

/// The generation and the objects of `kind` from one snapshot of the
/// database (repeatable read), at most `max + 1` (more is logged, cut).
pub(super) fn read_kind(kind: Kind, max: usize) -> String {
    let k = escape_literal(kind.as_str());
    format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; \
         SELECT coalesce((SELECT generation FROM rolemint.generations WHERE kind = {k}), 0)::text; \
         SELECT name, body::text, written_by, \
           pg_catalog.to_char(written_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
           FROM rolemint.objects WHERE kind = {k} ORDER BY name LIMIT {limit}; \
         COMMIT",
        limit = max + 1,
    )
}

/// The rows of each statement of a batch, in order.
fn statements(rows: &[SimpleQueryMessage]) -> Vec<Vec<&SimpleQueryRow>> {
    let mut all = vec![Vec::new()];
    for m in rows {
        match m {
            SimpleQueryMessage::Row(r) => all.last_mut().into_iter().for_each(|s| s.push(r)),
            SimpleQueryMessage::CommandComplete(_) => all.push(Vec::new()),
            _ => {}
        }
    }
    all
}

/// [`read_kind`]'s answer as [`Objects`]. A body that is not JSON (it is
/// `jsonb`, so only a broken server sends one) or more than `max` objects
/// are logged and left out.
pub(super) fn parse_kind(kind: Kind, rows: &[SimpleQueryMessage], max: usize) -> Objects {
    let stmts = statements(rows);
    // BEGIN, SELECT generation, SELECT objects, COMMIT.
    let generation = stmts
        .get(1)
        .and_then(|s| s.first())
        .and_then(|r| r.get(0))
        .and_then(|g| g.parse().ok())
        .unwrap_or(0);
    let mut items = BTreeMap::new();
    for row in stmts.get(2).into_iter().flatten() {
        if items.len() == max {
            tracing::warn!(
                kind = kind.as_str(),
                "more than {max} stored objects of this kind; the rest are ignored"
            );
            break;
        }
        let (Some(name), Some(body), Some(by), Some(at)) =
            (row.get(0), row.get(1), row.get(2), row.get(3))
        else {
            continue;
        };
        match serde_json::from_str(body) {
            Ok(body) => {
                items.insert(
                    name.to_owned(),
                    Stored {
                        body,
                        written_by: by.to_owned(),
                        written_at: at.to_owned(),
                    },
                );
            }
            Err(e) => tracing::warn!(kind = kind.as_str(), name, "stored body unreadable: {e}"),
        }
    }
    Objects { generation, items }
}

/// [`GENERATIONS`]' answer: the kinds this rolemint knows, with theirs.
pub(super) fn generations(rows: &[SimpleQueryMessage]) -> Vec<(Kind, i64)> {
    rows.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .filter_map(|r| {
            let kind = Kind::parse(r.get(0)?)?;
            Some((kind, r.get(1)?.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_reach_sql_only_as_literals() {
        let sql = put(
            Kind::Policy,
            "a",
            r#"{"x":"'; DROP TABLE t; --"}"#,
            "o'b",
            10,
        );
        assert!(
            sql.contains(r#"'{"x":"''; DROP TABLE t; --"}'::jsonb"#),
            "{sql}"
        );
        assert!(sql.contains("'o''b'"), "{sql}");
        assert!(
            sql.contains("pg_notify('rolemint_store', 'policy')"),
            "{sql}"
        );
    }
}
