#!/usr/bin/env python3
"""Read database credentials the way a program written for Vault does, with
plain `requests` and an `X-Vault-Token` header, then log in to PostgreSQL
directly with them.

Only VAULT_ADDR points at rolemint instead of Vault. VAULT_TOKEN is the
workload's identity token (a JWT or a rolemint static token), or a client
token from a login. PGHOST / PGPORT / PGDATABASE say where PostgreSQL is.

    VAULT_ADDR=http://127.0.0.1:8200 VAULT_TOKEN=... python3 requests_creds.py
"""

import os
import sys

import psycopg
import requests

ROLE = os.environ.get("ROLEMINT_TEMPLATE", "readonly")


def main() -> int:
    addr = os.environ["VAULT_ADDR"].rstrip("/")
    token = os.environ["VAULT_TOKEN"]
    resp = requests.get(
        f"{addr}/v1/database/creds/{ROLE}",
        headers={"X-Vault-Token": token},
        timeout=10,
    )
    if resp.status_code != 200:
        print(f"creds: HTTP {resp.status_code}: {resp.json().get('errors')}", file=sys.stderr)
        return 1
    secret = resp.json()
    # Credentials must not be cached anywhere on the way.
    assert resp.headers.get("Cache-Control") == "no-store", resp.headers
    username = secret["data"]["username"]
    password = secret["data"]["password"]
    print(f"lease_id={secret['lease_id']}")
    print(f"lease_duration={secret['lease_duration']}")
    print(f"username={username}")

    with psycopg.connect(
        host=os.environ.get("PGHOST", "127.0.0.1"),
        port=int(os.environ.get("PGPORT", "5432")),
        dbname=os.environ.get("PGDATABASE", "appdb"),
        user=username,
        password=password,
        connect_timeout=10,
    ) as conn:
        who = conn.execute("SELECT current_user").fetchone()[0]
        print(f"connected as {who}")
        assert who == username
    return 0


if __name__ == "__main__":
    sys.exit(main())
