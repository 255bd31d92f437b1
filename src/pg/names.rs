//! Names of minted roles.
//!
//! A name comes from `mint.name_template` (default
//! `v-{{identity}}-{{template}}-{{random}}-{{unix_time}}`) and is built only
//! from `[a-z0-9_-]`, at most 63 bytes (PostgreSQL's NAMEDATALEN - 1: a
//! longer name would be truncated silently, and two truncated names could
//! collide). It is always quoted as an identifier as well; the alphabet is
//! the first line of defence, the quoting the second.
//!
//! - `{{identity}}` is the identity sanitized: ASCII letters lowercased,
//!   every other character outside `[a-z0-9_-]` (quotes, spaces, `@`, `.`,
//!   any non-ASCII character) replaced by `_`, runs of `_` collapsed to one,
//!   `_` trimmed from both ends; an empty result becomes `anon`. Replacing
//!   rather than dropping keeps `a.b` and `ab` apart in the name a DBA
//!   reads; the name is a label, never the identity of record (that is the
//!   lease comment).
//! - `{{template}}` is the role template's name, sanitized the same way.
//! - `{{random}}` is 8 characters of `[a-z0-9]` from the system CSPRNG
//!   (36^8 ≈ 2^41), so two sessions never collide.
//! - `{{unix_time}}` is the mint time in seconds.
//!
//! When the name would exceed 63 bytes the identity part is cut first, then
//! the template part; the random part and the time are never cut.

use aws_lc_rs::rand::SecureRandom;

use crate::config::placeholder;

/// PostgreSQL's identifier limit (NAMEDATALEN - 1).
pub const MAX_NAME_BYTES: usize = 63;
/// Length of the `{{random}}` part.
pub const RANDOM_LEN: usize = 8;
/// Digits a `{{unix_time}}` may need (good until the year 2286, and one to
/// spare); reserved when checking that a template can fit.
const UNIX_TIME_RESERVE: usize = 11;

const RANDOM_ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Identity,
    Template,
    Random,
    UnixTime,
}

/// A parsed `mint.name_template`.
#[derive(Debug, Clone)]
pub struct NameTemplate {
    parts: Vec<Part>,
}

/// Whether `name` uses only the role-name alphabet and fits.
pub fn is_valid_role_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_BYTES && name.bytes().all(is_name_byte)
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
}

impl NameTemplate {
    /// Parses and checks a template: known placeholders, `{{random}}`
    /// present, literal text in `[a-z0-9_-]`, and room for the fixed parts.
    pub fn parse(text: &str) -> Result<NameTemplate, String> {
        let mut parts = Vec::new();
        for part in placeholder::parts(text) {
            let part = part.map_err(|e| format!("mint.name_template: {e}"))?;
            parts.push(match part {
                placeholder::Part::Text(text) => Part::Literal(text.to_owned()),
                placeholder::Part::Key("identity") => Part::Identity,
                placeholder::Part::Key("template") => Part::Template,
                placeholder::Part::Key("random") => Part::Random,
                placeholder::Part::Key("unix_time") => Part::UnixTime,
                placeholder::Part::Key(other) => {
                    return Err(format!(
                        "mint.name_template: unknown placeholder {{{{{other}}}}}"
                    ))
                }
            });
        }
        for p in &parts {
            if let Part::Literal(l) = p {
                if !l.bytes().all(is_name_byte) {
                    return Err(format!(
                        "mint.name_template: literal text {l:?} may use only [a-z0-9_-]"
                    ));
                }
            }
        }
        if !parts.contains(&Part::Random) {
            return Err("mint.name_template must contain {{random}}".into());
        }
        let t = NameTemplate { parts };
        if t.fixed_len(UNIX_TIME_RESERVE) > MAX_NAME_BYTES {
            return Err(format!(
                "mint.name_template: the fixed parts alone exceed {MAX_NAME_BYTES} bytes"
            ));
        }
        Ok(t)
    }

    /// Bytes taken by everything that is never cut.
    fn fixed_len(&self, time_len: usize) -> usize {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Literal(l) => l.len(),
                Part::Random => RANDOM_LEN,
                Part::UnixTime => time_len,
                Part::Identity | Part::Template => 0,
            })
            .sum()
    }

    fn count(&self, part: &Part) -> usize {
        self.parts.iter().filter(|p| *p == part).count()
    }

    /// Renders a role name. Each `{{random}}` draws fresh randomness.
    pub fn render(
        &self,
        identity: &str,
        template: &str,
        unix_time: u64,
        rng: &dyn SecureRandom,
    ) -> Result<String, aws_lc_rs::error::Unspecified> {
        let time = unix_time.to_string();
        let mut ident = sanitize(identity);
        let mut tmpl = sanitize(template);
        let (n_id, n_tmpl) = (self.count(&Part::Identity), self.count(&Part::Template));
        // `parse` guarantees the fixed parts fit, so `avail` never underflows.
        let avail = MAX_NAME_BYTES.saturating_sub(self.fixed_len(time.len()));
        if n_id * ident.len() + n_tmpl * tmpl.len() > avail {
            // Cut the identity first ...
            if let Some(room) = avail.saturating_sub(n_tmpl * tmpl.len()).checked_div(n_id) {
                ident.truncate(room.min(ident.len()));
            }
            // ... then the template, if cutting the identity was not enough.
            if n_id * ident.len() + n_tmpl * tmpl.len() > avail {
                if let Some(room) = avail.saturating_sub(n_id * ident.len()).checked_div(n_tmpl) {
                    tmpl.truncate(room.min(tmpl.len()));
                }
            }
        }

        let mut name = String::with_capacity(MAX_NAME_BYTES);
        for p in &self.parts {
            match p {
                Part::Literal(l) => name.push_str(l),
                Part::Identity => name.push_str(&ident),
                Part::Template => name.push_str(&tmpl),
                Part::Random => name.push_str(&random_part(rng)?),
                Part::UnixTime => name.push_str(&time),
            }
        }
        // PostgreSQL reserves role names starting with "pg_"; a template
        // that starts with {{identity}} could otherwise produce one.
        if name.starts_with("pg_") {
            name.replace_range(2..3, "-");
        }
        debug_assert!(is_valid_role_name(&name), "{name}");
        Ok(name)
    }
}

/// Maps any text onto `[a-z0-9_-]` as described in the module doc. All
/// output is ASCII, so cutting it at any byte is safe.
pub fn sanitize(input: &str) -> String {
    let mut out = String::with_capacity(input.len().min(256));
    for c in input.chars() {
        let c = c.to_ascii_lowercase();
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
            c
        } else {
            '_'
        };
        if c == '_' && out.ends_with('_') {
            continue;
        }
        out.push(c);
    }
    let trimmed = out.trim_matches('_');
    if trimmed.is_empty() {
        "anon".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// `RANDOM_LEN` characters of `[a-z0-9]`, uniformly: bytes ≥ 252 (= 7·36)
/// are rejected so that `b % 36` has no bias.
fn random_part(rng: &dyn SecureRandom) -> Result<String, aws_lc_rs::error::Unspecified> {
    let mut out = String::with_capacity(RANDOM_LEN);
    let mut buf = [0u8; 16];
    while out.len() < RANDOM_LEN {
        rng.fill(&mut buf)?;
        for b in buf {
            if b < 252 && out.len() < RANDOM_LEN {
                out.push(RANDOM_ALPHABET[usize::from(b % 36)] as char);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use std::collections::HashSet;

    const T: u64 = 1_790_000_000;

    fn default_template() -> NameTemplate {
        NameTemplate::parse(&crate::config::default_name_template()).unwrap()
    }

    fn render(identity: &str, template: &str) -> String {
        default_template()
            .render(identity, template, T, &SystemRandom::new())
            .unwrap()
    }

    #[test]
    fn sanitizes_exotic_identities() {
        assert_eq!(sanitize("alice"), "alice");
        assert_eq!(sanitize("Alice@Example.COM"), "alice_example_com");
        assert_eq!(
            sanitize("\"; DROP ROLE postgres; --"),
            "drop_role_postgres_--"
        );
        assert_eq!(sanitize("o'brien"), "o_brien");
        assert_eq!(sanitize("Jürgen Müller"), "j_rgen_m_ller");
        assert_eq!(sanitize("日本語"), "anon");
        assert_eq!(sanitize(""), "anon");
        assert_eq!(sanitize("___"), "anon");
        assert_eq!(sanitize("a\0b\\c$d"), "a_b_c_d");
        assert_eq!(sanitize("svc-deploy_01"), "svc-deploy_01");
        for s in ["\"", "'", "\\", "$$", "é", "\u{202e}", "a b"] {
            assert!(sanitize(s).bytes().all(is_name_byte), "{s:?}");
        }
    }

    #[test]
    fn renders_the_default_template() {
        let name = render("Alice@Example.com", "readonly");
        assert!(is_valid_role_name(&name), "{name}");
        let parts: Vec<&str> = name.split('-').collect();
        assert_eq!(parts[0], "v");
        assert_eq!(parts[1], "alice_example_com");
        assert_eq!(parts[2], "readonly");
        assert_eq!(parts[3].len(), RANDOM_LEN);
        assert!(parts[3]
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        assert_eq!(parts[4], T.to_string());

        let name = render("\"; DROP ROLE x; --", "readonly");
        assert!(is_valid_role_name(&name), "{name}");
        assert!(!name.contains('"') && !name.contains(';') && !name.contains(' '));
    }

    #[test]
    fn cuts_identity_first_then_template_never_random() {
        let long_id = "a".repeat(200);
        let name = render(&long_id, "readonly");
        assert_eq!(name.len(), MAX_NAME_BYTES, "{name}");
        assert!(name.contains("-readonly-"), "{name}");
        assert!(name.ends_with(&format!("-{T}")), "{name}");
        let random = name.split('-').nth(3).unwrap();
        assert_eq!(random.len(), RANDOM_LEN);

        // Template so long the identity disappears and the template is cut.
        let long_tmpl = "t".repeat(63);
        let name = render(&long_id, &long_tmpl);
        assert!(is_valid_role_name(&name), "{name}");
        assert_eq!(name.len(), MAX_NAME_BYTES);
        let parts: Vec<&str> = name.split('-').collect();
        assert_eq!(parts[1], "", "{name}");
        assert!(parts[2].starts_with("ttt"));
        assert_eq!(parts[3].len(), RANDOM_LEN);
        assert_eq!(parts[4], T.to_string());
    }

    #[test]
    fn random_parts_are_unique() {
        let t = default_template();
        let rng = SystemRandom::new();
        let names: HashSet<String> = (0..10_000)
            .map(|_| t.render("alice", "readonly", T, &rng).unwrap())
            .collect();
        assert_eq!(names.len(), 10_000);
    }

    #[test]
    fn parse_checks_the_template() {
        assert!(NameTemplate::parse("v-{{identity}}").is_err(), "no random");
        assert!(
            NameTemplate::parse("V-{{random}}").is_err(),
            "uppercase literal"
        );
        assert!(NameTemplate::parse("v {{random}}").is_err(), "space");
        assert!(NameTemplate::parse("v-{{nope}}-{{random}}").is_err());
        assert!(NameTemplate::parse("v-{{random}").is_err());
        assert!(NameTemplate::parse(&format!("{}{{{{random}}}}", "x".repeat(60))).is_err());
        let t = NameTemplate::parse("{{identity}}_{{ random }}").unwrap();
        let name = t
            .render("pg_monitor", "x", T, &SystemRandom::new())
            .unwrap();
        assert!(name.starts_with("pg-monitor_"), "{name}");
    }
}
