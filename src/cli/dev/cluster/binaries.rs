//! Finding the PostgreSQL programs on this machine.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::ClusterError;

/// Where the PostgreSQL programs are.
#[derive(Debug, Clone)]
pub struct PgBinaries {
    /// Directory holding `initdb` and `postgres`.
    pub dir: PathBuf,
    /// `psql`: next to `initdb`, else on PATH.
    pub psql: PathBuf,
    /// `pgbench`: next to `initdb`, else on PATH.
    pub pgbench: PathBuf,
}

/// Finds the server binaries: `$ROLEMINT_PG_BIN`, else the directory of
/// `initdb` on PATH, else the newest of the usual per-version directories
/// (Debian's `/usr/lib/postgresql/*/bin`, PGDG's `/usr/pgsql-*/bin`,
/// Homebrew's keg-only `postgresql@*`).
pub fn find_binaries() -> Result<PgBinaries, ClusterError> {
    let has_server =
        |dir: &Path| is_executable(&dir.join("initdb")) && is_executable(&dir.join("postgres"));

    let dir = if let Some(dir) = std::env::var_os("ROLEMINT_PG_BIN") {
        let dir = PathBuf::from(dir);
        if !has_server(&dir) {
            return Err(ClusterError::BinariesNotFound(format!(
                "ROLEMINT_PG_BIN={} holds no initdb and postgres executables; \
                 point it at PostgreSQL's bin directory (`pg_config --bindir`)",
                dir.display()
            )));
        }
        dir
    } else if let Some(dir) = path_dirs().into_iter().find(|d| has_server(d)) {
        dir
    } else if let Some(dir) = versioned_dirs().into_iter().rev().find(|d| has_server(d)) {
        dir
    } else {
        return Err(ClusterError::not_installed());
    };
    let beside_or_on_path = |name: &str| {
        let beside = dir.join(name);
        if is_executable(&beside) {
            return beside;
        }
        path_dirs()
            .into_iter()
            .map(|d| d.join(name))
            .find(|p| is_executable(p))
            .unwrap_or(beside)
    };
    Ok(PgBinaries {
        psql: beside_or_on_path("psql"),
        pgbench: beside_or_on_path("pgbench"),
        dir,
    })
}

fn path_dirs() -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default()
}

/// Per-version install directories, oldest first.
fn versioned_dirs() -> Vec<PathBuf> {
    // (parent, prefix of the version part, path below the versioned dir)
    let layouts: [(&str, &str, &str); 4] = [
        ("/usr/lib/postgresql", "", "bin"),
        ("/usr", "pgsql-", "bin"),
        ("/opt/homebrew/opt", "postgresql@", "bin"),
        ("/usr/local/opt", "postgresql@", "bin"),
    ];
    let mut found: Vec<(Vec<u32>, PathBuf)> = Vec::new();
    for (parent, prefix, below) in layouts {
        let Ok(entries) = fs::read_dir(parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(version) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
                continue;
            };
            let Ok(version) = version
                .split('.')
                .map(str::parse::<u32>)
                .collect::<Result<Vec<u32>, _>>()
            else {
                continue;
            };
            found.push((version, entry.path().join(below)));
        }
    }
    found.sort();
    found.into_iter().map(|(_, dir)| dir).collect()
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
