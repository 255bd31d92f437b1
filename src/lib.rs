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
//! - [`cli`]: the command line (`serve`, `dev`, `token`, `keygen`, `check`,
//!   `leases`, `health`, `rotate-admin`; `token --static/--operator/--key`
//!   and `keygen` live in the binary's `token.rs`).
//! - [`config`]: the TOML config, its defaults and validation.
//! - [`server`]: the accept loop, the connection limit, graceful shutdown.
//! - [`state`]: [`state::Shared`], what every session shares, and
//!   [`state::Runtime`], the part of it a reload swaps.
//! - [`reload`]: SIGHUP: re-read the config, build the new runtime
//!   (templates, policy, issuers, certificates) and swap it, or keep the
//!   old one.
//! - [`session`]: one connection, top to bottom: [`session::handshake`]
//!   (encryption, startup, token), [`session::params`] (the startup
//!   parameters allowed through to the backend), [`session::login`] (the
//!   login as a state machine over backend messages), [`session::backend`]
//!   (the sockets of logging in to PostgreSQL as the minted role with
//!   SCRAM), [`session::relay`] (startup
//!   forwarding with the BackendKeyData swapped, then the splice in user
//!   space), its `kernel.rs` (a plaintext session handed to the kernel
//!   splice), and [`session::wire`] (the few messages rolemint encodes and
//!   decodes).
//! - [`sockmap`]: the kernel splice (`proxy.kernel_splice`): a BPF
//!   sockhash and a 13-instruction `sk_skb` verdict program loaded through
//!   libbpf, and the hang-up watch that does not wake for traffic.
//! - [`identity`]: token in, [`identity::Identity`] out: issuers routed by
//!   `iss` (HMAC, RSA, EC, Ed25519 keys from PEM files, JWKS files or JWKS
//!   URLs fetched over HTTPS), static tokens known by their hash, verified
//!   JWTs cached by hash until `exp`, and the per-address limit on failed
//!   authentications.
//! - [`policy`]: identity × template × database → allowed or not, and why
//!   (allow lists, deny by default); the lease cap at the token's expiry;
//!   the session settings rendered from claims.
//! - [`mint`]: role names, SCRAM verifiers, template rendering, the admin
//!   connection pool (which never answers a cleartext or MD5 password
//!   request), and the SQL that creates, renews and drops roles (owned
//!   objects handed to the template's owner), and what one instance asks
//!   about another's sessions (a backend's minted role, its cancel, a
//!   lease's recorded expiry).
//! - [`creds`]: credential leases (the Vault-compatible `creds` endpoint):
//!   minted like a session's role plus `rolemint_direct`, registered, and
//!   handed to the revoker when they expire or are revoked.
//! - [`lease`]: the registry of live leases: deadlines, lookup, renew; a
//!   deadline re-reads the expiry from the catalog before it ends a lease.
//! - [`revoke`]: the revocation service: every role handed to it is
//!   dropped (or retained, and said so), retried until it is; the roles of
//!   one database share a round trip (a role whose session simply ended
//!   waits up to 20 ms for company).
//! - [`rotate`]: root rotation: a new random admin password, set as a
//!   SCRAM verifier and written atomically to `backend.admin_password_file`.
//! - [`reaper`]: the sweep of `rolemint_managed` (startup and periodic) that
//!   drops orphaned and expired roles, whoever minted them.
//! - [`warm_pool`]: `[roles.NAME] warm_pool = N`: roles minted ahead with a
//!   backend logged in as each (NOLOGIN, no password, until claimed), the
//!   filler that keeps N per template and database, and the claim that
//!   binds one to a session in one admin round trip
//!   ([`session`]'s `warm.rs` falls back to a mint when it cannot).
//! - [`cancel`]: rolemint's cancel keys mapped to the backends'; with
//!   `[cluster] secret`, keys any instance verifies (the backend's pid and
//!   a MAC over it and the session's role) and cancels through its admin
//!   pool.
//! - [`admin`]: the admin HTTP listener: `/healthz`, `/readyz`, `/metrics`
//!   and the lease API in Vault's shape, over a [`admin::leases::LeaseDirectory`]:
//!   [`admin::directory`] acts on the leases of every instance, read from
//!   the catalog (`mint::catalog`), and on this instance's live sessions;
//!   and the Vault-compatible door ([`admin::door`]): login and client
//!   tokens, `database/creds` and `database/roles`, `sys/health`.
//! - [`metrics`]: every Prometheus metric, described once, and the typed
//!   functions that record them.
//! - [`audit`]: the JSON-lines audit log of every decision and lease event.
//! - [`leases_cli`]: `rolemint leases ...` and `rolemint health`, clients
//!   of the admin API.
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
//! - [`failpoint`]: test-only pauses at named points of a session (debug
//!   builds only).

pub mod auth;
pub mod cli;
pub mod config;
pub mod control;
pub mod error;
pub mod failpoint;
pub mod lease;
pub mod observe;
pub mod pg;
pub mod proxy;
pub mod runtime;
pub mod secret;
pub mod tls;
