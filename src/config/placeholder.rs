//! `{{key}}` placeholders: the one parser and renderer of them, for every
//! text of the config that has them: a template's `creation_statements`
//! and `revocation_statements` (`{{name}}`, `{{password}}`,
//! `{{expiration}}`), its `session_settings` (`{{identity}}`, `{{groups}}`,
//! `{{template}}`, `{{issuer}}`), and role names (`mint.name_template`,
//! `warm_name_template`: `{{identity}}`, `{{template}}`, `{{random}}`,
//! `{{unix_time}}`).
//!
//! A placeholder is `{{`, a key, `}}`. Spaces around the key are allowed
//! everywhere (`{{ name }}` is `{{name}}`), as in Vault's templates: the
//! config is validated and rendered by the same parser, so what loads is
//! what renders. A `{{` without its `}}` is an error.
//!
//! Rendering is one pass over the parts: a value put in is never read
//! again, so a claim that contains `{{groups}}` stays as it is. What a
//! value may contain is its caller's business (role names and statement
//! values are checked against narrow alphabets, setting values escaped).

/// A piece of a text: literal text, or the key of a placeholder (trimmed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part<'a> {
    Text(&'a str),
    Key(&'a str),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceholderError {
    #[error("unclosed '{{{{'")]
    Unclosed,
    #[error("unknown placeholder {{{{{key}}}}} (known: {})", known.join(", "))]
    Unknown {
        key: String,
        known: &'static [&'static str],
    },
    /// Rendering met a key its caller has no value for.
    #[error("placeholder {{{{{0}}}}} has no value here")]
    Unavailable(String),
}

/// The parts of `text`, in order; an `Err` (an unclosed `{{`) ends them.
pub fn parts(text: &str) -> impl Iterator<Item = Result<Part<'_>, PlaceholderError>> {
    let mut rest = text;
    let mut failed = false;
    std::iter::from_fn(move || {
        if rest.is_empty() || failed {
            return None;
        }
        let Some(start) = rest.find("{{") else {
            return Some(Ok(Part::Text(std::mem::take(&mut rest))));
        };
        if start > 0 {
            let text = &rest[..start];
            rest = &rest[start..];
            return Some(Ok(Part::Text(text)));
        }
        let after = &rest[2..];
        let Some(end) = after.find("}}") else {
            failed = true;
            return Some(Err(PlaceholderError::Unclosed));
        };
        rest = &after[end + 2..];
        Some(Ok(Part::Key(after[..end].trim())))
    })
}

/// Checks that `text` is well formed and uses only `known` keys.
pub fn check(text: &str, known: &'static [&'static str]) -> Result<(), PlaceholderError> {
    for part in parts(text) {
        if let Part::Key(key) = part? {
            if !known.contains(&key) {
                return Err(PlaceholderError::Unknown {
                    key: key.to_owned(),
                    known,
                });
            }
        }
    }
    Ok(())
}

/// Whether `text` has a `{{key}}` placeholder (before any unclosed `{{`).
pub fn uses(text: &str, key: &str) -> bool {
    parts(text)
        .map_while(Result::ok)
        .any(|part| part == Part::Key(key))
}

/// `text` with every placeholder replaced by `value(key)`, in one pass.
pub fn render<'v>(
    text: &str,
    mut value: impl FnMut(&str) -> Option<&'v str>,
) -> Result<String, PlaceholderError> {
    let mut out = String::with_capacity(text.len() + 64);
    for part in parts(text) {
        match part? {
            Part::Text(text) => out.push_str(text),
            Part::Key(key) => match value(key) {
                Some(v) => out.push_str(v),
                None => return Err(PlaceholderError::Unavailable(key.to_owned())),
            },
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_split_text_and_trimmed_keys() {
        let parts: Vec<_> = parts("a{{x}}b{{ y }}{{z}}")
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            parts,
            [
                Part::Text("a"),
                Part::Key("x"),
                Part::Text("b"),
                Part::Key("y"),
                Part::Key("z")
            ]
        );
        assert_eq!(parts_of(""), Ok(vec![]));
        assert_eq!(parts_of("{{x}"), Err(PlaceholderError::Unclosed));
        assert_eq!(parts_of("a}}b"), Ok(vec![Part::Text("a}}b")]));
    }

    fn parts_of(text: &str) -> Result<Vec<Part<'_>>, PlaceholderError> {
        parts(text).collect()
    }

    #[test]
    fn spaces_inside_the_braces_mean_the_same_key_everywhere() {
        assert!(uses("v-{{ random }}", "random"));
        assert!(check("{{ name }} {{name}}", &["name"]).is_ok());
        let out = render("GRANT r TO \"{{ name }}\"", |k| {
            (k == "name").then_some("v-1")
        });
        assert_eq!(out.unwrap(), "GRANT r TO \"v-1\"");
    }

    #[test]
    fn unknown_and_unclosed_placeholders_are_refused() {
        let err = check("{{name}} {{nope}}", &["name", "password"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown placeholder {{nope}} (known: name, password)"
        );
        assert_eq!(check("{{name", &["name"]), Err(PlaceholderError::Unclosed));
        assert!(!uses("{{name", "name"));
        assert_eq!(
            render("{{x}}", |_| None),
            Err(PlaceholderError::Unavailable("x".into()))
        );
    }

    #[test]
    fn a_value_is_never_rendered_again() {
        // A claim that looks like a placeholder stays as it is.
        let out = render("{{identity}}|{{groups}}", |k| match k {
            "identity" => Some("{{groups}}"),
            "groups" => Some("a,b"),
            _ => None,
        });
        assert_eq!(out.unwrap(), "{{groups}}|a,b");
    }
}
