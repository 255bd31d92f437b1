#!/usr/bin/env python3
"""The database secrets workflow of a Kubernetes workload written for Vault,
unchanged but for VAULT_ADDR: log in with the pod's service-account token,
read credentials, connect to PostgreSQL directly, renew the lease, revoke it,
and see the credentials stop working.

    VAULT_ADDR=http://127.0.0.1:8200 \
    SA_TOKEN_PATH=/var/run/secrets/kubernetes.io/serviceaccount/token \
    PGHOST=db PGPORT=5432 PGDATABASE=appdb python3 hvac_workflow.py
"""

import os
import sys

import hvac
import psycopg

SA_TOKEN_PATH = os.environ.get(
    "SA_TOKEN_PATH", "/var/run/secrets/kubernetes.io/serviceaccount/token"
)
AUTH_ROLE = os.environ.get("VAULT_AUTH_ROLE", "app")
DB_ROLE = os.environ.get("ROLEMINT_TEMPLATE", "readonly")


def connect(username: str, password: str) -> psycopg.Connection:
    return psycopg.connect(
        host=os.environ.get("PGHOST", "127.0.0.1"),
        port=int(os.environ.get("PGPORT", "5432")),
        dbname=os.environ.get("PGDATABASE", "appdb"),
        user=username,
        password=password,
        connect_timeout=10,
    )


def main() -> int:
    client = hvac.Client(url=os.environ["VAULT_ADDR"])
    with open(SA_TOKEN_PATH, encoding="utf-8") as f:
        jwt = f.read().strip()
    client.auth.kubernetes.login(role=AUTH_ROLE, jwt=jwt)
    assert client.is_authenticated(), "login did not authenticate"
    print("logged in")

    secret = client.secrets.database.generate_credentials(
        name=DB_ROLE, mount_point="database"
    )
    lease_id = secret["lease_id"]
    username = secret["data"]["username"]
    password = secret["data"]["password"]
    print(f"lease_id={lease_id}")
    print(f"username={username}")

    with connect(username, password) as conn:
        who = conn.execute("SELECT current_user").fetchone()[0]
        assert who == username, who
        print(f"connected as {who}")

    renewed = client.sys.renew_lease(lease_id=lease_id, increment=600)
    print(f"renewed: lease_duration={renewed['lease_duration']}")

    client.sys.revoke_lease(lease_id=lease_id)
    print("revoked")
    try:
        connect(username, password).close()
    except psycopg.OperationalError:
        print("credentials no longer log in")
        return 0
    print("the revoked credentials still log in", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
