//! A string that must never be printed: tokens, passwords, keys.
//!
//! `Secret` has no `Display`, and its `Debug` prints `Secret(***)`, so a
//! secret that ends up inside a struct that is logged or formatted with `{:?}`
//! stays hidden. The only way to the bytes is the explicit [`Secret::expose`].
//!
//! It is a thin face on `secrecy`'s `SecretBox<String>`, which zeroes the
//! bytes when the last copy is dropped; the face keeps rolemint's one-word
//! API (`new`, `expose`), its `Secret(***)` Debug, `Deserialize` and `==`.

use std::fmt;

use secrecy::{ExposeSecret, SecretBox};

/// A secret value held in memory only, zeroed on drop.
pub struct Secret(SecretBox<String>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(SecretBox::new(Box::new(value.into())))
    }

    /// The secret itself. Every call site is a place where it may leave the
    /// process, so keep them few and obvious.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    pub fn is_empty(&self) -> bool {
        self.expose().is_empty()
    }

    /// For clap's `value_parser`: a secret from the command line or the
    /// environment (`--token`) stays one inside the parsed arguments.
    pub fn parse(value: &str) -> Result<Secret, std::convert::Infallible> {
        Ok(Secret::new(value))
    }
}

impl Clone for Secret {
    // By hand: secrecy 0.10 lets only its `CloneableSecret` types clone,
    // and String is not one; each copy is zeroed on its own drop.
    fn clone(&self) -> Self {
        Secret::new(self.expose())
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(Secret(***))");
        assert_eq!(s.expose(), "hunter2");
    }
}
