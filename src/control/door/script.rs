//! A statements script (`creation_statements=@readonly.sql`) cut into
//! statements at the semicolons PostgreSQL itself would end a statement
//! at: not inside a quoted literal or identifier, a dollar-quoted body
//! (`DO $$ BEGIN ...; END $$`) or a comment. Vault runs such a script
//! whole when it holds a block (its `containsMultilineStatement`); cut at
//! every `;`, a `DO` block read back as pieces (`END IF`, `END $$`), and a
//! literal holding `; ` lost its spaces.

/// The statements of `script`, trimmed, empty ones left out.
pub fn split(script: &str) -> Vec<String> {
    let bytes = script.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        i = match bytes[i] {
            b';' => {
                push(&mut out, &script[start..i]);
                start = i + 1;
                i + 1
            }
            b'\'' => {
                // `E'...'`: the E a token of its own, not `DATE'...'`'s.
                let escapes = i > 0
                    && matches!(bytes[i - 1], b'E' | b'e')
                    && (i < 2 || !(bytes[i - 2].is_ascii_alphanumeric() || bytes[i - 2] == b'_'));
                skip_quoted(bytes, i, b'\'', escapes)
            }
            b'"' => skip_quoted(bytes, i, b'"', false),
            b'-' if bytes.get(i + 1) == Some(&b'-') => bytes[i..]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(bytes.len(), |n| i + n + 1),
            b'/' if bytes.get(i + 1) == Some(&b'*') => skip_block_comment(bytes, i),
            b'$' => skip_dollar_quoted(script, i),
            _ => i + 1,
        };
    }
    push(&mut out, &script[start.min(script.len())..]);
    out
}

fn push(out: &mut Vec<String>, statement: &str) {
    let statement = statement.trim();
    if !statement.is_empty() {
        out.push(statement.to_owned());
    }
}

/// Past the literal or identifier opened at `open` (a doubled quote is
/// one quote; with `escapes`, as in `E'...'`, a backslash escapes).
fn skip_quoted(bytes: &[u8], open: usize, quote: u8, escapes: bool) -> usize {
    let mut i = open + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if escapes => i += 2,
            c if c == quote && bytes.get(i + 1) == Some(&quote) => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// Past the `/* ... */` comment opened at `open` (they nest in PostgreSQL).
fn skip_block_comment(bytes: &[u8], open: usize) -> usize {
    let mut depth = 0usize;
    let mut i = open;
    while i + 1 < bytes.len() {
        match (bytes[i], bytes[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    bytes.len()
}

/// Past the dollar-quoted string opened at `open` (`$$` or `$tag$`, the
/// tag an identifier), or one byte on when `$` opens none (`$1`, or a `$`
/// inside an identifier).
fn skip_dollar_quoted(script: &str, open: usize) -> usize {
    let bytes = script.as_bytes();
    let in_identifier =
        open > 0 && (bytes[open - 1].is_ascii_alphanumeric() || bytes[open - 1] == b'_');
    let tag_len = bytes[open + 1..]
        .iter()
        .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_'))
        .unwrap_or(bytes.len() - open - 1);
    let closes = bytes.get(open + 1 + tag_len) == Some(&b'$');
    let starts_well = tag_len == 0 || !bytes[open + 1].is_ascii_digit();
    if in_identifier || !closes || !starts_well {
        return open + 1;
    }
    let delimiter = &script[open..open + tag_len + 2];
    let body = open + delimiter.len();
    script[body..]
        .find(delimiter)
        .map_or(bytes.len(), |n| body + n + delimiter.len())
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn a_plain_script_is_cut_at_each_semicolon() {
        let sql = "CREATE ROLE \"{{name}}\" LOGIN;\nGRANT app_read TO \"{{name}}\";\n";
        assert_eq!(
            split(sql),
            [
                "CREATE ROLE \"{{name}}\" LOGIN",
                "GRANT app_read TO \"{{name}}\""
            ]
        );
        assert_eq!(split(" ; ;\n"), Vec::<String>::new());
        assert_eq!(split("SELECT 1"), ["SELECT 1"]);
    }

    #[test]
    fn blocks_literals_identifiers_and_comments_keep_their_semicolons() {
        let block =
            "DO $$\nBEGIN\n  IF true THEN\n    GRANT r TO \"{{name}}\";\n  END IF;\nEND\n$$";
        let sql = format!("CREATE ROLE \"{{{{name}}}}\";\n{block};\nSELECT 1;");
        assert_eq!(split(&sql), ["CREATE ROLE \"{{name}}\"", block, "SELECT 1"]);
        let tagged = "DO $body$ BEGIN PERFORM 'x;$$'; END $body$";
        assert_eq!(split(&format!("{tagged}; SELECT 2")), [tagged, "SELECT 2"]);
        let literal = "COMMENT ON ROLE \"a;b\" IS 'it''s; fine'";
        assert_eq!(split(&format!("{literal};SELECT 3")), [literal, "SELECT 3"]);
        let escaped = r"SELECT E'a\'; b'";
        assert_eq!(
            split(&format!("{escaped}; SELECT 4")),
            [escaped, "SELECT 4"]
        );
        let comments = "SELECT 5 -- not; here\n/* nor; /* here; */ */";
        assert_eq!(
            split(&format!("{comments};SELECT 6")),
            [comments, "SELECT 6"]
        );
    }

    #[test]
    fn dollars_that_open_nothing_and_unclosed_text_end_cleanly() {
        assert_eq!(
            split("SELECT $1; SELECT a$b; SELECT 7"),
            ["SELECT $1", "SELECT a$b", "SELECT 7"]
        );
        assert_eq!(split("SELECT 'open; forever"), ["SELECT 'open; forever"]);
        assert_eq!(split("DO $$ never closed;"), ["DO $$ never closed;"]);
        assert_eq!(split("SELECT 1 /* open;"), ["SELECT 1 /* open;"]);
        assert_eq!(split("SELECT $"), ["SELECT $"]);
        assert_eq!(split("$"), ["$"]);
    }
}
