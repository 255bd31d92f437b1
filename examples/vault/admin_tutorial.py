#!/usr/bin/env python3
"""The two personas of Vault's database secrets tutorial, against rolemint,
with the calls the tutorial makes (hvac, and requests where it uses curl).

The admin (VAULT_TOKEN, rolemint's operator token) enables the database
mount, writes the connection, writes role `readonly` from readonly.sql (as
`vault write database/roles/readonly creation_statements=@readonly.sql`
sends it, and as `curl --data @payload.json` does), reads it back and
lists it, writes policy `apps` from apps-policy.hcl and creates a token
with it. The app, with that token, reads credentials, connects to
PostgreSQL with them, renews the lease and revokes it; a token without the
policy (APP_TOKEN, an identity JWT: the `default` policy) gets 403.

    VAULT_ADDR=http://127.0.0.1:8200 VAULT_TOKEN=rmo_... APP_TOKEN=eyJ... \
    PGHOST=127.0.0.1 PGPORT=5432 PGDATABASE=appdb PGADMIN=rolemint_admin \
    python3 admin_tutorial.py
"""

import json
import os
import sys

import hvac
import psycopg
import requests

HERE = os.path.dirname(os.path.abspath(__file__))
ADDR = os.environ["VAULT_ADDR"]
PGHOST = os.environ.get("PGHOST", "127.0.0.1")
PGPORT = int(os.environ.get("PGPORT", "5432"))
PGDATABASE = os.environ.get("PGDATABASE", "appdb")


def expect(condition: bool, what: str) -> None:
    if not condition:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def refused(call, status_class, needle: str) -> None:
    """The call raises hvac's exception for a 4xx whose message has needle."""
    try:
        call()
    except status_class as e:
        expect(needle in str(e), f"{needle!r} in {e}")
        return
    expect(False, f"expected {status_class.__name__} mentioning {needle!r}")


def admin() -> None:
    client = hvac.Client(url=ADDR, token=os.environ["VAULT_TOKEN"])

    # vault secrets enable database (twice: already there is fine).
    client.sys.enable_secrets_engine(backend_type="database")
    client.sys.enable_secrets_engine(backend_type="database")
    mounts = client.sys.list_mounted_secrets_engines()
    expect(mounts["data"]["database/"]["type"] == "database", f"mounts: {mounts}")
    refused(
        lambda: client.sys.enable_secrets_engine(backend_type="kv", path="secret"),
        hvac.exceptions.InvalidRequest,
        "database_mount",
    )

    # vault write database/config/postgresql plugin_name=... allowed_roles=readonly ...
    url = (
        "postgresql://{{username}}:{{password}}@"
        f"{PGHOST}:{PGPORT}/{PGDATABASE}?sslmode=disable"
    )
    written = client.secrets.database.configure(
        name="postgresql",
        plugin_name="postgresql-database-plugin",
        allowed_roles="readonly",
        connection_url=url,
        username=os.environ["PGADMIN"],
        password="the-root-password-vault-would-keep",
    )
    warnings = written.json()["warnings"] if hasattr(written, "json") else written["warnings"]
    expect(any("password" in w for w in warnings), f"config warnings: {warnings}")
    conn = client.secrets.database.read_connection(name="postgresql")["data"]
    expect(conn["plugin_name"] == "postgresql-database-plugin", f"{conn}")
    expect(conn["connection_details"]["username"] == os.environ["PGADMIN"], f"{conn}")
    expect("the-root-password" not in json.dumps(conn), "the password is never shown")
    expect(conn["allowed_roles"] == ["readonly"], f"{conn}")
    # A connection elsewhere is refused, naming the config key to change.
    refused(
        lambda: client.secrets.database.configure(
            name="postgresql",
            plugin_name="postgresql-database-plugin",
            connection_url=f"postgresql://{{{{username}}}}:{{{{password}}}}@db.example:{PGPORT}/x",
        ),
        hvac.exceptions.InvalidRequest,
        "[backend] host and port",
    )
    client.secrets.database.reset_connection(name="postgresql")

    # curl --header "X-Vault-Token: ..." --request POST --data @payload.json
    #      $VAULT_ADDR/v1/database/roles/readonly
    with open(os.path.join(HERE, "readonly.sql"), encoding="utf-8") as f:
        readonly_sql = f.read()
    payload = {
        "db_name": "postgresql",
        "creation_statements": readonly_sql,
        "default_ttl": "1h",
        "max_ttl": "24h",
    }
    r = requests.post(
        f"{ADDR}/v1/database/roles/readonly",
        headers={"X-Vault-Token": os.environ["VAULT_TOKEN"]},
        data=json.dumps(payload),
        timeout=30,
    )
    expect(r.status_code == 204, f"role write via curl shape: {r.status_code} {r.text}")

    # vault write database/roles/readonly db_name=postgresql
    #   creation_statements=@readonly.sql default_ttl=1h max_ttl=24h
    client.secrets.database.create_role(
        name="readonly",
        db_name="postgresql",
        creation_statements=[readonly_sql],
        default_ttl="1h",
        max_ttl="24h",
    )
    role = client.secrets.database.read_role(name="readonly")["data"]
    expect(role["db_name"] == "postgresql", f"{role}")
    expect(len(role["creation_statements"]) == 2, f"{role}")
    expect((role["default_ttl"], role["max_ttl"]) == (3600, 86400), f"{role}")
    keys = client.secrets.database.list_roles()["data"]["keys"]
    expect("readonly" in keys and "readwrite" in keys, f"roles: {keys}")

    # The config file's templates are read-only over the API.
    refused(
        lambda: client.secrets.database.create_role(
            name="readwrite", db_name="postgresql", creation_statements=[readonly_sql]
        ),
        hvac.exceptions.InvalidRequest,
        "read-only",
    )
    # The connection's allowed_roles decide which roles may use it.
    refused(
        lambda: client.secrets.database.create_role(
            name="other", db_name="postgresql", creation_statements=[readonly_sql]
        ),
        hvac.exceptions.InvalidRequest,
        "allowed_roles",
    )
    # Validated like a config template: no VALID UNTIL, no role.
    refused(
        lambda: client.secrets.database.create_role(
            name="forever",
            db_name=PGDATABASE,
            creation_statements=['CREATE ROLE "{{name}}" WITH LOGIN PASSWORD \'{{password}}\''],
        ),
        hvac.exceptions.InvalidRequest,
        "VALID UNTIL",
    )

    # vault policy write apps apps-policy.hcl
    with open(os.path.join(HERE, "apps-policy.hcl"), encoding="utf-8") as f:
        client.sys.create_or_update_policy(name="apps", policy=f.read())
    expect("apps" in client.sys.list_policies()["data"]["policies"], "policy listed")
    # vault token create -policy=apps
    token = client.auth.token.create(policies=["apps"], ttl="1h")["auth"]["client_token"]
    print("admin: done")
    return token


def app(token: str) -> None:
    # Without the policy: no credentials.
    other = hvac.Client(url=ADDR, token=os.environ["APP_TOKEN"])
    refused(
        lambda: other.secrets.database.generate_credentials(name="readonly"),
        hvac.exceptions.Forbidden,
        "permission denied",
    )
    client = hvac.Client(url=ADDR, token=token)
    # Not the admin: writing a role is refused.
    refused(
        lambda: client.secrets.database.create_role(
            name="mine", db_name="postgresql", creation_statements=["SELECT 1"]
        ),
        hvac.exceptions.Forbidden,
        "permission denied",
    )
    creds = client.secrets.database.generate_credentials(name="readonly")
    username = creds["data"]["username"]
    password = creds["data"]["password"]
    lease_id = creds["lease_id"]
    print(f"username={username}")
    with psycopg.connect(
        host=PGHOST, port=PGPORT, dbname=PGDATABASE, user=username,
        password=password, connect_timeout=10,
    ) as conn:
        n = conn.execute("SELECT count(*) FROM public.accounts").fetchone()[0]
        expect(n > 0, "the readonly role reads accounts")
    renewed = client.sys.renew_lease(lease_id=lease_id, increment=7200)
    expect(renewed["lease_duration"] > 3600, f"renewed: {renewed}")
    client.sys.revoke_lease(lease_id=lease_id)
    try:
        psycopg.connect(
            host=PGHOST, port=PGPORT, dbname=PGDATABASE, user=username,
            password=password, connect_timeout=10,
        ).close()
    except psycopg.OperationalError:
        print("credentials no longer log in")
        return
    expect(False, "the revoked credentials still log in")


if __name__ == "__main__":
    app(admin())
