//! The processes under a [`TempCluster`](super::TempCluster): the user the
//! server runs as, a free port, the startup probe, a postmaster's children,
//! running a program with its output captured, and random secrets.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use nix::unistd::{Uid, User};

use super::{io_error, ClusterError, RunAs};

/// Root may not run PostgreSQL; find the user that will.
pub(super) fn server_user() -> Result<Option<RunAs>, ClusterError> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    let explain = |why: String| {
        ClusterError::NoServerUser(format!(
            "running as root, and PostgreSQL refuses to run as root, so the throwaway cluster \
             runs as the `postgres` system user; {why}. Create it \
             (`useradd --system --user-group --no-create-home postgres`; installing the \
             PostgreSQL package usually does) or run as a non-root user."
        ))
    };
    match User::from_name("postgres") {
        Ok(Some(user)) => Ok(Some(RunAs {
            uid: user.uid,
            gid: user.gid,
        })),
        Ok(None) => Err(explain("there is no such user".into())),
        Err(e) => Err(explain(format!("looking it up failed ({e})"))),
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub(super) fn free_port() -> Result<u16, ClusterError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(io_error("cannot find a free port on 127.0.0.1"))
}

/// Sends a StartupMessage and checks that the server answers with an
/// authentication request ('R'): it accepts connections. While it starts up
/// it answers with an ErrorResponse (57P03) instead. We then hang up, which a
/// server waiting for a password takes silently.
pub(super) fn answers_startup(port: u16, user: &str) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let mut body = 196_608_i32.to_be_bytes().to_vec(); // protocol 3.0
    for (key, value) in [("user", user), ("database", "postgres")] {
        body.extend_from_slice(key.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut message = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    message.extend_from_slice(&body);
    let mut tag = [0_u8; 1];
    stream.write_all(&message).is_ok() && stream.read_exact(&mut tag).is_ok() && tag[0] == b'R'
}

/// Child processes of `pid`, from /proc (Linux only; elsewhere the backends
/// exit by themselves once the postmaster is gone).
pub(super) fn children_of(pid: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let child: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
            // "pid (comm) state ppid ...": comm may hold spaces and parens.
            let after_comm = &stat[stat.rfind(')')? + 1..];
            let ppid: i32 = after_comm.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == pid).then_some(child)
        })
        .collect()
}

/// Runs `cmd` to completion, feeding `stdin`, and returns its stdout; on
/// failure the error holds stdout and stderr.
pub(super) fn run_capturing(
    mut cmd: Command,
    stdin: Option<&str>,
    what: &str,
) -> Result<String, ClusterError> {
    let program = cmd.get_program().to_owned();
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(io_error(format!(
        "cannot run {}",
        Path::new(&program).display()
    )))?;
    // Written from another thread: a large script and a large output would
    // otherwise block each other.
    let writer = match (stdin, child.stdin.take()) {
        (Some(text), Some(mut pipe)) => {
            let text = text.to_owned();
            Some(thread::spawn(move || {
                let _ = pipe.write_all(text.as_bytes());
            }))
        }
        _ => None,
    };
    let output = child
        .wait_with_output()
        .map_err(io_error(format!("waiting for {what}")))?;
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        return Ok(stdout);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(ClusterError::Command {
        what: what.to_owned(),
        status: output.status.to_string(),
        output: format!("{stdout}{stderr}").trim_end().to_owned(),
    })
}

pub(super) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `bytes` random bytes from the system RNG (aws-lc), hex encoded: safe to
/// put in a connection string, a SQL literal or TOML unquoted.
pub(crate) fn random_hex(bytes: usize) -> Result<String, ClusterError> {
    let mut buf = vec![0_u8; bytes];
    aws_lc_rs::rand::fill(&mut buf).map_err(|_| ClusterError::Io {
        what: "the system random number generator failed".into(),
        source: std::io::Error::other("aws_lc_rs::rand::fill"),
    })?;
    Ok(buf
        .iter()
        .fold(String::with_capacity(bytes * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        }))
}
