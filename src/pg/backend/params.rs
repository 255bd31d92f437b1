//! Which startup parameters reach the backend, sans IO.
//!
//! PostgreSQL applies every startup parameter as a session setting of the
//! minted role before rolemint sees a byte of the session, so a client must
//! not choose any setting it likes: `session_authorization`, `role`,
//! `log_statement`, `replication` and their kin are not for it to set. Only
//! the settings below pass, whether sent as a parameter or inside `options`
//! as `-c name=value` / `--name=value`. Anything else is refused (SQLSTATE
//! 42501, naming the parameter), never dropped: a client never silently
//! loses a setting it asked for. `replication` is refused with 0A000, as a
//! feature rolemint does not offer.

use crate::error::ClientError;

/// Session settings a client may choose, lower case (PostgreSQL matches
/// setting names case-insensitively). Each only changes how this session
/// formats, encodes, waits or searches, or which of its own notices its
/// client is sent; none touches identity, privileges, the server's log or
/// the server.
pub const ALLOWED_SETTINGS: &[&str] = &[
    "application_name",
    "bytea_output",
    "client_encoding",
    "client_min_messages",
    "datestyle",
    "default_transaction_isolation",
    "default_transaction_read_only",
    "extra_float_digits",
    "idle_in_transaction_session_timeout",
    "intervalstyle",
    "lock_timeout",
    "search_path",
    "standard_conforming_strings",
    "statement_timeout",
    "timezone",
];

/// Longest parameter name echoed back in an error.
const MAX_NAME_IN_ERROR: usize = 64;

/// Whether a setting may be chosen by the client.
pub fn is_allowed(name: &str) -> bool {
    ALLOWED_SETTINGS
        .iter()
        .any(|allowed| allowed.eq_ignore_ascii_case(name))
}

/// Checks one startup parameter (not `user`, `database` or `_pq_.*`, which
/// the handshake handles) and returns what to forward for it.
pub fn filter(name: &str, value: &str) -> Result<Option<(String, String)>, ClientError> {
    if name == "replication" {
        return match value {
            "false" | "off" | "no" | "0" => Ok(None),
            _ => Err(ClientError::Unsupported(
                "replication connections are not supported by rolemint",
            )),
        };
    }
    if name == "options" {
        let options = filter_options(value)?;
        return Ok((!options.is_empty()).then(|| (name.to_owned(), options)));
    }
    if !is_allowed(name) {
        return Err(not_allowed(name));
    }
    Ok(Some((name.to_owned(), value.to_owned())))
}

fn not_allowed(name: &str) -> ClientError {
    let shown: String = name.chars().take(MAX_NAME_IN_ERROR).collect();
    ClientError::ParameterNotAllowed(shown)
}

/// Checks an `options` value: only `-c name=value`, `-cname=value` and
/// `--name=value` of allowed settings. Returns it re-escaped in
/// PostgreSQL's syntax (whitespace and backslashes escaped with `\`).
pub fn filter_options(options: &str) -> Result<String, ClientError> {
    let words = split_options(options);
    let mut settings = Vec::new();
    let mut words = words.iter();
    while let Some(word) = words.next() {
        let setting = if word == "-c" {
            words
                .next()
                .ok_or(ClientError::Protocol("\"-c\" without a setting in options"))?
                .as_str()
        } else if let Some(s) = word.strip_prefix("--") {
            s
        } else if let Some(s) = word.strip_prefix("-c") {
            s
        } else {
            return Err(ClientError::Protocol(
                "options may only hold -c name=value settings",
            ));
        };
        let Some((name, value)) = setting.split_once('=') else {
            return Err(ClientError::Protocol(
                "options may only hold -c name=value settings",
            ));
        };
        // PostgreSQL reads `--name` with dashes as underscores.
        let name = name.replace('-', "_");
        if !is_allowed(&name) {
            return Err(not_allowed(&name));
        }
        settings.push(format!("-c {}={}", escape(&name), escape(value)));
    }
    Ok(settings.join(" "))
}

/// Splits `options` as PostgreSQL's `pg_split_opts` does: on ASCII
/// whitespace, a backslash taking the next character literally.
fn split_options(options: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            c if c.is_ascii_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '\\' || c.is_ascii_whitespace() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_parameters_pass_case_insensitively() {
        assert_eq!(
            filter("DateStyle", "ISO").unwrap(),
            Some(("DateStyle".into(), "ISO".into()))
        );
        assert!(filter("application_name", "psql").unwrap().is_some());
        assert!(filter("TimeZone", "UTC").unwrap().is_some());
    }

    #[test]
    fn other_parameters_are_refused_by_name() {
        for name in ["role", "session_authorization", "log_statement", "geqo"] {
            match filter(name, "x") {
                Err(ClientError::ParameterNotAllowed(n)) => assert_eq!(n, name),
                other => panic!("{name}: {other:?}"),
            }
        }
        let long = "x".repeat(5000);
        match filter(&long, "v") {
            Err(ClientError::ParameterNotAllowed(n)) => assert_eq!(n.len(), MAX_NAME_IN_ERROR),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn replication_never_passes() {
        assert!(matches!(
            filter("replication", "database"),
            Err(ClientError::Unsupported(_))
        ));
        assert!(matches!(
            filter("replication", "true"),
            Err(ClientError::Unsupported(_))
        ));
        assert_eq!(filter("replication", "off").unwrap(), None);
    }

    #[test]
    fn options_keep_only_allowed_settings() {
        assert_eq!(
            filter_options("-c statement_timeout=5s  --search-path=app\\ x").unwrap(),
            "-c statement_timeout=5s -c search_path=app\\ x"
        );
        assert_eq!(filter_options("-cTimeZone=UTC").unwrap(), "-c TimeZone=UTC");
        assert_eq!(filter_options("   ").unwrap(), "");
        for bad in [
            "-c role=postgres",
            "-c session_authorization=postgres",
            "--log-statement=none",
            "-B 100",
            "-c",
            "-c statement_timeout",
            "-c\\ role=x",
        ] {
            assert!(filter_options(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn options_escape_round_trips() {
        let original = "-c application_name=a\\\\b\\ c";
        let filtered = filter_options(original).unwrap();
        assert_eq!(split_options(&filtered), split_options(original));
    }
}
