-- rolemint demo: the roles and database its demo role templates expect
-- (`readonly`, `readwrite` in config/docker.toml and in the config
-- `rolemint dev` writes).
--
-- Run by psql as a superuser, in the `postgres` database:
--   * by the postgres image's entrypoint on a fresh volume (docker-compose.yml
--     mounts this directory at /docker-entrypoint-initdb.d);
--   * by `provision_demo` in src/pgcluster.rs (rolemint dev and the tests),
--     which replaces the \getenv line below with a \set of a SCRAM verifier.
\set ON_ERROR_STOP on

-- The role rolemint connects as to mint and drop roles. Its password comes
-- from the environment: the same ROLEMINT_ADMIN_PASSWORD the rolemint
-- container reads through `admin_password_env`.
\getenv admin_password ROLEMINT_ADMIN_PASSWORD
\if :{?admin_password}
\else
  DO $$ BEGIN RAISE EXCEPTION 'ROLEMINT_ADMIN_PASSWORD is not set: it is the password of rolemint_admin'; END $$;
\endif

-- Exactly the grants README.md's "The admin role" block asks for, no more:
-- the tests run every version with this admin (no superuser).
CREATE ROLE rolemint_admin WITH LOGIN CREATEROLE PASSWORD :'admin_password';
-- To end a lease's sessions (pg_terminate_backend) before its role is dropped:
-- DROP ROLE does not end them.
GRANT pg_signal_backend TO rolemint_admin;
-- So that `rolemint check` can verify that pg_hba.conf lets minted roles log
-- in only from rolemint's address (the view is superuser-only by default).
GRANT SELECT ON pg_catalog.pg_hba_file_rules TO rolemint_admin;
GRANT EXECUTE ON FUNCTION pg_catalog.pg_hba_file_rules() TO rolemint_admin;
-- So that rolemint can create its own schema (`rolemint`: templates,
-- policies and tokens written through the API) in its admin database.
GRANT CREATE ON DATABASE postgres TO rolemint_admin;

-- Group roles the templates grant to minted roles. Nobody logs in as them.
CREATE ROLE app_read NOLOGIN;
CREATE ROLE app_owner NOLOGIN;
-- WITH ADMIN OPTION: since PostgreSQL 16, CREATEROLE alone does not allow
-- granting roles one did not create. The marker roles (rolemint_managed,
-- rolemint_direct) are not created here: rolemint creates them at startup,
-- and as their creator holds them WITH ADMIN OPTION on 16+.
GRANT app_read, app_owner TO rolemint_admin WITH ADMIN OPTION;

CREATE DATABASE appdb;
GRANT CONNECT, TEMPORARY ON DATABASE appdb TO app_read, app_owner;

\connect appdb
GRANT USAGE, CREATE ON SCHEMA public TO app_owner;
GRANT USAGE ON SCHEMA public TO app_read;
-- Whatever app_owner creates is readable by app_read: the demo tables below,
-- pgbench's, and the tables `readwrite` sessions create (they run as
-- app_owner).
ALTER DEFAULT PRIVILEGES FOR ROLE app_owner IN SCHEMA public
    GRANT SELECT ON TABLES TO app_read;
ALTER DEFAULT PRIVILEGES FOR ROLE app_owner IN SCHEMA public
    GRANT SELECT ON SEQUENCES TO app_read;

-- Created as app_owner, so app_owner owns it and the default privileges apply.
SET ROLE app_owner;
CREATE TABLE public.accounts (
    id      int PRIMARY KEY,
    owner   text NOT NULL,
    balance numeric NOT NULL DEFAULT 0
);
INSERT INTO public.accounts (id, owner, balance) VALUES
    (1, 'alice', 100.00),
    (2, 'bob', 250.50),
    (3, 'carol', 0),
    (4, 'dave', 1234.56);
RESET ROLE;
