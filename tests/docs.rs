//! The README agrees with the binary and the example config: every
//! subcommand and flag it names exists in `--help` (and every subcommand
//! is named), every key of the example config parses (the commented-out
//! ones too, each where it is documented), and every section and key of
//! the example config appears in the README's configuration reference.
//! No PostgreSQL needed: this runs in a second.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

const README: &str = include_str!("../README.md");
const EXAMPLE: &str = include_str!("../config/rolemint.example.toml");
const ROLEMINT: &str = env!("CARGO_BIN_EXE_rolemint");

/// `rolemint <path> --help`, run once per path.
struct Help {
    cache: BTreeMap<Vec<String>, String>,
}

impl Help {
    fn of(&mut self, path: &[String]) -> &str {
        self.cache.entry(path.to_vec()).or_insert_with(|| {
            let out = Command::new(ROLEMINT)
                .args(path)
                .arg("--help")
                .output()
                .unwrap();
            assert!(out.status.success(), "rolemint {path:?} --help failed");
            String::from_utf8(out.stdout).unwrap()
        })
    }

    /// The subcommands listed under "Commands:".
    fn subcommands(&mut self, path: &[String]) -> BTreeSet<String> {
        let help = self.of(path);
        help.lines()
            .skip_while(|l| *l != "Commands:")
            .skip(1)
            .take_while(|l| !l.trim().is_empty())
            .filter_map(|l| l.split_whitespace().next())
            .filter(|name| *name != "help")
            .map(str::to_owned)
            .collect()
    }

    fn has_flag(&mut self, path: &[String], flag: &str) -> bool {
        let help = self.of(path);
        help.match_indices(flag).any(|(i, _)| {
            let after = help[i + flag.len()..].chars().next();
            !matches!(after, Some(c) if c.is_ascii_alphanumeric() || c == '-')
        })
    }
}

/// The code of the README: the lines of fenced blocks and the inline
/// `spans` of the other lines.
fn code_fragments(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            out.push(line.to_owned());
        } else {
            out.extend(line.split('`').skip(1).step_by(2).map(str::to_owned));
        }
    }
    out
}

/// The command lines of rolemint in a fragment: what follows each
/// `rolemint` (or `cargo run ... --`) up to the end of the command.
fn invocations(fragment: &str) -> Vec<Vec<String>> {
    // A shell comment is prose.
    let tokens: Vec<&str> = fragment
        .split_whitespace()
        .take_while(|t| !t.starts_with('#'))
        .collect();
    let mut found = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let token = token.trim_start_matches("$(").trim_start_matches('(');
        let starts = token == "rolemint"
            || (token == "--"
                && fragment.contains("cargo run")
                && !fragment.contains("--example")
                && !fragment.contains("--bench"));
        if !starts {
            continue;
        }
        let args: Vec<String> = tokens[i + 1..]
            .iter()
            .take_while(|t| !matches!(**t, "|" | "&&" | ";" | ")") && !t.starts_with('#'))
            .map(|t| t.to_string())
            .collect();
        // `docker compose exec rolemint rolemint token`: the service name.
        if args.first().is_some_and(|a| a == "rolemint") {
            continue;
        }
        if !args.is_empty() {
            found.push(args);
        }
    }
    found
}

/// What a text's command lines name: the subcommands, how many flags
/// were checked, and what does not exist.
struct Named {
    subcommands: BTreeSet<String>,
    flags: usize,
    problems: Vec<String>,
}

fn check_commands(text: &str, help: &mut Help) -> Named {
    let top = help.subcommands(&[]);
    assert!(top.contains("serve") && top.contains("leases"), "{top:?}");
    let mut named = Named {
        subcommands: BTreeSet::new(),
        flags: 0,
        problems: Vec::new(),
    };
    for fragment in code_fragments(text) {
        for args in invocations(&fragment) {
            let first = args[0].as_str();
            // The word "rolemint" before something that is not a command
            // or an option (`rolemint_managed` never gets here).
            if !first.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
                continue;
            }
            if first.starts_with('-') {
                if !help.has_flag(&[], first) {
                    named
                        .problems
                        .push(format!("`rolemint {first}`: no such option"));
                }
                continue;
            }
            if !top.contains(first) {
                named
                    .problems
                    .push(format!("`{}`: no subcommand {first:?}", fragment.trim()));
                continue;
            }
            named.subcommands.insert(first.to_owned());
            let mut path = vec![first.to_owned()];
            if let Some(second) = args.get(1) {
                if help.subcommands(&path).contains(second.as_str()) {
                    path.push(second.clone());
                }
            }
            for arg in &args[path.len()..] {
                let arg = arg.trim_start_matches(['[', '"']);
                let Some(flag) = arg.strip_prefix("--") else {
                    continue;
                };
                let name: String = flag
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                if name.is_empty() {
                    continue;
                }
                named.flags += 1;
                if !help.has_flag(&path, &format!("--{name}")) {
                    named.problems.push(format!(
                        "`{}`: rolemint {} has no --{name}",
                        fragment.trim(),
                        path.join(" ")
                    ));
                }
            }
        }
    }
    named
}

#[test]
fn every_command_and_flag_in_the_readme_exists_in_help() {
    let mut help = Help {
        cache: BTreeMap::new(),
    };
    let named = check_commands(README, &mut help);
    let top = help.subcommands(&[]);
    let unnamed: Vec<_> = top.difference(&named.subcommands).collect();
    assert!(
        unnamed.is_empty(),
        "subcommands the README never shows: {unnamed:?}"
    );
    assert!(named.flags > 20, "only {} flags found", named.flags);
    assert!(named.problems.is_empty(), "{:#?}", named.problems);
}

#[test]
fn the_command_check_finds_what_does_not_exist() {
    let mut help = Help {
        cache: BTreeMap::new(),
    };
    let text = "Run `rolemint leases list --nope` or\n\n```sh\nrolemint rotate-root --config F\nrolemint dev --sub x   # fine\n```\n";
    let named = check_commands(text, &mut help);
    assert_eq!(named.problems.len(), 2, "{:#?}", named.problems);
    assert!(named.problems[0].contains("has no --nope"));
    assert!(named.problems[1].contains("no subcommand \"rotate-root\""));
    assert_eq!(named.flags, 2);
}

/// The sections of the example config, as the reference names them:
/// `[roles.readonly]` is `[roles.NAME]`.
fn example_sections() -> BTreeSet<String> {
    EXAMPLE
        .lines()
        .filter(|l| l.starts_with('['))
        .map(|l| {
            let l = l.trim();
            match l.strip_prefix("[roles.") {
                Some(_) => "[roles.NAME]".to_owned(),
                None => l.to_owned(),
            }
        })
        .collect()
}

/// `key = value` lines of the example, set or commented out (`# key =`).
fn example_keys() -> Vec<(usize, String, bool)> {
    let mut keys = Vec::new();
    for (n, line) in EXAMPLE.lines().enumerate() {
        let (body, commented) = match line.strip_prefix("# ") {
            Some(rest) => (rest, true),
            None => (line, false),
        };
        let Some((key, _)) = body.split_once(" = ") else {
            continue;
        };
        let key = key.trim_end();
        if !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            keys.push((n, key.to_owned(), commented));
        }
    }
    keys
}

#[test]
fn every_key_of_the_example_config_parses() {
    let config = rolemint::config::Config::parse(EXAMPLE).expect("the example parses");
    assert!(!config.roles.is_empty());
    let lines: Vec<&str> = EXAMPLE.lines().collect();
    let mut tried = 0;
    for (n, key, commented) in example_keys() {
        if !commented {
            continue;
        }
        // Uncommented alone, where it is documented.
        let mut text = lines.clone();
        let uncommented = lines[n].trim_start_matches("# ").to_owned();
        text[n] = &uncommented;
        match rolemint::config::Config::parse(&text.join("\n")) {
            Ok(_) => tried += 1,
            // Documented as an alternative to a key set just above.
            Err(e) if e.to_string().contains("duplicate key") => tried += 1,
            Err(e) => panic!("line {}: `{key}` does not parse there: {e}", n + 1),
        }
    }
    assert!(tried >= 10, "only {tried} commented keys found");
}

#[test]
fn every_section_and_key_of_the_example_config_is_in_the_readme_reference() {
    let start = README
        .find("\n## Configuration reference")
        .expect("the README has a \"## Configuration reference\" section");
    let rest = &README[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    let reference = &rest[..end];
    let sections = example_sections();
    assert!(sections.len() >= 12, "{sections:?}");
    let missing: Vec<_> = sections
        .iter()
        .filter(|s| !reference.contains(&format!("`{s}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "sections not in the reference: {missing:?}"
    );
    let missing: BTreeSet<_> = example_keys()
        .into_iter()
        .map(|(_, key, _)| key)
        .filter(|key| !reference.contains(&format!("`{key}`")))
        .collect();
    assert!(missing.is_empty(), "keys not in the reference: {missing:?}");
}

#[test]
fn the_first_sixty_lines_go_from_nothing_to_a_psql_prompt() {
    let first: Vec<&str> = README.lines().take(60).collect();
    let at = |needle: &str| {
        first
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle:?} is not in the README's first 60 lines"))
    };
    // What it is, how to get it, how to start it, and the prompt, in order.
    let order = [
        at("PostgreSQL wire-protocol proxy"),
        at("cargo install --locked --path ."),
        at("docker build"),
        at("rolemint dev"),
        at("psql \"host=127.0.0.1 port=6432 dbname=appdb user=readonly"),
        at("appdb=>"),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
}
