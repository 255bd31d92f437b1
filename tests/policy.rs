//! Who may use which template, and what a session carries into
//! PostgreSQL: allow lists by identity and group (deny by default),
//! leases bound to the token's expiry, claims as role settings that a real
//! row-level security policy filters on, and hostile claims that never
//! bend a role name or an SQL statement.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{captured_log, sqlstate, Harness, Options, HS256_SECRET};
use rolemint::secret::Secret;
use serde_json::json;

const TEMPLATES: &str = r#"
[auth.failure_rate]
burst = 1000
per_minute = 1000

# Named people, the svc-* service accounts, and the dba group.
[roles.tenant]
databases = ["appdb"]
default_ttl = "1h"
max_ttl = "1h"
allow_identities = ["alice", "bob", "svc-*"]
allow_groups = ["dba"]
bind_to_token_expiry = true
session_settings = { "rolemint.identity" = "{{identity}}", "rolemint.groups" = "{{groups}}" }
creation_statements = [
  "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
  "GRANT app_read TO \"{{name}}\"",
]

# Every identity, with the claims as settings.
[roles.anyone]
databases = ["appdb"]
default_ttl = "1h"
max_ttl = "1h"
allow_identities = ["*"]
session_settings = { "rolemint.identity" = "{{identity}}", "rolemint.groups" = "{{groups}}" }
creation_statements = [
  "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
  "GRANT app_read TO \"{{name}}\"",
]

# No allow list: no one.
[roles.closed]
databases = ["appdb"]
default_ttl = "1h"
max_ttl = "1h"
creation_statements = [
  "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
]
"#;

async fn harness() -> Harness {
    let h = Harness::with(Options {
        extra_toml: TEMPLATES.into(),
        ..Options::default()
    })
    .await;
    // PostgreSQL 15+ lets a non-superuser ALTER ROLE .. SET a custom
    // setting only with SET privilege on it, which a superuser grants once.
    h.superuser()
        .await
        .batch_execute(&format!(
            "GRANT SET ON PARAMETER rolemint.identity, rolemint.groups TO \"{}\"",
            h.demo.admin_user
        ))
        .await
        .unwrap();
    h
}

fn token(h: &Harness, subject: &str, groups: &[&str], ttl: Duration) -> Secret {
    let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    rolemint::auth::identity::issue(&h.config.auth, subject, &groups, ttl).unwrap()
}

/// A local-issuer token with arbitrary claims (for claims `issue` itself
/// refuses to sign), or an arbitrary payload.
fn raw_token(payload: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(payload);
    let input = format!("{header}.{payload}");
    let key = hmac::Key::new(hmac::HMAC_SHA256, HS256_SECRET.as_bytes());
    let tag = hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims_with_sub(sub: &str) -> Vec<u8> {
    json!({"iss": "rolemint-test", "aud": "rolemint", "sub": sub, "exp": now() + 600})
        .to_string()
        .into_bytes()
}

async fn refused(h: &Harness, template: &str, token: &str) -> tokio_postgres::Error {
    match h.connect(template, "appdb", token).await {
        Ok(_) => panic!("{template}: let in"),
        Err(e) => e,
    }
}

fn safe_role_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_allow_listed_identities_and_groups_and_deny_everyone_else() {
    let h = harness().await;
    let ttl = Duration::from_secs(600);

    for (who, groups) in [
        ("alice", vec![]),
        ("svc-billing", vec![]),
        ("dave", vec!["dba"]),
    ] {
        let t = token(&h, who, &groups, ttl);
        let c = h.connect("tenant", "appdb", t.expose()).await;
        assert!(c.is_ok(), "{who} {groups:?}: {:?}", c.err());
    }

    for (template, who, groups) in [
        ("tenant", "mallory", vec!["dbas", "eng"]),
        // Lookalike: a Cyrillic "а" is not "alice".
        ("tenant", "\u{430}lice", vec![]),
        // Raw values are matched, not the sanitized ones.
        ("tenant", "SVC-billing", vec![]),
        ("closed", "alice", vec!["dba"]),
    ] {
        let t = token(&h, who, &groups, ttl);
        let e = refused(&h, template, t.expose()).await;
        assert_eq!(
            sqlstate(&e).as_deref(),
            Some("28000"),
            "{template} {who}: {e:?}"
        );
        let message = e.as_db_error().unwrap().message().to_owned();
        assert!(message.contains(template), "{message}");
        assert!(
            !message.contains("allow_"),
            "policy internals leaked: {message}"
        );
    }
    // The log says which rule.
    let log = captured_log();
    assert!(log.contains("the template allows no one"), "{log}");
    assert!(log.contains("no allow_identities or allow_groups pattern matches"));
    // Nothing was minted for the refused sessions.
    assert!(h
        .wait_no_managed_roles(Duration::from_secs(10))
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_level_security_policy_filters_rows_by_the_identity() {
    let h = harness().await;
    let su = h.superuser().await;
    su.batch_execute(
        "CREATE TABLE public.notes (owner text NOT NULL, body text NOT NULL);
         INSERT INTO public.notes VALUES ('alice', 'a1'), ('alice', 'a2'), ('bob', 'b1');
         ALTER TABLE public.notes ENABLE ROW LEVEL SECURITY;
         CREATE POLICY own_rows ON public.notes FOR SELECT
           USING (owner = pg_catalog.current_setting('rolemint.identity', true));
         GRANT SELECT ON public.notes TO app_read;",
    )
    .await
    .unwrap();

    let ttl = Duration::from_secs(600);
    for (who, groups, expected) in [
        ("alice", vec!["eng", "ops"], vec!["a1", "a2"]),
        ("bob", vec![], vec!["b1"]),
        ("svc-report", vec![], vec![]),
    ] {
        let t = token(&h, who, &groups, ttl);
        let client = h.connect("tenant", "appdb", t.expose()).await.unwrap();
        let rows = client
            .query("SELECT body FROM public.notes ORDER BY body", &[])
            .await
            .unwrap();
        let bodies: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(bodies, expected, "{who}");
        let row = client
            .query_one(
                "SELECT pg_catalog.current_setting('rolemint.identity'), \
                 pg_catalog.current_setting('rolemint.groups')",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), who);
        assert_eq!(row.get::<_, String>(1), groups.join(","));
    }
    // The rows are all still there.
    let n: i64 = su
        .query_one("SELECT count(*) FROM public.notes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_to_token_expiry_caps_the_lease_at_the_tokens_exp() {
    let h = harness().await;
    let su = h.superuser().await;
    let valid_until = |role: String| {
        let su = &su;
        async move {
            let secs: f64 = su
                .query_one(
                    "SELECT extract(epoch FROM rolvaliduntil)::float8 FROM pg_catalog.pg_roles WHERE rolname = $1",
                    &[&role],
                )
                .await
                .unwrap()
                .get(0);
            secs as u64
        }
    };
    let current_user = |c: tokio_postgres::Client| async move {
        let role: String = c
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        (c, role)
    };

    // tenant binds to the token: a 2-minute token gets a 2-minute lease.
    let t = token(&h, "alice", &[], Duration::from_secs(120));
    let (c1, role) = current_user(h.connect("tenant", "appdb", t.expose()).await.unwrap()).await;
    let until = valid_until(role).await;
    assert!(
        until <= now() + 121,
        "VALID UNTIL {until} is past the token's exp"
    );
    // anyone does not: the template's 1 h.
    let (c2, role) = current_user(h.connect("anyone", "appdb", t.expose()).await.unwrap()).await;
    let until = valid_until(role).await;
    assert!(
        until >= now() + 3500,
        "VALID UNTIL {until} is not the template's TTL"
    );
    drop((c1, c2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_claims_never_bend_role_names_or_sql() {
    let h = harness().await;
    let ttl = Duration::from_secs(600);
    let long_a = format!("{}-one", "x".repeat(70));
    let long_b = format!("{}-two", "x".repeat(70));
    let hostile = [
        r#"o'brien"; DROP TABLE public.pgbench_accounts; --"#.to_owned(),
        r#"\"; SELECT 1; $$ $rolemint$ E'\\'"#.to_owned(),
        "\u{430}lice".to_owned(),
        "ｓｕｐｅｒｕｓｅｒ".to_owned(),
        "日本語".to_owned(),
        long_a.clone(),
        long_b.clone(),
    ];

    let mut clients = Vec::new();
    let mut roles = Vec::new();
    for who in &hostile {
        let t = token(&h, who, &["g\"1", "g;2"], ttl);
        let client = h.connect("anyone", "appdb", t.expose()).await.unwrap();
        let row = client
            .query_one(
                "SELECT current_user::text, pg_catalog.current_setting('rolemint.identity'), \
                 pg_catalog.current_setting('rolemint.groups')",
                &[],
            )
            .await
            .unwrap();
        let role: String = row.get(0);
        assert!(safe_role_name(&role), "{who:?} gave the role name {role:?}");
        // The settings hold the claims exactly: escaped, not interpreted.
        assert_eq!(row.get::<_, String>(1), *who);
        assert_eq!(row.get::<_, String>(2), "g\"1,g;2");
        roles.push(role);
        clients.push(client);
    }
    // Two identities sharing a long prefix, open at once, never share a role.
    let unique: std::collections::BTreeSet<_> = roles.iter().collect();
    assert_eq!(unique.len(), roles.len(), "{roles:?}");

    // The table the first identity tried to drop is intact.
    let su = h.superuser().await;
    let n: i64 = su
        .query_one("SELECT count(*) FROM public.pgbench_accounts", &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or(-1);
    assert!(n >= 0, "pgbench_accounts is gone");
    drop(clients);

    // Claims that never make it to a role: NUL, 10 KB, invalid UTF-8.
    for (what, token) in [
        ("NUL", raw_token(&claims_with_sub("a\u{0}b"))),
        ("10 KB", raw_token(&claims_with_sub(&"y".repeat(10 * 1024)))),
        ("invalid UTF-8", {
            let mut payload = claims_with_sub("zz");
            let at = payload.windows(2).position(|w| w == b"zz").unwrap();
            payload[at] = 0xff;
            payload[at + 1] = 0xfe;
            raw_token(&payload)
        }),
    ] {
        let e = refused(&h, "anyone", &token).await;
        assert_eq!(sqlstate(&e).as_deref(), Some("28P01"), "{what}: {e:?}");
    }
    assert!(h
        .wait_no_managed_roles(Duration::from_secs(10))
        .await
        .is_empty());
}
