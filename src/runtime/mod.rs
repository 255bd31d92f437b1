//! The running process: [`state`] (what every session shares, and the
//! part SIGHUP swaps), [`reload`] (SIGHUP: re-read, rebuild, swap or keep
//! the old one), [`signal`] (SIGTERM / Ctrl-C) and [`templates`] (the
//! templates written through the API, merged from the store).
//!
//! Owns the wiring of the shared services, not their behaviour: it must
//! not mint, revoke or serve anything itself, and imports nothing of the
//! proxy (which owns its cancel keys and kernel splice, beside `Shared`).

pub mod reload;
pub mod signal;
pub mod state;
pub mod templates;
