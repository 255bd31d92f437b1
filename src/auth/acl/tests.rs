//! Vault's policy semantics, case by case (after `vault/acl_test.go` and
//! the priority examples in `CheckAllowedFromNonExactPaths`), and a
//! proptest of the matcher against a literal transcription of Vault's
//! priority order.

use super::*;
use proptest::prelude::*;

fn policy(name: &str, text: &str) -> Policy {
    Policy::parse(name, text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn acl(texts: &[&str]) -> Acl {
    let policies: Vec<Policy> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| policy(&format!("p{i}"), t))
        .collect();
    Acl::new(&policies)
}

fn caps(acl: &Acl, path: &str) -> Vec<&'static str> {
    acl.capabilities(path, false).names()
}

#[test]
fn the_tutorial_policy_grants_read_on_its_creds_only() {
    let a = acl(&[r#"path "database/creds/readonly" { capabilities = ["read"] }"#]);
    assert!(a.allows("database/creds/readonly", Capability::Read, false));
    assert!(!a.allows("database/creds/readonly", Capability::Update, false));
    assert!(!a.allows("database/creds/readonly", Capability::Read, true));
    assert!(!a.allows("database/creds/readwrite", Capability::Read, false));
    assert!(!a.allows("database/creds/readonly/x", Capability::Read, false));
}

#[test]
fn policies_parse_as_vault_parses_them() {
    let p = policy(
        "Apps",
        "name = \"apps\"\n# comment\npath \"/secret/*\" {\n  capabilities = [\"read\", \"list\"]\n  comment = \"why\"\n}\n\
         path \"old\" { policy = \"write\" }\n",
    );
    assert_eq!(p.name(), "apps", "names are lower-cased");
    assert!(p.raw().contains("# comment"), "the text is kept as written");
    let a = Acl::new([&p]);
    assert_eq!(caps(&a, "secret/x"), ["read", "list"]);
    assert_eq!(
        caps(&a, "old"),
        ["read", "list", "update", "delete", "create"]
    );
    // The JSON form, as Vault's HCL 1 parser reads it.
    let j = policy(
        "j",
        r#"{"path": {"secret/*": {"capabilities": ["update"]}, "a/+/b": {"policy": "deny"}}}"#,
    );
    let a = Acl::new([&j]);
    assert_eq!(caps(&a, "secret/x"), ["update"]);
    assert!(a.capabilities("a/x/b", false).is_denied());
    // An empty policy is a policy with no rules.
    assert_eq!(caps(&Acl::new([&policy("e", "")]), "x"), ["deny"]);
}

#[test]
fn bad_policies_are_refused_with_the_reason() {
    let err = |text: &str| Policy::parse("p", text).unwrap_err().to_string();
    assert!(err("path \"a\" {").starts_with("failed to parse policy: "));
    assert!(err("path \"a\" { capabilities = [\"reed\"] }").contains("invalid capability \"reed\""));
    assert!(err("path \"a\" { capabilities = [\"READ\"] }").contains("invalid capability"));
    assert!(err("path \"a\" { policy = \"all\" }").contains("invalid policy \"all\""));
    assert!(
        err("path \"a\" { capabilitiez = [\"read\"] }").contains("invalid key \"capabilitiez\"")
    );
    assert!(err("paths \"a\" { capabilities = [\"read\"] }").contains("invalid key \"paths\""));
    assert!(err("foo = 1").contains("invalid key \"foo\""));
    assert!(err("path \"a/+*\" { capabilities = [\"read\"] }").contains("'+*' is forbidden"));
    assert!(err("path \"a\" \"b\" { capabilities = [\"read\"] }").contains("exactly one path"));
    assert!(err("path \"a\" { capabilities = \"read\" }").contains("capabilities: wrong type"));
    let e = err("path \"a\" {\n capabilities = [\"read\"]\n allowed_parameters = { x = [] }\n}");
    assert!(
        e.contains("allowed_parameters is not supported by rolemint"),
        "{e}"
    );
    assert!(err("{\"path\": 1}").contains("invalid key \"path\""));
    let big = format!("# {}", "x".repeat(MAX_POLICY_BYTES));
    assert!(err(&big).contains("longer than"));
    let many: String = (0..=MAX_PATHS)
        .map(|i| format!("path \"p{i}\" {{ capabilities = [\"read\"] }}\n"))
        .collect();
    assert!(err(&many).contains("more than"));
    assert!(matches!(Policy::parse("a b", ""), Err(AclError::Name(_))));
    assert!(matches!(Policy::parse("", ""), Err(AclError::Name(_))));
    assert!(Policy::parse(&"n".repeat(MAX_NAME_BYTES + 1), "").is_err());
}

#[test]
fn an_exact_rule_beats_any_glob_and_globs_do_not_add_up() {
    let a = acl(&[
        r#"path "secret/*" { capabilities = ["read"] }"#,
        r#"path "secret/a" { capabilities = ["list"] }"#,
    ]);
    assert_eq!(caps(&a, "secret/a"), ["list"], "the exact rule alone");
    assert_eq!(caps(&a, "secret/b"), ["read"]);
    assert_eq!(caps(&a, "other"), ["deny"], "no rule: nothing");
}

#[test]
fn deny_wins_on_the_same_path_whichever_policy_says_it() {
    for order in [[0, 1], [1, 0]] {
        let texts = [
            r#"path "secret/*" { capabilities = ["read", "update", "sudo"] }"#,
            r#"path "secret/*" { capabilities = ["deny"] }"#,
        ];
        let a = acl(&[texts[order[0]], texts[order[1]]]);
        let c = a.capabilities("secret/x", false);
        assert!(c.is_denied() && !c.grants(Capability::Read) && !c.grants(Capability::Sudo));
    }
    // deny with other words in one block is deny alone.
    let a = acl(&[r#"path "x" { capabilities = ["read", "deny"] }"#]);
    assert_eq!(caps(&a, "x"), ["deny"]);
    // Same path, no deny: the union.
    let a = acl(&[
        r#"path "x" { capabilities = ["read"] }"#,
        r#"path "x" { capabilities = ["update"] }"#,
    ]);
    assert_eq!(caps(&a, "x"), ["read", "update"]);
}

#[test]
fn a_deny_on_a_wider_glob_leaves_a_more_specific_grant() {
    // As in Vault: the most specific rule decides alone.
    let a = acl(&[
        r#"path "secret/*" { capabilities = ["deny"] }"#,
        r#"path "secret/app/*" { capabilities = ["read"] }"#,
    ]);
    assert_eq!(caps(&a, "secret/app/key"), ["read"]);
    assert_eq!(caps(&a, "secret/other"), ["deny"]);
    let a = acl(&[
        r#"path "secret/*" { capabilities = ["read"] }"#,
        r#"path "secret/foo*" { capabilities = ["deny"] }"#,
    ]);
    assert!(a.capabilities("secret/foobar", false).is_denied());
    assert_eq!(caps(&a, "secret/fo"), ["read"]);
}

#[test]
fn plus_matches_exactly_one_segment() {
    let a = acl(&[r#"path "secret/+/config" { capabilities = ["read"] }"#]);
    assert_eq!(caps(&a, "secret/a/config"), ["read"]);
    assert_eq!(caps(&a, "secret/a/b/config"), ["deny"]);
    assert_eq!(caps(&a, "secret/config"), ["deny"]);
    assert_eq!(caps(&a, "secret/a/config2"), ["deny"]);
    let a = acl(&[r#"path "+/creds/*" { capabilities = ["read"] }"#]);
    assert_eq!(caps(&a, "database/creds/readonly"), ["read"]);
    assert_eq!(caps(&a, "database/roles/readonly"), ["deny"]);
    // A '+' inside a segment is a literal, and a segment path's trailing
    // '*' is a prefix of its last segment.
    let a = acl(&[r#"path "a/+/b*" { capabilities = ["read"] }"#]);
    assert_eq!(caps(&a, "a/x/bcd/e"), ["read"]);
    assert_eq!(caps(&a, "a/x/c"), ["deny"]);
    let a = acl(&[r#"path "a+b" { capabilities = ["read"] }"#]);
    assert_eq!(caps(&a, "a+b"), ["read"]);
    assert_eq!(caps(&a, "axb"), ["deny"]);
}

#[test]
fn the_most_specific_glob_wins_in_vaults_order() {
    // Each pair: (less specific, more specific, a path both match), from
    // the examples in Vault's CheckAllowedFromNonExactPaths.
    let pairs = [
        ("foo/+", "foo/a*", "foo/abc"), // later first wildcard
        ("foo/+/bar/baz", "foo/bar/+/baz", "foo/bar/bar/baz"), // later first wildcard
        ("foo/+/ba*", "foo/+/bar", "foo/x/bar"), // not a prefix
        ("foo/*", "foo/+", "foo/x"),    // not a prefix
        ("a/+/+/+", "a/+/b/+", "a/x/b/y"), // fewer '+'
        ("foo/+/bar/b*", "foo/+/bar/ba*", "foo/x/bar/baz"), // longer
        ("secret/*", "secret/app/*", "secret/app/x"), // longer prefix
    ];
    for (low, high, path) in pairs {
        for texts in [[low, high], [high, low]] {
            let a = acl(&[
                &format!("path \"{}\" {{ capabilities = [\"read\"] }}", texts[0]),
                &format!("path \"{}\" {{ capabilities = [\"list\"] }}", texts[1]),
            ]);
            let want = if texts[1] == high { "list" } else { "read" };
            assert_eq!(caps(&a, path), [want], "{low} vs {high} on {path}");
        }
    }
}

#[test]
fn a_list_matches_the_path_with_or_without_its_slash() {
    let a = acl(&[r#"path "sys/policies/acl" { capabilities = ["list"] }"#]);
    assert!(a.allows("sys/policies/acl/", Capability::List, false));
    assert!(!a.allows("sys/policies/acl/", Capability::Read, false));
    let a = acl(&[r#"path "database/roles/*" { capabilities = ["list"] }"#]);
    assert!(a.allows("database/roles/", Capability::List, false));
    let a = acl(&[r#"path "database/roles" { capabilities = ["read"] }"#]);
    assert!(
        !a.allows("database/roles/", Capability::Read, false),
        "only a LIST drops the slash"
    );
}

#[test]
fn root_may_do_everything_and_sudo_is_a_capability_of_its_own() {
    let root = Acl::root();
    assert!(root.is_root());
    assert!(root.allows("sys/leases/revoke-prefix/x", Capability::Update, true));
    assert!(root.allows("anything", Capability::Delete, false));
    assert!(Acl::new([&policy("root", "")]).is_root());
    let a = acl(&[r#"path "sys/leases/revoke-prefix/*" { capabilities = ["update"] }"#]);
    assert!(a.allows("sys/leases/revoke-prefix/db", Capability::Update, false));
    assert!(!a.allows("sys/leases/revoke-prefix/db", Capability::Update, true));
    let a = acl(&[r#"path "sys/leases/revoke-prefix/*" { capabilities = ["update", "sudo"] }"#]);
    assert!(a.allows("sys/leases/revoke-prefix/db", Capability::Update, true));
}

#[test]
fn the_default_policy_lets_a_token_look_itself_up_and_nothing_of_the_database() {
    let d = Policy::default_policy();
    assert_eq!(d.name(), "default");
    assert_eq!(Policy::parse("default", DEFAULT_POLICY), Ok(d.clone()));
    let a = Acl::new([&d]);
    assert!(a.allows("auth/token/lookup-self", Capability::Read, false));
    assert!(a.allows("auth/token/renew-self", Capability::Update, false));
    assert!(a.allows("sys/leases/renew", Capability::Update, false));
    assert!(a.allows("cubbyhole/x", Capability::Create, false));
    assert!(!a.allows("database/creds/readonly", Capability::Read, false));
    assert!(!a.allows("sys/policies/acl/apps", Capability::Read, false));
    assert!(!a.allows("auth/token/create", Capability::Update, false));
}

// --- the matcher against a transcription of Vault's order ---

/// Vault's `less` written out as it is in acl.go: true when `i` is the
/// lower priority.
fn vault_less(i: &(usize, bool, usize, String), j: &(usize, bool, usize, String)) -> bool {
    let (fi, pi, wi, si) = i;
    let (fj, pj, wj, sj) = j;
    if fi != fj {
        return fi < fj;
    }
    if pi != pj {
        return *pi;
    }
    if wi != wj {
        return wi > wj;
    }
    if si.len() != sj.len() {
        return si.len() < sj.len();
    }
    si < sj
}

/// A model of Vault's lookup: exact first; then every matching prefix and
/// segment rule, sorted with `vault_less`, the last one wins.
fn model(rules: &[(String, u16)], path: &str) -> Option<u16> {
    let mut merged: BTreeMap<String, u16> = BTreeMap::new();
    for (r, bits) in rules {
        *merged.entry(r.clone()).or_default() |= bits;
    }
    if let Some(bits) = merged.get(path) {
        return Some(*bits);
    }
    let parts: Vec<&str> = path.split('/').collect();
    let mut found: Vec<((usize, bool, usize, String), u16)> = Vec::new();
    for (rule, bits) in &merged {
        let segments = rule == "+" || rule.contains("/+") || rule.starts_with("+/");
        if !segments {
            if let Some(p) = rule.strip_suffix('*') {
                if path.starts_with(p) {
                    found.push(((p.len(), true, 0, p.to_owned()), *bits));
                }
            }
            continue;
        }
        let first = rule.find('+').unwrap_or(0);
        let (p, is_prefix) = match rule.strip_suffix('*') {
            Some(p) => (p, true),
            None => (rule.as_str(), false),
        };
        let want: Vec<&str> = p.split('/').collect();
        if parts.len() < want.len() || (!is_prefix && parts.len() != want.len()) {
            continue;
        }
        let mut wildcards = 0;
        let ok = want.iter().enumerate().all(|(i, w)| {
            if *w == "+" {
                wildcards += 1;
                true
            } else {
                *w == parts[i] || (is_prefix && i == want.len() - 1 && parts[i].starts_with(w))
            }
        });
        if ok {
            found.push(((first, is_prefix, wildcards, p.to_owned()), *bits));
        }
    }
    found.sort_by(|a, b| {
        if vault_less(&a.0, &b.0) {
            std::cmp::Ordering::Less
        } else if vault_less(&b.0, &a.0) {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    });
    found.last().map(|(_, bits)| *bits)
}

fn segment() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "ab", "ba", "+"]).prop_map(str::to_owned)
}

fn rule_path() -> impl Strategy<Value = String> {
    let star = prop::sample::select(vec!["", "*", "/*"]);
    (prop::collection::vec(segment(), 1..4), star).prop_map(|(segs, star)| {
        let p = segs.join("/");
        // '+*' is refused at parse time; '+/*' is a fine prefix.
        if p.ends_with('+') && star == "*" {
            p
        } else {
            p + star
        }
    })
}

fn request_path() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec!["a", "b", "ab", "ba", "abc", ""]),
        1..5,
    )
    // Vault strips a request path's leading '/' before matching.
    .prop_map(|segs| segs.join("/").trim_start_matches('/').to_owned())
}

const WORDS: [&str; 5] = ["read", "list", "create", "update", "delete"];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the rules, the capabilities on a path are exactly those of
    /// the rule Vault's order picks (no deny in play: bits compare as sets).
    #[test]
    fn the_matcher_picks_the_rule_vault_picks(
        rules in prop::collection::vec((rule_path(), 1u16..32), 1..8),
        path in request_path(),
    ) {
        let texts: Vec<String> = rules
            .iter()
            .map(|(p, bits)| {
                let words: Vec<String> = (0..5)
                    .filter(|i| bits & (1 << i) != 0)
                    .map(|i| format!("\"{}\"", WORDS[i]))
                    .collect();
                format!("path \"{p}\" {{ capabilities = [{}] }}", words.join(", "))
            })
            .collect();
        let policies: Vec<Policy> = texts.iter().map(|t| policy("p", t)).collect();
        let got = Acl::new(&policies).capabilities(&path, false);
        let want = model(&rules, &path).unwrap_or(0);
        for (i, word) in WORDS.iter().enumerate() {
            let c = Capability::parse(word).unwrap();
            prop_assert_eq!(got.grants(c), want & (1 << i) != 0, "{} on {:?} with {:?}", word, path, texts);
        }
    }

    /// The order policies are given in never matters, deny included.
    #[test]
    fn merging_is_order_independent(
        rules in prop::collection::vec((rule_path(), prop::sample::select(vec!["read", "deny", "list", "sudo"])), 1..8),
        path in request_path(),
    ) {
        let policies: Vec<Policy> = rules
            .iter()
            .map(|(p, w)| policy("p", &format!("path \"{p}\" {{ capabilities = [\"{w}\"] }}")))
            .collect();
        let forward = Acl::new(&policies).capabilities(&path, false);
        let backward = Acl::new(policies.iter().rev()).capabilities(&path, false);
        prop_assert_eq!(forward, backward);
    }
}
