//! What rolemint tells its operators: [`audit`] (the JSON-lines audit log
//! of every decision and lease event), [`metrics`] (every Prometheus
//! metric, described once, and typed functions that record them) and
//! [`logging`] (the tracing subscriber).
//!
//! Owns the shape of every audit line and metric. Must not decide
//! anything: callers say what happened, this folder writes it down, and
//! never a secret, a token or a password (metric labels included).

pub mod audit;
pub mod logging;
pub mod metrics;
