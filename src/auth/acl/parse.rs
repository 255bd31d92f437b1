//! Reading a policy's text: the HCL form (with `hcl-rs`) or its JSON
//! form into `path` blocks, and each block checked and turned into a
//! [`Rule`] as Vault's `parsePaths` does it. [`Policy::parse`] is the way
//! in; what the rules mean once merged is the parent's.

use super::{
    parse_error, AclError, Capabilities, Capability, Kind, Rule, MAX_PATHS, MAX_PATH_BYTES,
};

/// A value in a `path` block, as far as policies use values.
#[derive(Debug)]
enum Value {
    Str(String),
    List(Vec<String>),
    Other,
}

type Blocks = Vec<(String, Vec<(String, Value)>)>;

/// The rules of a policy's `text` (HCL, or its JSON form), at most
/// [`MAX_PATHS`].
pub(super) fn rules(text: &str) -> Result<Vec<Rule>, AclError> {
    let blocks = if text.trim_start().starts_with('{') {
        json_blocks(text)?
    } else {
        hcl_blocks(text)?
    };
    if blocks.len() > MAX_PATHS {
        return Err(parse_error(format!("more than {MAX_PATHS} paths")));
    }
    blocks
        .into_iter()
        .map(|(path, attrs)| rule(&path, attrs))
        .collect()
}

/// The `path` blocks of an HCL policy.
fn hcl_blocks(text: &str) -> Result<Blocks, AclError> {
    let body = hcl::parse(text).map_err(|e| parse_error(e.to_string()))?;
    let mut blocks = Vec::new();
    for structure in body.into_inner() {
        match structure {
            hcl::Structure::Attribute(a) if a.key.as_str() == "name" => {}
            hcl::Structure::Attribute(a) => {
                return Err(parse_error(format!("invalid key {:?}", a.key.as_str())))
            }
            hcl::Structure::Block(b) if b.identifier.as_str() == "path" => {
                let [label] = b.labels.as_slice() else {
                    return Err(parse_error("a path block takes exactly one path"));
                };
                let path = label.as_str().to_owned();
                let mut attrs = Vec::new();
                for inner in b.body.into_inner() {
                    match inner {
                        hcl::Structure::Attribute(a) => {
                            attrs.push((a.key.as_str().to_owned(), hcl_value(a.expr)))
                        }
                        hcl::Structure::Block(inner) => {
                            attrs.push((inner.identifier.as_str().to_owned(), Value::Other))
                        }
                    }
                }
                blocks.push((path, attrs));
            }
            hcl::Structure::Block(b) => {
                return Err(parse_error(format!(
                    "invalid key {:?}",
                    b.identifier.as_str()
                )))
            }
        }
    }
    Ok(blocks)
}

fn hcl_value(expr: hcl::Expression) -> Value {
    match expr {
        hcl::Expression::String(s) => Value::Str(s),
        hcl::Expression::Array(items) => {
            let strings: Option<Vec<String>> = items
                .into_iter()
                .map(|e| match e {
                    hcl::Expression::String(s) => Some(s),
                    _ => None,
                })
                .collect();
            strings.map_or(Value::Other, Value::List)
        }
        _ => Value::Other,
    }
}

/// The `path` entries of a JSON policy: `{"path": {"P": {...}, ...}}`.
fn json_blocks(text: &str) -> Result<Blocks, AclError> {
    use serde_json::Value as J;
    let root: J = serde_json::from_str(text).map_err(|e| parse_error(e.to_string()))?;
    let J::Object(root) = root else {
        return Err(parse_error("does not contain a root object"));
    };
    let mut blocks = Vec::new();
    for (key, value) in root {
        match (key.as_str(), value) {
            ("name", _) => {}
            ("path", J::Object(paths)) => {
                for (path, rules) in paths {
                    let J::Object(rules) = rules else {
                        return Err(parse_error(format!("path {path:?}: not an object")));
                    };
                    let attrs = rules
                        .into_iter()
                        .map(|(k, v)| {
                            let v = match v {
                                J::String(s) => Value::Str(s),
                                J::Array(items) => items
                                    .into_iter()
                                    .map(|i| match i {
                                        J::String(s) => Some(s),
                                        _ => None,
                                    })
                                    .collect::<Option<Vec<_>>>()
                                    .map_or(Value::Other, Value::List),
                                _ => Value::Other,
                            };
                            (k, v)
                        })
                        .collect();
                    blocks.push((path, attrs));
                }
            }
            (other, _) => return Err(parse_error(format!("invalid key {other:?}"))),
        }
    }
    Ok(blocks)
}

/// Keys Vault accepts in a `path` block that rolemint refuses: each would
/// restrict a request in a way rolemint does not check.
const UNSUPPORTED_KEYS: &[&str] = &[
    "allowed_parameters",
    "denied_parameters",
    "required_parameters",
    "min_wrapping_ttl",
    "max_wrapping_ttl",
    "mfa_methods",
    "control_group",
];

/// One `path` block, checked as Vault's `parsePaths` checks it.
fn rule(written: &str, attrs: Vec<(String, Value)>) -> Result<Rule, AclError> {
    let err = |m: String| parse_error(format!("path {written:?}: {m}"));
    if written.len() > MAX_PATH_BYTES {
        return Err(err(format!("longer than {MAX_PATH_BYTES} bytes")));
    }
    let mut words: Vec<String> = Vec::new();
    for (key, value) in attrs {
        match (key.as_str(), value) {
            ("comment", Value::Str(_)) => {}
            ("capabilities", Value::List(list)) => words.extend(list),
            ("policy", Value::Str(old)) => words.extend(
                old_policy(&old)
                    .ok_or_else(|| err(format!("invalid policy {old:?}")))?
                    .iter()
                    .map(|w| (*w).to_owned()),
            ),
            (k, _) if UNSUPPORTED_KEYS.contains(&k) => {
                return Err(err(format!(
                    "{k} is not supported by rolemint (it would be ignored, granting more than \
                     the policy says); remove it"
                )))
            }
            ("comment" | "capabilities" | "policy", _) => {
                return Err(err(format!("{key}: wrong type")))
            }
            (k, _) => return Err(err(format!("invalid key {k:?}"))),
        }
    }
    let mut capabilities = Capabilities::default();
    for word in &words {
        let c =
            Capability::parse(word).ok_or_else(|| err(format!("invalid capability {word:?}")))?;
        capabilities = capabilities.with(c);
    }
    let path = written.strip_prefix('/').unwrap_or(written);
    if path.contains("+*") {
        return Err(parse_error(format!(
            "path {path:?}: invalid use of wildcards ('+*' is forbidden)"
        )));
    }
    let segments = path == "+" || path.contains("/+") || path.starts_with("+/");
    let (path, kind) = match path.strip_suffix('*') {
        _ if segments => (path, Kind::Segments),
        Some(prefix) => (prefix, Kind::Prefix),
        None => (path, Kind::Exact),
    };
    Ok(Rule {
        path: path.to_owned(),
        kind,
        capabilities,
    })
}

/// Vault's pre-0.5 shorthand, still accepted.
fn old_policy(word: &str) -> Option<&'static [&'static str]> {
    Some(match word {
        "deny" => &["deny"],
        "read" => &["read", "list"],
        "write" => &["create", "read", "update", "delete", "list"],
        "sudo" => &["create", "read", "update", "delete", "list", "sudo"],
        _ => return None,
    })
}
