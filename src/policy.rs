//! Who may use which template, for which database.
//!
//! For now a template is open to every valid identity and the decision is
//! about the database alone; group-based rules slot in here, and the session
//! does not change when they do.

use std::time::Duration;

use crate::config::{Config, RoleTemplate};
use crate::error::ClientError;
use crate::identity::Identity;

/// A session the policy allows.
#[derive(Debug)]
pub struct Grant<'a> {
    pub template_name: &'a str,
    pub template: &'a RoleTemplate,
    /// The lease TTL the session starts with.
    pub ttl: Duration,
}

/// Decides whether `identity` may open a session of `template` on `database`.
pub fn authorize<'a>(
    config: &'a Config,
    _identity: &Identity,
    template: &str,
    database: &str,
) -> Result<Grant<'a>, ClientError> {
    let (template_name, t) = config
        .roles
        .get_key_value(template)
        .ok_or_else(|| ClientError::UnknownTemplate(template.to_owned()))?;
    if !t.databases.iter().any(|d| d == database) {
        return Err(ClientError::DatabaseNotAllowed {
            database: database.to_owned(),
            template: template_name.clone(),
        });
    }
    Ok(Grant {
        template_name,
        template: t,
        ttl: t.default_ttl,
    })
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn config() -> Config {
        crate::config::tests::example()
    }

    fn alice() -> Identity {
        Identity {
            subject: "alice".into(),
            groups: vec![],
            expires_at: SystemTime::now(),
        }
    }

    #[test]
    fn allows_listed_databases_with_the_default_ttl() {
        let c = config();
        let g = authorize(&c, &alice(), "readonly", "appdb").unwrap();
        assert_eq!(g.template_name, "readonly");
        assert_eq!(g.ttl, Duration::from_secs(3600));
    }

    #[test]
    fn refuses_unknown_templates_and_other_databases() {
        let c = config();
        let e = authorize(&c, &alice(), "admin", "appdb").unwrap_err();
        assert_eq!(e.sqlstate(), "28000");
        let e = authorize(&c, &alice(), "readonly", "postgres").unwrap_err();
        assert_eq!(e.sqlstate(), "3D000");
    }
}
