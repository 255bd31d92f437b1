//! Vault's loose request fields, read out of a JSON body.
//!
//! Vault decodes request data "weakly" (mapstructure's `WeakDecode`): a
//! list may come as a JSON array or as one comma-separated string (the CLI
//! sends `policies=a,b`), a duration as a number of seconds or a string
//! (`"90"`, `"1h"`, `"1h30m"`), a bool or a number as a string. Terraform,
//! hvac and the CLI each pick one of these shapes, so every one is taken.
//! Every reader bounds what it returns.

use std::time::Duration;

use serde_json::Value;

/// A field that could not be read; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: &'static str,
}

fn err(field: &str, reason: &'static str) -> FieldError {
    FieldError {
        field: field.chars().take(64).collect(),
        reason,
    }
}

/// A list of strings (array, or comma-separated string), each trimmed,
/// empty ones dropped; at most `max_items` of at most `max_bytes` each.
pub fn list(
    body: &Value,
    field: &str,
    max_items: usize,
    max_bytes: usize,
) -> Result<Option<Vec<String>>, FieldError> {
    let items: Vec<String> = match body.get(field) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.split(',').map(|p| p.trim().to_owned()).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.trim().to_owned()),
                Value::Number(n) => Ok(n.to_string()),
                _ => Err(err(field, "not a list of strings")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(err(field, "not a list of strings")),
    };
    let items: Vec<String> = items.into_iter().filter(|s| !s.is_empty()).collect();
    if items.len() > max_items {
        return Err(err(field, "too many items"));
    }
    if items.iter().any(|s| s.len() > max_bytes) {
        return Err(err(field, "an item is too long"));
    }
    Ok(Some(items))
}

/// A string of at most `max_bytes`.
pub fn string(body: &Value, field: &str, max_bytes: usize) -> Result<Option<String>, FieldError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= max_bytes => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(err(field, "too long")),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(Value::Bool(b)) => Ok(Some(b.to_string())),
        Some(_) => Err(err(field, "not a string")),
    }
}

/// A bool, or `"true"`/`"false"`/`"1"`/`"0"`.
pub fn boolean(body: &Value, field: &str) -> Result<Option<bool>, FieldError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "t" => Ok(Some(true)),
            "false" | "0" | "f" | "" => Ok(Some(false)),
            _ => Err(err(field, "not a bool")),
        },
        Some(Value::Number(n)) => match n.as_u64() {
            Some(0) => Ok(Some(false)),
            Some(1) => Ok(Some(true)),
            _ => Err(err(field, "not a bool")),
        },
        Some(_) => Err(err(field, "not a bool")),
    }
}

/// A non-negative whole number up to `max`.
pub fn count(body: &Value, field: &str, max: u64) -> Result<Option<u64>, FieldError> {
    let n = match body.get(field) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => {
            if n.as_i64().is_some_and(|n| n < 0) {
                return Err(err(field, "cannot be negative"));
            }
            n.as_u64().ok_or_else(|| err(field, "not a whole number"))?
        }
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(None),
        Some(Value::String(s)) => {
            let s = s.trim();
            if s.starts_with('-') {
                return Err(err(field, "cannot be negative"));
            }
            s.parse::<u64>()
                .map_err(|_| err(field, "not a whole number"))?
        }
        Some(_) => return Err(err(field, "not a whole number")),
    };
    if n > max {
        return Err(err(field, "too large"));
    }
    Ok(Some(n))
}

/// A duration: seconds as a number or a string of digits, or a duration
/// string (`"1h"`, `"1h30m"`, `"45s"`, `"2d"`); at most `max`. Negative
/// ones are refused, as Vault refuses them.
pub fn duration(body: &Value, field: &str, max: Duration) -> Result<Option<Duration>, FieldError> {
    let d = match body.get(field) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => {
            if n.as_i64().is_some_and(|n| n < 0) || n.as_f64().is_some_and(|f| f < 0.0) {
                return Err(err(field, "must be positive"));
            }
            Duration::from_secs(n.as_u64().ok_or_else(|| err(field, "not a duration"))?)
        }
        Some(Value::String(s)) => match parse_duration(s) {
            Some(d) => d,
            None if s.trim().is_empty() => return Ok(None),
            None if s.trim().starts_with('-') => return Err(err(field, "must be positive")),
            None => return Err(err(field, "not a duration")),
        },
        Some(_) => return Err(err(field, "not a duration")),
    };
    if d > max {
        return Err(err(field, "too long"));
    }
    Ok(Some(d))
}

/// `"90"` (seconds) or a humantime duration (`"1h30m"`, `"2d"`).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() || s.len() > 64 || s.starts_with('-') {
        return None;
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<u64>().ok().map(Duration::from_secs);
    }
    humantime::parse_duration(s).ok()
}

/// A map of string to string (`meta`), bounded in entries and bytes.
pub fn string_map(
    body: &Value,
    field: &str,
    max_entries: usize,
    max_bytes: usize,
) -> Result<Option<std::collections::BTreeMap<String, String>>, FieldError> {
    let map = match body.get(field) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(err(field, "not a map of strings")),
    };
    if map.len() > max_entries {
        return Err(err(field, "too many entries"));
    }
    let mut out = std::collections::BTreeMap::new();
    for (k, v) in map {
        let v = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => return Err(err(field, "not a map of strings")),
        };
        if k.len() > max_bytes || v.len() > max_bytes {
            return Err(err(field, "an entry is too long"));
        }
        out.insert(k.clone(), v);
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_come_as_arrays_or_comma_strings() {
        let body = json!({"a": ["x", " y ", ""], "b": "p, q,", "c": 3, "d": null});
        assert_eq!(list(&body, "a", 10, 10).unwrap().unwrap(), ["x", "y"]);
        assert_eq!(list(&body, "b", 10, 10).unwrap().unwrap(), ["p", "q"]);
        assert!(list(&body, "c", 10, 10).is_err());
        assert_eq!(list(&body, "d", 10, 10).unwrap(), None);
        assert_eq!(list(&body, "missing", 10, 10).unwrap(), None);
        assert_eq!(
            list(&body, "a", 1, 10).unwrap_err().reason,
            "too many items"
        );
        assert_eq!(
            list(&body, "a", 10, 0).unwrap_err().reason,
            "an item is too long"
        );
    }

    #[test]
    fn durations_are_seconds_or_duration_strings_and_bounded() {
        let max = Duration::from_secs(7 * 86400);
        let body = json!({"n": 90, "s": "90", "h": "1h30m", "neg": -5, "sneg": "-5s",
                          "big": u64::MAX, "bad": "soon", "f": 1.5, "empty": ""});
        let d = |f| duration(&body, f, max);
        assert_eq!(d("n").unwrap(), Some(Duration::from_secs(90)));
        assert_eq!(d("s").unwrap(), Some(Duration::from_secs(90)));
        assert_eq!(d("h").unwrap(), Some(Duration::from_secs(5400)));
        assert_eq!(d("neg").unwrap_err().reason, "must be positive");
        assert_eq!(d("sneg").unwrap_err().reason, "must be positive");
        assert_eq!(d("big").unwrap_err().reason, "too long");
        assert_eq!(d("bad").unwrap_err().reason, "not a duration");
        assert_eq!(d("f").unwrap_err().reason, "not a duration");
        assert_eq!(d("empty").unwrap(), None);
        assert_eq!(parse_duration("99999999999999999999999"), None);
    }

    #[test]
    fn bools_and_counts_are_read_weakly() {
        let body = json!({"t": "true", "f": 0, "x": "maybe", "n": "3", "neg": -1, "big": 11});
        assert_eq!(boolean(&body, "t").unwrap(), Some(true));
        assert_eq!(boolean(&body, "f").unwrap(), Some(false));
        assert!(boolean(&body, "x").is_err());
        assert_eq!(count(&body, "n", 10).unwrap(), Some(3));
        assert_eq!(
            count(&body, "neg", 10).unwrap_err().reason,
            "cannot be negative"
        );
        assert_eq!(count(&body, "big", 10).unwrap_err().reason, "too large");
    }

    #[test]
    fn maps_are_bounded() {
        let body = json!({"m": {"a": "b", "n": 1}, "bad": {"a": [1]}});
        let m = string_map(&body, "m", 4, 8).unwrap().unwrap();
        assert_eq!(m.get("n").map(String::as_str), Some("1"));
        assert!(string_map(&body, "bad", 4, 8).is_err());
        assert!(string_map(&body, "m", 1, 8).is_err());
    }
}
