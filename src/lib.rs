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
//! must not touch, each file's module doc what it holds. Follow one
//! connection from `main.rs`: [`cli`] starts [`proxy`], which asks [`auth`]
//! who the client is, [`lease`] for a role (through [`pg`]), and reports to
//! [`observe`]; [`control`] is the admin HTTP side, [`store`] rolemint's own
//! schema, [`runtime`] what a reload swaps, [`config`] what the operator
//! wrote. Every file, one line each:
//!
//! ```text
//! main.rs               the binary: command line, logging, TLS provider, run
//! lib.rs                this map
//! cli/                  the subcommands
//!   mod.rs              the command line itself (clap)
//!   check.rs            `check`: the preflight of a config and backend (pg_hba.conf included)
//!   dev/mod.rs          `dev`: cluster, dev files, the proxy, banners, in one command
//!   dev/cluster.rs      the throwaway PostgreSQL cluster (`dev` and the tests): options, start, stop
//!   dev/cluster/binaries.rs  finding initdb, postgres, psql, pgbench
//!   dev/cluster/process.rs   the server's user, free ports, captured output, random secrets
//!   dev/cluster/demo.rs      the demo roles, database, tables and role templates
//!   leases.rs           `leases ...` and `health`: clients of the admin API
//!   token.rs            `token` and `keygen`
//!   login/mod.rs        a person's `login`, `status`, `psql`, `env`, `connect-string`, `logout`
//!   login/oidc.rs       the OpenID Connect client: discovery, device flow, PKCE code flow
//!   login/loopback.rs   the code flow's loopback redirect listener
//!   login/cache.rs      where a person's login is kept (`credentials.json`)
//!   request.rs          `request`: access requests from the command line
//! config/               the TOML config: plain data plus its validation, imports nothing built from it
//!   mod.rs              Config, load, defaults, validate (one check per table)
//!   proxy.rs backend.rs auth.rs mint.rs templates.rs admin.rs vault.rs
//!   cluster.rs quota.rs observe.rs login.rs
//!                       one file per table: [proxy] [backend] [auth] [mint] [roles.NAME]
//!                       [admin] [vault] [cluster] [quotas] [audit]+[log] [login]
//!   allow.rs            the allow-list syntax of templates (allow_identities, ...)
//!   approval.rs         a template's `approval` rule (access requests)
//!   placeholder.rs      `{{key}}`: the one parser and renderer of placeholders
//! proxy/                the data path; proxy::Proxy is what its sessions share
//!   mod.rs              Proxy (Shared, the cancel keys, the relay threads, the kernel splice)
//!   server.rs           accept loop, graceful shutdown, the start of every background task
//!   relay_threads.rs    one current-thread runtime per core; sessions packed onto them
//!   admission.rs        the handshake and session limits and the waiting room (Gate)
//!   cancel.rs           cancel keys: rolemint's BackendKeyData mapped to the backend's
//!   session/mod.rs      one client connection, top to bottom
//!   session/handshake.rs      encryption, startup, token
//!   session/authorize.rs      authenticate -> authorize -> admit
//!   session/mint.rs           acquire by minting: the lease under its Vault token
//!   session/warm.rs           acquire from the warm pool
//!   session/serve.rs          the login as the minted role, then a relay thread or the kernel splice
//!   session/relay.rs          startup forwarding with BackendKeyData swapped, the user-space splice
//!   session/kernel.rs         a plaintext session handed to the kernel splice
//!   session/statements.rs     the query audit of a session whose template asks for it
//!   session/refuse.rs         turning a client away: counted, audited, told
//!   session/cancel_request.rs a CancelRequest, forwarded to the right backend
//!   session/wire.rs           the few PostgreSQL messages rolemint speaks itself, sans IO
//!   sockmap/mod.rs      the kernel splice (`proxy.kernel_splice`): BPF sockhash
//!   sockmap/program.rs  the `sk_skb` verdict program, as instructions
//!   sockmap/hangup.rs   waiting for either leg of a spliced pair to hang up
//! auth/                 who a client is and what it may do, without IO where it can
//!   identity/mod.rs     token in, Identity out (issuers routed by `iss`)
//!   identity/issuer.rs  one issuer: its `iss`, algorithms, keys
//!   identity/jwt.rs     JWT validation and signing
//!   identity/keys.rs    verification keys from PEM and JWKS
//!   identity/jwks.rs    a JWKS fetched over HTTPS, cached and refreshed
//!   identity/static_tokens.rs  static tokens for service accounts
//!   identity/cache.rs   verified tokens remembered until they expire
//!   identity/failures.rs  failed authentications, rate limited per address
//!   identity/keygen.rs  key pairs and random tokens for the command line
//!   policy.rs           identity x template x database -> allowed; lease cap; session settings
//!   acl.rs              Vault's ACL policies: capabilities on a path
//!   acl/parse.rs        reading a policy's text (HCL or JSON)
//!   token.rs            Vault tokens: their shape and how they are kept
//!   token/rules.rs      Vault's rules for creating, logging in with and renewing a token
//!   auth_role.rs        auth roles of the jwt and kubernetes mounts
//!   access.rs           access requests: asking for a template that needs approval
//!   fields.rs           Vault's loose request fields, read out of a JSON body
//!   source.rs           a client's source for per-source limits (IPv6 by /64), and its slots
//! lease/                the whole life of a lease
//!   registry.rs         the live leases: deadlines, lookup, renew
//!   minted.rs           what follows every mint: register, lease.minted, or hand a failed mint over
//!   end.rs              EndReason: why a lease ended, from the session to the audit line
//!   revoker/mod.rs      where every role goes when its lease is over (retried until dropped)
//!   revoker/worker.rs   the revoker's task: one round trip per database, one function per outcome
//!   reaper.rs           the sweep of `rolemint_managed` for orphaned and expired roles
//!   warm_pool/mod.rs    roles minted ahead with a backend logged in, and their claim
//!   warm_pool/filler.rs the task that keeps every pool filled
//!   creds.rs            credential leases (Vault's `creds`): admit -> authorize -> mint -> register
//!   quota.rs            what one principal and one template may hold at once
//!   memory.rs           freed memory given back to the system after a mass end of leases
//! pg/                   PostgreSQL as rolemint speaks to it
//!   admin.rs            AdminClient, the admin-database client: mint, renew, revoke, catalog, cancels
//!   error.rs            MintError: why an admin-side step failed, and whether a retry may help
//!   pool.rs             admin connections, pooled per database
//!   auth_guard.rs       the stream guard that never answers a cleartext or MD5 request
//!   pg_tls.rs           tokio-postgres over rustls
//!   sql.rs              the SQL rolemint sends: marker role, mint batch, renewal
//!   revoke_sql.rs       the SQL that ends roles, one round trip per batch
//!   reap_sql.rs         what the reaper asks: the sweep lock, the members of rolemint_managed
//!   catalog.rs          leases as the catalog records them
//!   lease_index.rs      rolemint.leases (lease id -> role): its writer, reads, tidy pass
//!   batch.rs            how the mint's and the revocation's statements are put together
//!   cluster_sql.rs      sessions another instance serves (cluster cancels)
//!   names.rs            names of minted roles
//!   scram.rs            the minted role's password and its SCRAM-SHA-256 verifier
//!   template.rs         a template's statements rendered
//!   rotate.rs           root rotation of rolemint's admin role
//!   backend/mod.rs      the login as a minted role (the driver: moves bytes)
//!   backend/flow.rs     its sans-IO state machine (tests in flow/tests.rs)
//!   backend/params.rs   the startup parameters a client may pass through
//! control/              the admin HTTP listener
//!   mod.rs              the router: health, metrics, the lease API, the door
//!   listener.rs         sockets, TLS, hyper: request-head and keep-alive idle timeouts, per-source cap
//!   wiring.rs           how the server starts and stops the listener and the audit log
//!   auth.rs             who is calling: X-Vault-Token or Bearer
//!   access.rs           every request as a Vault path and capability, checked
//!   health.rs           /healthz, /readyz, /metrics
//!   leases/mod.rs       the lease API in Vault's shape
//!   leases/contract.rs  LeaseDirectory and the types it speaks in
//!   directory.rs        the directory of a running server, across instances
//!   memory.rs           an in-memory directory (test-only)
//!   people.rs           what a person's CLI asks (/.well-known/rolemint-login, whoami)
//!   requests.rs         access requests over HTTP
//!   webhook.rs          their signed notifications
//!   vault.rs            Vault's response envelope and errors
//!   door/mod.rs         the Vault-compatible door and its routes
//!   door/login.rs       auth/<mount>/login and token lookup
//!   door/auth_roles.rs  auth/<mount>/role/<name>
//!   door/database.rs    database/creds
//!   door/roles.rs       database/roles
//!   door/connection.rs  database/config and database/reset
//!   door/policy.rs      sys/policy (ACL policies in the store)
//!   door/sys.rs         sys/mounts, sys/auth, sys/health
//!   door/writes.rs      what its routes over the store answer alike
//!   door/tokens/mod.rs  auth/token/*: the routes
//!   door/tokens/live.rs        a request's token becoming a caller
//!   door/tokens/view.rs        tokens as Vault's API shows them
//!   door/tokens/token_leases.rs  the credential leases a token created
//! store/                rolemint's own schema in the admin database
//!   mod.rs              the snapshot of what the API wrote (templates, policies, auth roles)
//!   schema.rs           the schema and its migrations, under an advisory lock
//!   objects.rs          rolemint.objects and rolemint.generations
//!   tokens.rs           Vault tokens in PostgreSQL
//!   watch.rs            keeping the snapshot current (LISTEN/NOTIFY, periodic check)
//! observe/              what rolemint tells its operators
//!   audit.rs            the JSON-lines audit log (tests in audit/tests.rs)
//!   metrics.rs          every Prometheus metric, described once
//!   logging.rs          the tracing subscriber, and LogSafe for client strings
//! runtime/              the running process
//!   state.rs            Shared, and Runtime (config, verifier, compiled policy) that a reload swaps
//!   reload.rs           SIGHUP
//!   signal.rs           SIGTERM and Ctrl-C
//!   templates.rs        templates written through the API, merged with the config's
//! tls/mod.rs            rustls for clients, the backend and the admin listener
//!   stream.rs           the stream type (TLS or not), and how it moves to a relay thread
//! error.rs              what a client may be told, with its SQLSTATE
//! secret.rs             a string that never prints (zeroed on drop)
//! failpoint.rs          test-only pauses, compiled to nothing in release builds
//! ```
//!
//! The four at the bottom are used by every folder and use none. Imports go
//! this way, roughly: `cli` -> `proxy` -> `control` -> `runtime` ->
//! `store`, `lease` -> `pg` -> `auth` -> `observe`, `tls` -> `config` -> the
//! leaves. `tests/module_graph.rs` fails on any module import circle; the
//! few edges that still close one are listed there, each with what breaks
//! it.

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
