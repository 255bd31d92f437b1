//! The whole life of a lease: the registry, the revoker, the reaper, the
//! warm pool and credential leases.

pub mod creds;
pub mod reaper;
pub mod registry;
pub mod revoker;
pub mod warm_pool;
