//! Logging: `tracing` to stderr, text or JSON, level from `ROLEMINT_LOG`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// A client-supplied string (a startup parameter, a claim, a backend's
/// message) on its way into a log line: control characters and backslashes
/// are escaped, so a `\n` in a value cannot forge a second line.
pub struct LogSafe<'a>(pub &'a str);

impl std::fmt::Display for LogSafe<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        for c in self.0.chars() {
            if c == '\\' || c.is_control() {
                for e in c.escape_default() {
                    f.write_char(e)?;
                }
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// The filter for a `ROLEMINT_LOG` value (default `info`). tokio-postgres
/// logs every admin statement at debug level, mint batches and their SCRAM
/// verifiers included, so it stays at info unless named explicitly.
pub fn filter(rolemint_log: Option<&str>) -> EnvFilter {
    let mut directives = rolemint_log.unwrap_or("info").to_owned();
    if !directives.contains("tokio_postgres") {
        directives.push_str(",tokio_postgres=info");
    }
    EnvFilter::try_new(&directives).unwrap_or_else(|e| {
        eprintln!("rolemint: ignoring ROLEMINT_LOG={directives:?}: {e}");
        EnvFilter::new("info,tokio_postgres=info")
    })
}

/// Installs the process's subscriber: stderr, colours only on a terminal.
pub fn init(format: LogFormat) {
    let rolemint_log = std::env::var("ROLEMINT_LOG").ok();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(rolemint_log.as_deref()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// An error with its causes, `a: b: c`: an HTTP client's own text ("error
/// sending request") leaves out why (refused, an unknown CA, ...).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
