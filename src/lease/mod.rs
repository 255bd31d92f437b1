//! The whole life of a lease: [`registry`] (live leases, deadlines,
//! renew), [`end`] (why a lease ended: one type from the session to the
//! audit line), [`revoker`] (every role whose lease is over, dropped or
//! retained, retried until done), [`reaper`] (the sweep of
//! `rolemint_managed` for orphaned and expired roles), [`warm_pool`]
//! (roles minted ahead with a backend logged in), [`creds`]
//! (credential leases for Vault's `creds`), [`minted`] (what follows a
//! mint from any door: the lease registered and its `lease.minted` line,
//! or a failed mint's role to the revoker), [`quota`] (what one
//! principal may hold at once, and mint a minute) and [`memory`] (freed
//! memory given back after a mass end of leases).
//!
//! Owns when a role is minted ahead, registered, renewed and ended. The SQL
//! it runs is `pg`'s ([`crate::pg::AdminClient`]); it must not speak the
//! wire protocol to clients, serve HTTP or read the config file, and it
//! imports nothing of `runtime`: each part takes the services it uses
//! (credential leases: [`creds::Services`] and [`creds::Rules`]).

pub mod creds;
pub mod end;
pub mod memory;
pub mod minted;
pub mod quota;
pub mod reaper;
pub mod registry;
pub mod revoker;
pub mod warm_pool;
