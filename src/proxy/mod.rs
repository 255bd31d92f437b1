//! The proxy: the accept loop, one client session top to bottom, cancel
//! requests and the kernel splice.

pub mod cancel;
pub mod server;
pub mod session;
pub mod sockmap;
