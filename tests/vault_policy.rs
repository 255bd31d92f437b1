//! Vault policies against a real PostgreSQL, driven with hvac
//! (`ROLEMINT_TEST_PYTHON`; skipped without it): a policy written from an
//! HCL file through both of Vault's policy APIs, tokens with and without
//! it on `database/creds` and on admin routes (403 / 200), invalid HCL
//! (400 with the parser's message), `create` versus `update`, and the
//! proxy door: a Vault token whose policy grants `read` on
//! `database/creds/apps` opens a session of template `apps`, which no
//! allow list opens.

mod common;

use common::vault::{self, printed, role_exists};
use common::{Harness, Options};

const OPERATOR: &str = "rmo_vault-policy-test-operator";

/// `[admin]`, and a template `apps` whose allow lists open it to no one:
/// only a policy can.
fn extra_toml() -> String {
    vault::admin_table("127.0.0.1:0", OPERATOR) + &vault::template_table("apps", "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_written_with_hvac_opens_creds_and_admin_routes_to_its_holders_only() {
    let Some(python) = vault::python("the hvac tests") else {
        return;
    };
    let h = Harness::with(Options {
        extra_toml: extra_toml(),
        ..Options::default()
    })
    .await;
    let admin = h.admin_addr.expect("the admin listener is on");
    let out = vault::hvac(
        &python,
        admin,
        OPERATOR,
        r#"
# The tutorial's policy, from an HCL file, through the older API.
with open(os.path.join(DIR, "apps-policy.hcl"), "w") as f:
    f.write('# apps may read credentials\npath "database/creds/apps" {\n  capabilities = ["read"]\n}\n')
root.sys.create_or_update_policy(name="apps", policy=open(os.path.join(DIR, "apps-policy.hcl")).read())
read = root.sys.read_policy("apps")
assert 'database/creds/apps' in read["data"]["rules"] and read["rules"] == read["data"]["rules"], read
names = root.sys.list_policies()["data"]["policies"]
assert {"apps", "default", "root"} <= set(names), names
# An admin policy through the ACL API: policies, and rotate-root.
root.sys.create_or_update_acl_policy(name="Policy-Admin", policy='''
path "sys/policies/acl" { capabilities = ["list"] }
path "sys/policies/acl/*" { capabilities = ["create", "read", "update", "delete", "list"] }
''')
assert root.sys.read_acl_policy("policy-admin")["data"]["name"] == "policy-admin"
assert "policy-admin" in root.sys.list_acl_policies()["data"]["keys"]
# Only update on policies: may rewrite one, not create one.
root.sys.create_or_update_acl_policy(name="rewriter", policy='path "sys/policies/acl/*" { capabilities = ["update"] }')

apps = client(root.auth.token.create(policies=["apps"], ttl="1h")["auth"]["client_token"])
other = client(root.auth.token.create(policies=["default"], ttl="1h")["auth"]["client_token"])
padmin = client(root.auth.token.create(policies=["policy-admin"], ttl="1h")["auth"]["client_token"])
rewriter = client(root.auth.token.create(policies=["rewriter"], ttl="1h")["auth"]["client_token"])

creds = apps.secrets.database.generate_credentials("apps")
print("role=" + creds["data"]["username"])
print("other_creds=%d" % status(lambda: other.secrets.database.generate_credentials("apps")))
print("other_list=%d" % status(lambda: other.sys.list_acl_policies()))
print("other_write=%d" % status(lambda: other.sys.create_or_update_acl_policy(name="mine", policy='path "x" { capabilities = ["read"] }')))
print("apps_read_policy=%d" % status(lambda: apps.sys.read_acl_policy("apps")))
print("apps_rotate=%d" % status(lambda: apps.secrets.database.rotate_root_credentials("appdb")))
print("padmin_list=%d" % status(lambda: padmin.sys.list_acl_policies()))
print("padmin_write=%d" % status(lambda: padmin.sys.create_or_update_acl_policy(name="new", policy='path "database/creds/apps" { capabilities = ["read"] }')))
print("padmin_creds=%d" % status(lambda: padmin.secrets.database.generate_credentials("apps")))
print("rewriter_update=%d" % status(lambda: rewriter.sys.create_or_update_acl_policy(name="new", policy='path "database/creds/*" { capabilities = ["read"] }')))
print("rewriter_create=%d" % status(lambda: rewriter.sys.create_or_update_acl_policy(name="newer", policy='path "x" { capabilities = ["read"] }')))
# The policy rewritten away: the token keeps its name, loses the grant.
root.sys.create_or_update_policy(name="apps", policy='path "database/creds/other" { capabilities = ["read"] }')
print("apps_after_rewrite=%d" % status(lambda: apps.secrets.database.generate_credentials("apps")))
# Invalid HCL and bad capabilities: 400, the parser's message, nothing stored.
print("bad_hcl=%d" % status(lambda: root.sys.create_or_update_acl_policy(name="broken", policy='path "x" { capabilities = ["read"]')))
print("bad_cap=%d" % status(lambda: root.sys.create_or_update_acl_policy(name="broken", policy='path "x" { capabilities = ["reed"] }')))
print("broken_listed=%s" % ("broken" in root.sys.list_acl_policies()["data"]["keys"]))
print("root_write=%d" % status(lambda: root.sys.create_or_update_acl_policy(name="root", policy='path "x" { capabilities = ["read"] }')))
print("default_delete=%d" % status(lambda: root.sys.delete_acl_policy("default")))
root.sys.delete_policy("rewriter")
print("rewriter_listed=%s" % ("rewriter" in root.sys.list_policies()["data"]["policies"]))
"#,
        &[],
    )
    .await;
    let role = printed(&out, "role");
    assert!(role_exists(&h, &role).await, "the credential role exists");
    let expect = [
        ("other_creds", "403"),
        ("other_list", "403"),
        ("other_write", "403"),
        ("apps_read_policy", "403"),
        ("apps_rotate", "403"),
        ("padmin_list", "200"),
        ("padmin_write", "200"),
        ("padmin_creds", "403"),
        ("rewriter_update", "200"),
        ("rewriter_create", "403"),
        ("apps_after_rewrite", "403"),
        ("bad_hcl", "400"),
        ("bad_cap", "400"),
        ("broken_listed", "False"),
        ("root_write", "400"),
        ("default_delete", "400"),
        ("rewriter_listed", "False"),
    ];
    for (key, want) in expect {
        assert_eq!(printed(&out, key), want, "{key} in:\n{out}");
    }
    assert!(
        out.contains("invalid=failed to parse policy:") && out.contains("invalid capability"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_token_whose_policy_grants_the_creds_opens_a_session_of_the_template() {
    let h = Harness::with(Options {
        extra_toml: extra_toml(),
        ..Options::default()
    })
    .await;
    let admin = h.admin_addr.expect("the admin listener is on");
    let http = reqwest::Client::new();
    let url = |p: &str| format!("http://{admin}/v1/{p}");
    let put = http
        .put(url("sys/policies/acl/apps"))
        .header("X-Vault-Token", OPERATOR)
        .json(&serde_json::json!({"policy": "path \"database/creds/apps\" { capabilities = [\"read\"] }"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 204);
    let mut tokens = Vec::new();
    for policies in [vec!["apps"], vec!["default"]] {
        let body: serde_json::Value = http
            .post(url("auth/token/create"))
            .header("X-Vault-Token", OPERATOR)
            .json(&serde_json::json!({"policies": policies}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        tokens.push(body["auth"]["client_token"].as_str().unwrap().to_owned());
    }
    let connect = |token: String| {
        let addr = h.addr;
        async move {
            let conn = format!(
                "host=127.0.0.1 port={} dbname=appdb user=apps password={token} sslmode=disable",
                addr.port()
            );
            tokio_postgres::connect(&conn, tokio_postgres::NoTls).await
        }
    };
    // With the policy: a session, as a minted role.
    let (client, conn) = connect(tokens[0].clone())
        .await
        .expect("the policy opens apps");
    tokio::spawn(conn);
    let who: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        who.starts_with("v-") && role_exists(&h, &who).await,
        "{who}"
    );
    // Without it: 28000, as for an identity no allow list names.
    let err = connect(tokens[1].clone()).await.err().expect("refused");
    assert_eq!(common::sqlstate(&err).as_deref(), Some("28000"), "{err}");
    // An identity JWT: the template's allow lists open it to no one.
    let jwt = h.token("alice").expose().to_owned();
    let err = connect(jwt).await.err().expect("refused");
    assert_eq!(common::sqlstate(&err).as_deref(), Some("28000"), "{err}");
}
