//! The data path: [`server`] (the accept loop, graceful shutdown, and the
//! start of the background tasks), [`admission`] (the handshake and
//! session limits, and the waiting room), [`session`]
//! (one client connection top to bottom), [`cancel`] (cancel keys, local
//! and cluster-wide) and [`sockmap`] (the kernel splice).
//!
//! Owns every byte between a client and rolemint. Must not build SQL or
//! decide policy: it asks `auth` whether, `lease`/`pg` for a role, and
//! splices.

pub mod admission;
pub mod cancel;
pub mod server;
pub mod session;
pub mod sockmap;
