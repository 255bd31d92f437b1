//! Rendering a role template's statements (Vault's placeholders).
//!
//! `creation_statements` may use `{{name}}`, `{{password}}` and
//! `{{expiration}}`; `revocation_statements` only `{{name}}`. `{{password}}`
//! is the SCRAM verifier, never the plaintext.
//!
//! `CREATE ROLE` takes no bind parameters, so values are pasted into SQL.
//! That is only safe because every value is checked against a narrow
//! alphabet *before* substitution, and refused otherwise: none of them can
//! contain a quote, a backslash, whitespace or a semicolon, so none can end
//! the literal or identifier the template author put it in.
//! - name: `[a-z0-9_-]`, at most 63 bytes
//! - verifier: `[A-Za-z0-9+/=$:-]` (base64, `$`, `:`, `SCRAM-SHA-256`)
//! - expiration: `[0-9TZ:-]` (RFC 3339 UTC, whole seconds)

use super::names::is_valid_role_name;
use crate::config::placeholder::{self, PlaceholderError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A value contains a character outside its alphabet.
    #[error("refusing to substitute {{{{{0}}}}}: value outside its safe alphabet")]
    UnsafeValue(&'static str),
    /// The statement uses a placeholder not available here.
    #[error("placeholder {{{{{0}}}}} is not available in these statements")]
    Unavailable(String),
    #[error("unclosed '{{{{' in a template statement")]
    Unclosed,
}

/// The values a template may refer to.
#[derive(Debug, Clone, Copy)]
pub struct Values<'a> {
    pub name: &'a str,
    /// The SCRAM verifier; `None` for revocation statements.
    pub password: Option<&'a str>,
    /// RFC 3339 UTC; `None` for revocation statements.
    pub expiration: Option<&'a str>,
}

impl Values<'_> {
    /// Refuses any value outside its alphabet.
    fn check(&self) -> Result<(), TemplateError> {
        if !is_valid_role_name(self.name) {
            return Err(TemplateError::UnsafeValue("name"));
        }
        let verifier_ok = |v: &str| {
            !v.is_empty()
                && v.bytes().all(|b| {
                    b.is_ascii_alphanumeric()
                        || matches!(b, b'+' | b'/' | b'=' | b'$' | b':' | b'-')
                })
        };
        if self.password.is_some_and(|p| !verifier_ok(p)) {
            return Err(TemplateError::UnsafeValue("password"));
        }
        let expiration_ok = |v: &str| {
            !v.is_empty()
                && v.bytes()
                    .all(|b| b.is_ascii_digit() || matches!(b, b'T' | b'Z' | b':' | b'-'))
        };
        if self.expiration.is_some_and(|e| !expiration_ok(e)) {
            return Err(TemplateError::UnsafeValue("expiration"));
        }
        Ok(())
    }
}

/// Renders every statement; empty statements are dropped.
pub fn render(statements: &[String], values: &Values<'_>) -> Result<Vec<String>, TemplateError> {
    values.check()?;
    statements
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| render_one(s, values))
        .collect()
}

fn render_one(text: &str, values: &Values<'_>) -> Result<String, TemplateError> {
    placeholder::render(text, |key| match key {
        "name" => Some(values.name),
        "password" => values.password,
        "expiration" => values.expiration,
        _ => None,
    })
    .map_err(|e| match e {
        PlaceholderError::Unclosed => TemplateError::Unclosed,
        PlaceholderError::Unavailable(key) | PlaceholderError::Unknown { key, .. } => {
            TemplateError::Unavailable(key)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERIFIER: &str = "SCRAM-SHA-256$16:c2FsdHNhbHRzYWx0c2FsdA==$q0+/abc=:Zm9vYmFy+/==";

    fn values() -> Values<'static> {
        Values {
            name: "v-alice-readonly-ab12cd34-1790000000",
            password: Some(VERIFIER),
            expiration: Some("2026-11-22T10:00:00Z"),
        }
    }

    #[test]
    fn substitutes_vault_placeholders() {
        let stmts = vec![
            "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'"
                .to_string(),
            "GRANT app_read TO \"{{ name }}\"".to_string(),
            "   ".to_string(),
        ];
        let out = render(&stmts, &values()).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[0],
            format!(
                "CREATE ROLE \"v-alice-readonly-ab12cd34-1790000000\" WITH LOGIN PASSWORD '{VERIFIER}' VALID UNTIL '2026-11-22T10:00:00Z'"
            )
        );
        assert_eq!(
            out[1],
            "GRANT app_read TO \"v-alice-readonly-ab12cd34-1790000000\""
        );
    }

    #[test]
    fn refuses_values_outside_their_alphabet() {
        let stmts = vec!["CREATE ROLE \"{{name}}\"".to_string()];
        for name in [
            "x\"; DROP ROLE y; --",
            "X",
            "a b",
            "a'b",
            "",
            &"a".repeat(64),
        ] {
            let v = Values { name, ..values() };
            assert_eq!(
                render(&stmts, &v),
                Err(TemplateError::UnsafeValue("name")),
                "{name:?}"
            );
        }
        for pw in ["plain'text", "a b", "x\\y", ""] {
            let v = Values {
                password: Some(pw),
                ..values()
            };
            assert_eq!(
                render(&stmts, &v),
                Err(TemplateError::UnsafeValue("password"))
            );
        }
        for exp in ["2026-11-22 10:00:00", "now'", "infinity"] {
            let v = Values {
                expiration: Some(exp),
                ..values()
            };
            assert_eq!(
                render(&stmts, &v),
                Err(TemplateError::UnsafeValue("expiration"))
            );
        }
    }

    #[test]
    fn revocation_statements_only_get_the_name() {
        let v = Values {
            name: "v-x-y-abcdefgh-1",
            password: None,
            expiration: None,
        };
        let out = render(&["DROP ROLE \"{{name}}\"".to_string()], &v).unwrap();
        assert_eq!(out, vec!["DROP ROLE \"v-x-y-abcdefgh-1\""]);
        assert_eq!(
            render(&["ALTER ROLE x PASSWORD '{{password}}'".to_string()], &v),
            Err(TemplateError::Unavailable("password".into()))
        );
        assert_eq!(
            render(&["{{name}".to_string()], &v),
            Err(TemplateError::Unclosed)
        );
    }
}
