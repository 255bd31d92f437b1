//! How every multi-statement string rolemint sends is put together: the
//! mint (`sql.rs`), the revocation and a template's own revocation
//! statements (`revoke_sql.rs`) are each a [`Batch`] of explicit
//! `BEGIN; ...; COMMIT` blocks and nothing else.
//!
//! Why explicit blocks only: when a statement of a simple-query string
//! fails, PostgreSQL skips the rest of the string and the session is left
//! inside the aborted block, so the pool's `ROLLBACK` always has a
//! transaction to end (outside one it would log a WARNING), and a failed
//! batch has changed nothing beyond its last committed block.

/// How a transaction block ends: `Commit`, or `Rollback` for the dry run of
/// `rolemint check`, which runs every statement and keeps nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Commit,
    Rollback,
}

/// A simple-query string being assembled, one transaction block after
/// another. Statements are separated by `;` and a newline; the string ends
/// with the last block's `COMMIT` (or `ROLLBACK`).
#[derive(Debug)]
pub(super) struct Batch {
    sql: String,
}

impl Batch {
    /// A string whose first block is open.
    pub fn begin() -> Batch {
        Batch {
            sql: String::from("BEGIN;\n"),
        }
    }

    /// Ends the open block with `COMMIT` and opens the next one.
    pub fn commit_and_begin(mut self) -> Batch {
        self.sql.push_str("COMMIT;\nBEGIN;\n");
        self
    }

    /// One of rolemint's own statements (or a `DO` block), written without
    /// its `;`.
    pub fn statement(mut self, statement: &str) -> Batch {
        self.sql.push_str(statement);
        self.sql.push_str(";\n");
        self
    }

    /// Generic plans for the rest of the block: the revocation's PL/pgSQL
    /// loops then plan each query once per batch, not once per role.
    pub fn generic_plans(self) -> Batch {
        self.statement("SET LOCAL plan_cache_mode = force_generic_plan")
    }

    /// A template's statements (the operator's SQL), with the database's
    /// default `search_path` for the rest of the block: they are written,
    /// as for Vault, against the search path any session there has, not
    /// the `pg_catalog`-only path of rolemint's own statements. A
    /// statement's own trailing `;` is dropped and `;` goes on a line of
    /// its own, so a trailing `-- comment` cannot swallow it.
    pub fn operator_statements(mut self, statements: &[String]) -> Batch {
        self.sql.push_str("SET LOCAL search_path TO DEFAULT;\n");
        for stmt in statements {
            let stmt = stmt.trim().trim_end_matches(';').trim_end();
            if !stmt.is_empty() {
                self.sql.push_str(stmt);
                self.sql.push_str("\n;\n");
            }
        }
        self
    }

    /// Ends the open block and the string.
    pub fn end(mut self, finish: Finish) -> String {
        self.sql.push_str(match finish {
            Finish::Commit => "COMMIT",
            Finish::Rollback => "ROLLBACK",
        });
        self.sql
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_explicit_and_the_string_ends_with_the_last_commit() {
        let sql = Batch::begin()
            .statement("SELECT 1")
            .commit_and_begin()
            .generic_plans()
            .statement("SELECT 2")
            .end(Finish::Commit);
        assert_eq!(
            sql,
            "BEGIN;\nSELECT 1;\nCOMMIT;\nBEGIN;\nSET LOCAL plan_cache_mode = force_generic_plan;\nSELECT 2;\nCOMMIT"
        );
        assert_eq!(Batch::begin().end(Finish::Rollback), "BEGIN;\nROLLBACK");
    }

    #[test]
    fn operator_statements_get_their_own_semicolon_line() {
        let sql = Batch::begin()
            .operator_statements(&[
                "CREATE ROLE \"v-a\" LOGIN;  ".into(),
                "   ".into(),
                "GRANT r TO \"v-a\" -- read only".into(),
            ])
            .end(Finish::Commit);
        assert_eq!(
            sql,
            "BEGIN;\nSET LOCAL search_path TO DEFAULT;\nCREATE ROLE \"v-a\" LOGIN\n;\nGRANT r TO \"v-a\" -- read only\n;\nCOMMIT"
        );
    }
}
