//! Test-only failpoints: a session stops dead at a named point, so a test
//! can SIGKILL the proxy exactly there (between `CREATE ROLE` and the
//! backend login, or between the login and the splice) and check what the
//! reaper makes of it.
//!
//! `ROLEMINT_FAILPOINT=after_mint` (or `after_login`) in the environment of
//! a debug build makes every session reaching that point wait forever.
//! Release builds compile [`hit`] to nothing: no environment variable can
//! change how a production proxy behaves.

/// Between the commit of the mint and the backend login.
pub const AFTER_MINT: &str = "after_mint";
/// Between the backend login and the startup forwarding / splice.
pub const AFTER_LOGIN: &str = "after_login";

/// Waits forever when `ROLEMINT_FAILPOINT` names `point`; else returns at
/// once.
#[cfg(debug_assertions)]
pub async fn hit(point: &str) {
    static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var("ROLEMINT_FAILPOINT").ok());
    if armed.as_deref() == Some(point) {
        tracing::warn!(point, "failpoint reached: this session waits forever");
        std::future::pending::<()>().await;
    }
}

/// Compiled out of release builds.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub async fn hit(_point: &str) {}
