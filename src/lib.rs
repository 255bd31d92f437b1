//! rolemint: a PostgreSQL proxy that hands out just-in-time credentials.
//!
//! A client connects with an identity token as its password. For that
//! session rolemint mints a short-lived PostgreSQL role from a template, logs
//! in to the real database as it, splices the two connections, and drops the
//! role when the session closes or its lease runs out.
//!
//! # Map of the crate
//!
//! Folders by story; each folder's `mod.rs` says what it owns and what it
//! must not touch. Follow one connection from `main.rs`:
//!
//! - [`cli`]: the subcommands. `cli/mod.rs` is the command line itself;
//!   [`cli::check`] the preflight of a config and backend (pg_hba.conf's
//!   confinement of minted roles included); [`cli::dev`] `rolemint dev`,
//!   with [`cli::dev::cluster`] the throwaway PostgreSQL cluster it runs
//!   (the tests use it too); [`cli::leases`] `rolemint leases` and
//!   `health`, clients of the admin API; [`cli::token`] `token` and
//!   `keygen`; [`cli::login`] a person's `login` (OpenID Connect device
//!   flow or PKCE), `status`, `psql`, `env`, `connect-string`, `logout`;
//!   [`cli::request`] `request` (access requests).
//! - [`config`]: the TOML config, one file per table, its defaults and
//!   validation (plain data: it imports nothing built from it), and
//!   [`config::placeholder`], the one parser and renderer of `{{...}}`.
//! - [`proxy`]: the data path; [`proxy::Proxy`] what its sessions share
//!   (`Shared`, the cancel keys, the kernel splice). [`proxy::server`] the
//!   accept loop, graceful shutdown (and the start of every background
//!   task); [`proxy::admission`] the handshake and session limits and the
//!   waiting room; [`proxy::session`] one connection, top to bottom:
//!   [`proxy::session::handshake`] (encryption, startup, token),
//!   authorize (`authorize.rs`), acquire (`mint.rs`, or a warm role:
//!   `warm.rs`), serve (`serve.rs`: login, then relay or kernel splice),
//!   [`proxy::session::relay`] (startup forwarding with the
//!   BackendKeyData swapped, then the splice in user space), `kernel.rs`
//!   (a plaintext session handed to the kernel splice),
//!   [`proxy::session::wire`] (the few messages rolemint encodes and
//!   decodes); [`proxy::cancel`] cancel keys (with `[cluster] secret`,
//!   keys any instance verifies); [`proxy::sockmap`] the kernel splice
//!   (`proxy.kernel_splice`: a BPF sockhash and an `sk_skb` verdict
//!   program, and the hang-up watch).
//! - [`auth`]: [`auth::identity`], token in, identity out (issuers routed
//!   by `iss`, keys from PEM and JWKS, static tokens, the verified-token
//!   cache, the per-address failure limiter); [`auth::policy`], identity x
//!   template x database -> allowed or not, the lease cap at the token's
//!   expiry, the session settings rendered from claims; [`auth::acl`],
//!   Vault's HCL policies (parsed, merged, matched on a path);
//!   [`auth::source`], a client's source for per-source limits (IPv6 by
//!   /64) and the per-source connection slots.
//! - [`lease`]: the whole life of a lease. [`lease::registry`] the live
//!   leases (deadlines, lookup, renew); [`lease::end`] why a lease ended
//!   (one type from the session to the revoker and the audit line);
//!   [`lease::revoker`] where every
//!   role goes when its lease is over (retried until dropped, one round
//!   trip per database); [`lease::reaper`] the sweep of
//!   `rolemint_managed` for orphaned and expired roles;
//!   [`lease::warm_pool`] roles minted ahead with a backend logged in;
//!   [`lease::creds`] credential leases (Vault's `creds`);
//!   [`lease::quota`] what one principal may hold at once (`[quotas]`).
//! - [`pg`]: PostgreSQL as rolemint speaks to it. [`pg::AdminClient`]
//!   (`admin.rs`), the admin-database client: mint, renew, revoke,
//!   catalog reads, cluster cancels, over a pool that never answers a
//!   cleartext or MD5 password request; the SQL text; role names, SCRAM
//!   verifiers, template statements; [`pg::rotate`] root rotation; and
//!   [`pg::backend`], the login as a minted role ([`pg::backend::flow`]
//!   the sans-IO state machine, [`pg::backend::params`] the startup
//!   parameters a client may pass through).
//! - [`control`]: the admin HTTP listener ([`control::listener`]: hyper
//!   with a request-head and a keep-alive idle timeout and a per-source
//!   connection cap; `/healthz`, `/readyz`, `/metrics`, the lease API in
//!   Vault's shape over a [`control::leases::LeaseDirectory`] (the trait
//!   and its types in `leases/contract.rs`), [`control::directory`] acting
//!   on the leases of every instance), [`control::access`] (every request
//!   as a Vault path and capability, checked against the caller's
//!   policies) and the Vault-compatible door
//!   ([`control::door`]: login with auth roles, Vault tokens
//!   ([`control::door::tokens`]: the routes, the per-request reads, the
//!   answers' shapes, the leases a token created), `database/creds` and
//!   `database/roles`, `sys/health`; [`control::door::writes`]: what its
//!   routes over the store answer alike), and [`control::people`], what a
//!   person's CLI asks (`/.well-known/rolemint-login`, `/v1/rolemint/whoami`),
//!   [`control::requests`] access requests and [`control::webhook`] their
//!   signed notifications.
//! - [`store`]: rolemint's own schema in the admin database (append-only
//!   migrations under an advisory lock) and what the API writes there
//!   (templates, policies, auth roles as named JSON objects), kept current
//!   on every instance by `LISTEN`/`NOTIFY` and a periodic check.
//! - [`observe`]: [`observe::audit`] the JSON-lines audit log,
//!   [`observe::metrics`] every Prometheus metric described once,
//!   [`observe::logging`] the tracing subscriber.
//! - [`runtime`]: [`runtime::state`] what every session shares
//!   ([`runtime::state::Shared`]) and the part a reload swaps
//!   ([`runtime::state::Runtime`]: the config with the verifier and the
//!   policy compiled from it); [`runtime::reload`] SIGHUP;
//!   [`runtime::signal`] SIGTERM / Ctrl-C.
//! - At the top, used by every folder and using none: [`tls`] (rustls for
//!   clients, the backend and the admin listener, and the stream type),
//!   [`error`] (what a client may be told, with its SQLSTATE), [`secret`]
//!   (a string that never prints), [`failpoint`] (test-only pauses,
//!   compiled to nothing in release builds).
//!
//! Imports go down this list, roughly: `cli` -> `proxy` -> `control` ->
//! `runtime` -> `store`, `lease` -> `pg` -> `auth` -> `observe`, `tls` -> `config`
//! -> the leaves. `tests/module_graph.rs` fails on any module import
//! circle; the few edges that still close one are listed there, each with
//! what breaks it.

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
pub mod store;
pub mod tls;
