//! The running process: what every session shares, SIGHUP reload, and
//! termination signals.

pub mod reload;
pub mod signal;
pub mod state;
