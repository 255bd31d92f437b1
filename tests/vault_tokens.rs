//! Vault tokens and auth roles against a real PostgreSQL, driven with
//! hvac (`ROLEMINT_TEST_PYTHON`; the hvac tests are skipped without it):
//! the token tree (a revoked parent takes its children and every
//! credential lease they created, checked in pg_roles), tokens honoured by
//! a second instance and kept across a restart, a Vault token as the
//! password of a session, lookup / renew / accessors / use counts, the
//! sweep of expired tokens, and auth-role logins whose bounds match or do
//! not (kubernetes- and jwt-shaped tokens signed here).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::vault::{self, call, printed, role_exists};
use common::{wait_until, Harness};
use reqwest::StatusCode;
use serde_json::{json, Value};

const OPERATOR: &str = "rmo_vault-tokens-test-operator";

/// `[admin]` on `listen`, and a template every token may use.
fn admin_toml(listen: &str) -> String {
    let allow = r#"allow_identities = ["*"]"#;
    vault::admin_table(listen, OPERATOR) + &vault::template_table("tokens", allow)
}

async fn with_vault() -> (Harness, SocketAddr) {
    vault::serve(admin_toml("127.0.0.1:0")).await
}

/// Runs `script` with hvac (see `common::vault::hvac`) and `APPS`, the
/// policy of a workload that creates tokens and reads credentials.
async fn hvac(python: &str, admin: SocketAddr, script: &str, env: &[(&str, String)]) -> String {
    let apps = "APPS = 'path \"auth/token/create\" { capabilities = [\"update\"] }\\n\
                path \"database/creds/tokens\" { capabilities = [\"read\"] }'\n";
    vault::hvac(python, admin, OPERATOR, &format!("{apps}{script}"), env).await
}

async fn create_token(admin: SocketAddr, by: &str, body: Value) -> Value {
    let (s, body) = call(
        "POST",
        format!("http://{admin}/v1/auth/token/create"),
        Some(by),
        Some(body),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    body["auth"].clone()
}

async fn lookup_self(admin: SocketAddr, token: &str) -> StatusCode {
    call(
        "GET",
        format!("http://{admin}/v1/auth/token/lookup-self"),
        Some(token),
        None,
    )
    .await
    .0
}

/// A JWT of the harness's local issuer with `claims` added.
fn jwt(claims: Value) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut all = json!({"iss": "rolemint-test", "aud": "rolemint", "iat": now, "exp": now + 600});
    for (k, v) in claims.as_object().unwrap() {
        all[k] = v.clone();
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &all,
        &jsonwebtoken::EncodingKey::from_secret(common::HS256_SECRET.as_bytes()),
    )
    .unwrap()
}

/// A projected service-account token's claims.
fn service_account(namespace: &str, name: &str) -> String {
    jwt(json!({
        "sub": format!("system:serviceaccount:{namespace}:{name}"),
        "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": "0b7c"}},
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_parent_revokes_its_child_and_their_credential_leases() {
    let Some(python) = vault::python("the hvac tests") else {
        return;
    };
    let (h, admin) = with_vault().await;
    let out = hvac(
        &python,
        admin,
        r#"
root.sys.create_or_update_policy("apps", APPS)
plain = client(root.auth.token.create(policies=["default"])["auth"]["client_token"])
try:
    plain.auth.token.create(policies=["default"])
    sys.exit("a token without update on auth/token/create made a child")
except hvac.exceptions.Forbidden:
    pass
parent = root.auth.token.create(policies=["apps"], ttl="1h")["auth"]
assert parent["policies"] == ["apps", "default"], parent
assert parent["orphan"] is False and parent["renewable"] is True, parent
p = client(parent["client_token"])
try:
    p.auth.token.create(policies=["admin"])
    sys.exit("a child wider than its parent was created")
except hvac.exceptions.InvalidRequest as e:
    assert "child policies must be subset of parent" in str(e), e
child = p.auth.token.create(policies=["apps"], ttl="30m")["auth"]
c = client(child["client_token"])
me = c.auth.token.lookup_self()["data"]
assert me["policies"] == ["apps", "default"] and me["orphan"] is False, me
orphan = root.auth.token.create_orphan(policies=["apps"])["auth"]
assert orphan["orphan"] is True, orphan
print("parent=" + parent["client_token"])
print("child=" + child["client_token"])
print("orphan=" + orphan["client_token"])
print("parent_role=" + p.secrets.database.generate_credentials("tokens")["data"]["username"])
print("child_role=" + c.secrets.database.generate_credentials("tokens")["data"]["username"])
print("orphan_role=" + client(orphan["client_token"]).secrets.database.generate_credentials("tokens")["data"]["username"])
"#,
        &[],
    )
    .await;
    let roles: Vec<String> = ["parent_role", "child_role", "orphan_role"]
        .iter()
        .map(|k| printed(&out, k))
        .collect();
    for role in &roles {
        assert!(role_exists(&h, role).await, "{role} was not minted");
    }
    let env = [
        ("PARENT", printed(&out, "parent")),
        ("CHILD", printed(&out, "child")),
        ("ORPHAN", printed(&out, "orphan")),
    ];
    hvac(
        &python,
        admin,
        r#"
root.auth.token.revoke(os.environ["PARENT"])
for name in ("PARENT", "CHILD"):
    try:
        client(os.environ[name]).auth.token.lookup_self()
        sys.exit(name + " still works after the parent was revoked")
    except hvac.exceptions.Forbidden:
        pass
assert client(os.environ["ORPHAN"]).auth.token.lookup_self()["data"]["orphan"] is True
"#,
        &env,
    )
    .await;
    // The revoke answered after the leases' roles were dropped.
    assert!(
        !role_exists(&h, &roles[0]).await,
        "the parent's role is left"
    );
    assert!(
        !role_exists(&h, &roles[1]).await,
        "the child's role is left"
    );
    assert!(
        role_exists(&h, &roles[2]).await,
        "the orphan's role went too"
    );
    // Stored by hash only: the table holds no token.
    let su = h.superuser_on("postgres").await;
    let rows = su
        .query("SELECT t::text FROM rolemint.tokens t", &[])
        .await
        .unwrap();
    assert_eq!(
        rows.len(),
        2,
        "only the orphan and the plain token are left"
    );
    for row in rows {
        let row: String = row.get(0);
        assert!(!row.contains(&env[2].1) && !row.contains("rmv."), "{row}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_honours_tokens_at_once_and_a_restart_keeps_them() {
    let (h, admin) = with_vault().await;
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let b_admin = free();
    let mut b = h.spawn_serve(&admin_toml(&b_admin.to_string()), &[]).await;
    let t = create_token(admin, OPERATOR, json!({"policies": ["apps"]})).await;
    let token = t["client_token"].as_str().unwrap().to_owned();
    // Stored before the answer: the other instance knows it at once.
    assert!(
        wait_until(Duration::from_secs(1), || async {
            lookup_self(b_admin, &token).await == StatusCode::OK
        })
        .await,
        "the second instance did not honour the token within a second"
    );
    // A Vault token is a password on the proxy door too, on any instance.
    let session = b
        .connect("tokens", &token)
        .await
        .expect("token as password");
    let who: String = session
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert!(role_exists(&h, &who).await);
    // Revoked on the first instance: refused on the second, its session
    // ended and its role dropped.
    let (s, _) = call(
        "POST",
        format!("http://{admin}/v1/auth/token/revoke-self"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(lookup_self(b_admin, &token).await, StatusCode::FORBIDDEN);
    assert!(b.connect("tokens", &token).await.is_err());
    assert!(!role_exists(&h, &who).await, "the session's role is left");
    assert!(
        wait_until(Duration::from_secs(10), || async {
            session.simple_query("SELECT 1").await.is_err()
        })
        .await,
        "the session outlived its token"
    );
    // Created on the second instance, which is then killed and restarted.
    let kept = create_token(b_admin, OPERATOR, json!({"ttl": "1h"})).await;
    let kept = kept["client_token"].as_str().unwrap().to_owned();
    b.kill().await;
    let b2_admin = free();
    let _b2 = h.spawn_serve(&admin_toml(&b2_admin.to_string()), &[]).await;
    assert_eq!(lookup_self(b2_admin, &kept).await, StatusCode::OK);
    assert_eq!(lookup_self(admin, &kept).await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_renew_accessors_uses_and_the_sweep() {
    let Some(python) = vault::python("the hvac tests") else {
        return;
    };
    let (h, admin) = with_vault().await;
    let workload = h.token("alice").expose().to_owned();
    hvac(
        &python,
        admin,
        r#"
root.sys.create_or_update_policy("apps", APPS)
t = root.auth.token.create(policies=["apps"], ttl="60s", explicit_max_ttl="120s",
                           meta={"team": "db"}, display_name="ci")["auth"]
tok, acc = t["client_token"], t["accessor"]
assert tok.startswith("rmv.") and len(acc) == 24, t
d = root.auth.token.lookup(tok)["data"]
assert d["id"] == tok and d["accessor"] == acc, d
assert d["display_name"] == "token-ci" and d["meta"] == {"team": "db"}, d
assert 0 < d["ttl"] <= 60 and d["creation_ttl"] == 60 and d["explicit_max_ttl"] == 120, d
assert d["renewable"] is True and d["path"] == "auth/token/create" and d["type"] == "service", d
a = root.auth.token.lookup_accessor(acc)["data"]
assert a["id"] == "" and a["accessor"] == acc and a["policies"] == ["apps", "default"], a
r = root.auth.token.renew(tok, increment="200s")
assert 100 < r["auth"]["lease_duration"] <= 120 and r["warnings"], r
r = client(tok).auth.token.renew_self()
assert 0 < r["auth"]["lease_duration"] <= 60, r
root.auth.token.revoke_accessor(acc)
try:
    root.auth.token.lookup(tok)
    sys.exit("a token revoked by accessor still looks up")
except hvac.exceptions.Forbidden:
    pass
# Two uses, then nothing; and no children from a counted token.
u = client(root.auth.token.create(policies=["apps"], num_uses=2)["auth"]["client_token"])
assert u.auth.token.lookup_self()["data"]["num_uses"] == 1
try:
    u.auth.token.create(policies=["apps"])
    sys.exit("a limited-use token made a child")
except hvac.exceptions.InvalidRequest as e:
    assert "restricted use token" in str(e), e
try:
    u.auth.token.lookup_self()
    sys.exit("a token outlived its uses")
except hvac.exceptions.Forbidden:
    pass
fixed = root.auth.token.create(policies=["apps"], renewable=False)["auth"]
try:
    root.auth.token.renew(fixed["client_token"])
    sys.exit("a non-renewable token renewed")
except hvac.exceptions.InvalidRequest as e:
    assert "not renewable" in str(e), e
# An identity JWT is no token: it cannot create one.
try:
    client(os.environ["WORKLOAD"]).auth.token.create(policies=["default"])
    sys.exit("a JWT created a token")
except hvac.exceptions.Forbidden:
    pass
short = root.auth.token.create(policies=["apps"], ttl="2s")["auth"]["client_token"]
child = client(short).auth.token.create(policies=["apps"], ttl="1h")["auth"]["client_token"]
print("short=" + short)
print("child=" + child)
print("role=" + client(child).secrets.database.generate_credentials("tokens")["data"]["username"])
"#,
        &[("WORKLOAD", workload)],
    )
    .await;
    let su = h.superuser_on("postgres").await;
    let count = |sql: &'static str| {
        let su = &su;
        async move { su.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(
        count("SELECT count(*) FROM rolemint.token_leases").await,
        1,
        "the child's lease is recorded"
    );
    // The 2-second parent expires; the sweep takes its child and the
    // child's credentials with it (the child's own TTL is an hour).
    assert!(
        wait_until(Duration::from_secs(30), || async {
            count("SELECT count(*) FROM rolemint.token_leases").await == 0
                && h.managed_roles().await.is_empty()
        })
        .await,
        "the expired parent's child and lease were not swept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_role_logins_get_the_roles_policies_or_403_when_bounds_do_not_match() {
    let Some(python) = vault::python("the hvac tests") else {
        return;
    };
    let (_h, admin) = with_vault().await;
    let env = [
        ("SA_GOOD", service_account("default", "app")),
        ("SA_OTHER_NS", service_account("prod", "app")),
        ("SA_OTHER_NAME", service_account("default", "web")),
        (
            "JWT_DB",
            jwt(json!({"sub": "alice", "team": ["db", "ops"]})),
        ),
        ("JWT_WEB", jwt(json!({"sub": "alice", "team": "web"}))),
    ];
    hvac(
        &python,
        admin,
        r#"
E = os.environ
def forbidden(f):
    try:
        f()
        return False
    except hvac.exceptions.Forbidden:
        return True
k8s = root.auth.kubernetes
k8s.create_role("app", bound_service_account_names=["app"],
                bound_service_account_namespaces=["default"], policies=["apps"], ttl="1h")
role = k8s.read_role("app")
assert role["bound_service_account_names"] == ["app"] and role["token_policies"] == ["apps"], role
assert role["token_ttl"] == 3600, role
assert k8s.list_roles()["keys"] == ["app"]
ok = client(None).auth.kubernetes.login("app", E["SA_GOOD"])["auth"]
assert ok["policies"] == ["apps", "default"] and ok["lease_duration"] == 3600, ok
assert ok["metadata"]["service_account_name"] == "app" and ok["renewable"] is True, ok
me = client(ok["client_token"]).auth.token.lookup_self()["data"]
assert me["policies"] == ["apps", "default"] and me["role"] == "app", me
assert me["path"] == "auth/kubernetes/login", me
assert forbidden(lambda: client(None).auth.kubernetes.login("app", E["SA_OTHER_NS"]))
assert forbidden(lambda: client(None).auth.kubernetes.login("app", E["SA_OTHER_NAME"]))
try:
    client(None).auth.kubernetes.login("nope", E["SA_GOOD"])
    sys.exit("an unknown role logged in")
except hvac.exceptions.InvalidRequest as e:
    assert 'role "nope" could not be found' in str(e), e

jwt = root.auth.jwt
jwt.create_role("db", user_claim="sub", allowed_redirect_uris=[], role_type="jwt",
                bound_audiences=["rolemint"], bound_claims={"team": ["db"]},
                token_policies=["apps"], token_ttl=600, path="jwt")
ok = client(None).auth.jwt.jwt_login("db", E["JWT_DB"], path="jwt")["auth"]
assert ok["policies"] == ["apps", "default"] and ok["lease_duration"] == 600, ok
assert forbidden(lambda: client(None).auth.jwt.jwt_login("db", E["JWT_WEB"], path="jwt"))
# Without roles on the mount, a login works as it always did.
jwt.delete_role("db", path="jwt")
legacy = client(None).auth.jwt.jwt_login("db", E["JWT_WEB"], path="jwt")["auth"]
assert legacy["renewable"] is False and "tokens" in legacy["policies"], legacy
print("done")
"#,
        &env,
    )
    .await;
}
