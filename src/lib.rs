//! rolemint: a PostgreSQL proxy that hands out just-in-time credentials.
//!
//! A client connects with an identity token as its password. For that
//! session rolemint mints a short-lived PostgreSQL role from a template, logs
//! in to the real database as it, splices the two connections, and drops the
//! role when the session closes or its lease runs out.
//!
//! # Map of the crate
//!
//! Follow one connection from `main.rs`:
//!
//! - [`cli`]: the command line (`serve`, `dev`, `token`, `check`).
//! - [`config`]: the TOML config, its defaults and validation.
//! - [`server`]: the accept loop, the connection limit, graceful shutdown,
//!   and [`server::Shared`], what every session shares.
//! - [`session`]: one connection, top to bottom: [`session::handshake`]
//!   (encryption, startup, token), [`session::params`] (the startup
//!   parameters allowed through to the backend), [`session::login`] (the
//!   login as a state machine over backend messages), [`session::backend`] (logging in to
//!   PostgreSQL as the minted role with SCRAM), [`session::relay`] (startup
//!   forwarding with the BackendKeyData swapped, then the splice), and
//!   [`session::wire`] (the few messages rolemint encodes and decodes).
//! - [`identity`]: token in, [`identity::Identity`] out (HS256 JWTs).
//! - [`policy`]: identity × template × database → allowed or not, and why.
//! - [`mint`]: role names, SCRAM verifiers, template rendering, the admin
//!   connection pool (which never answers a cleartext or MD5 password
//!   request), and the SQL that creates and drops roles.
//! - [`lease`]: live leases, their deadlines, revocation with retry.
//! - [`cancel`]: rolemint's cancel keys mapped to the backends'.
//! - [`tls`]: rustls for clients and the backend, and the stream type.
//! - [`error`]: what a client may be told, with its SQLSTATE.
//! - [`secret`]: a string that never prints.
//! - [`logging`]: the tracing subscriber and its filter.
//! - [`check`]: `rolemint check`, the preflight of a config and backend,
//!   pg_hba.conf's confinement of minted roles included.
//! - [`pgcluster`]: a throwaway PostgreSQL cluster, used by `rolemint dev`
//!   and by the tests.
//! - [`dev`]: `rolemint dev`.
//! - [`signal`]: SIGTERM / Ctrl-C.

pub mod cancel;
pub mod check;
pub mod cli;
pub mod config;
pub mod dev;
pub mod error;
pub mod identity;
pub mod lease;
pub mod logging;
pub mod mint;
pub mod pgcluster;
pub mod policy;
pub mod secret;
pub mod server;
pub mod session;
pub mod signal;
pub mod tls;
