//! Who a client is and what it may do: identities from tokens, and the
//! policy over templates and databases.

pub mod identity;
pub mod policy;
