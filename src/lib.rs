//! rolemint: a PostgreSQL proxy that hands out just-in-time credentials.
//! (Crate map being written.)

pub mod config;
pub mod error;
pub mod identity;
pub mod mint;
pub mod secret;
pub mod server;
pub mod tls;
