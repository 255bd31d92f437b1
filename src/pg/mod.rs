//! PostgreSQL as rolemint speaks to it: the admin-database client
//! ([`AdminClient`] in `admin.rs`: mint, renew, revoke, catalog reads,
//! cluster cancels), its connection pool (`pool.rs`, which never answers a
//! cleartext or MD5 password request: `auth_guard.rs`; TLS: `pg_tls.rs`),
//! the SQL text it sends (`sql.rs`, `revoke_sql.rs`, `reap_sql.rs`,
//! `cluster_sql.rs`, `catalog.rs`; `batch.rs` assembles the multi-statement
//! ones), the lease index (`lease_index.rs`: `rolemint.leases`, lease id to
//! role, a hint the catalog checks), role names (`names.rs`), passwords and
//! SCRAM verifiers (`scram.rs`), template statements (`template.rs`), root
//! rotation (`rotate.rs`), and the backend login as a minted role
//! ([`backend`]: the sans-IO flow, the sockets, the startup parameters a
//! client may pass).
//!
//! It owns every byte rolemint sends to PostgreSQL as admin and every
//! backend login. It must not know about sessions, the lease registry's
//! deadlines, HTTP or the proxy: callers above (`lease/`, `proxy/`,
//! `control/`) decide when; this folder only says how.

mod admin;
mod auth_guard;
pub mod backend;
mod batch;
mod catalog;
mod cluster_sql;
mod error;
mod lease_index;
mod names;
mod pg_tls;
mod pool;
mod reap_sql;
mod revoke_sql;
pub mod rotate;
mod scram;
mod sql;
mod template;

pub use admin::{
    rfc3339, AdminClient, AdminFacts, HbaRule, MintRequest, MintedRole, PreparedMint,
    ADMIN_OPTION_NEEDED_FROM, WARM_KIND, WARM_LEASE_PREFIX,
};
pub use catalog::{CatalogFilter, CatalogLease, CatalogPage, CATALOG_PAGE};
pub use error::MintError;
pub use lease_index::MIGRATION as LEASE_INDEX_MIGRATION;

/// The catalog queries whose plans the scale bench shows (`EXPLAIN`), as
/// the directory, the lease index and the reaper send them.
pub mod queries {
    pub use super::catalog::live_leases as directory_page;
    pub use super::lease_index::{
        indexed_lookup as lease_index_lookup, page_query as lease_index_page,
    };
    pub use super::reap_sql::{
        managed_roles as reaper_sweep, SWEEP_SETTINGS as reaper_sweep_settings,
    };
}
pub use names::{is_valid_role_name, sanitize as sanitize_name_part, NameTemplate, MAX_NAME_BYTES};
pub use pg_tls::MakeRustlsConnect;
pub use pool::PooledClient;
pub use reap_sql::{ManagedRole, Sweep, MAX_ROLES_PER_SWEEP, SWEEP_LOCK_KEY};
pub use revoke_sql::{Outcome, Target};
pub use sql::{LeaseComment, LeaseKind, DIRECT_MARKER_ROLE, MARKER_ROLE};
pub use template::TemplateError;
