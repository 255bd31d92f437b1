//! Quotas per principal and per template: what one workload may hold of
//! this instance at once, so that one principal looping on
//! `database/creds` (or on connections) cannot take the global limits from
//! everybody, and a powerful template cannot be held many times over.
//!
//! A principal is (issuer name, identity), as everywhere. Per instance, in
//! memory, like the global limits they divide:
//!
//! - concurrent sessions (`[quotas] max_sessions_per_principal`, default a
//!   tenth of `proxy.max_connections`);
//! - live credential leases (`max_credential_leases_per_principal`, default
//!   a tenth of `vault.max_credential_leases`);
//! - mints a minute, sessions and credentials together
//!   (`mints_per_minute_per_principal`, default 0: off; there is no global
//!   rate it would be a tenth of);
//! - leases of one template, sessions and credential leases together:
//!   `[roles.NAME] max_leases_per_principal` for each principal and
//!   `max_leases` for everybody (Vault's lease-count quota on
//!   `database/creds/NAME`); no cap when absent.
//!
//! A session or lease holds a [`Slot`] and gives it back when it ends,
//! however it ends: the slot is dropped with the session, with a credential
//! lease's watch (expiry, revocation), or with the error of a mint that
//! failed. The map has an entry only for a principal holding something or
//! minting in the last minute, and at most `max_principals` of them: when
//! full, the entries whose minute is over are dropped, and a principal that
//! still finds no room is refused (so memory stays bounded even under many
//! identities). Template counts exist only for capped templates and only
//! while nonzero, so they are bounded by the templates there are.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{Config, RoleTemplate};

/// The length of the mint-rate window.
const WINDOW: Duration = Duration::from_secs(60);

/// What a quota counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    Sessions,
    CredentialLeases,
    MintRate,
    /// No room to track one more principal.
    Principals,
    /// One principal's leases of a template (`max_leases_per_principal`).
    TemplateLeasesPerPrincipal,
    /// Everybody's leases of a template (`max_leases`).
    TemplateLeases,
}

impl QuotaKind {
    /// The metric label and audit word.
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaKind::Sessions => "sessions",
            QuotaKind::CredentialLeases => "credential_leases",
            QuotaKind::MintRate => "mints_per_minute",
            QuotaKind::Principals => "principals",
            QuotaKind::TemplateLeasesPerPrincipal => "template_leases_per_principal",
            QuotaKind::TemplateLeases => "template_leases",
        }
    }

    pub const ALL: [QuotaKind; 6] = [
        QuotaKind::Sessions,
        QuotaKind::CredentialLeases,
        QuotaKind::MintRate,
        QuotaKind::Principals,
        QuotaKind::TemplateLeasesPerPrincipal,
        QuotaKind::TemplateLeases,
    ];
}

/// A refusal: which quota, and its limit. The `Display` text is what the
/// client may be told: it names no other principal, and no template but
/// the one the client asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("quota exceeded: at most {limit} {what}")]
pub struct QuotaExceeded {
    pub kind: QuotaKind,
    pub limit: usize,
    what: String,
}

/// The limits, resolved from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub sessions: usize,
    pub credential_leases: usize,
    /// 0: no rate limit.
    pub mints_per_minute: usize,
    pub max_principals: usize,
}

impl Limits {
    /// `[quotas]`, with the defaults derived from the global limits.
    pub fn from_config(config: &Config) -> Limits {
        let q = &config.quotas;
        let tenth = |global: usize| (global / 10).max(1);
        Limits {
            sessions: q
                .max_sessions_per_principal
                .unwrap_or_else(|| tenth(config.proxy.max_connections)),
            credential_leases: q
                .max_credential_leases_per_principal
                .unwrap_or_else(|| tenth(config.vault.max_credential_leases)),
            mints_per_minute: q.mints_per_minute_per_principal,
            max_principals: q.max_principals,
        }
    }
}

/// The template a lease is of, with its own caps. Read from the template
/// at each take, so a reload (SIGHUP, a template written through the API)
/// changes the caps of the next lease; leases already held stay counted.
#[derive(Debug, Clone, Copy)]
pub struct Template<'a> {
    pub name: &'a str,
    /// `max_leases_per_principal`.
    pub per_principal: Option<usize>,
    /// `max_leases`.
    pub total: Option<usize>,
}

impl<'a> Template<'a> {
    pub fn of(name: &'a str, template: &RoleTemplate) -> Template<'a> {
        Template {
            name,
            per_principal: template.max_leases_per_principal,
            total: template.max_leases,
        }
    }

    /// Whether this template's leases are counted at all.
    fn capped(&self) -> bool {
        self.per_principal.is_some() || self.total.is_some()
    }
}

#[derive(Debug, Default)]
struct Held {
    sessions: usize,
    credential_leases: usize,
    /// Start of the current minute, and mints in it.
    window: Option<(Instant, usize)>,
    /// Leases of each capped template; an entry only while nonzero.
    templates: HashMap<String, usize>,
}

impl Held {
    fn idle(&self, now: Instant) -> bool {
        self.sessions == 0
            && self.credential_leases == 0
            && self.templates.is_empty()
            && self
                .window
                .is_none_or(|(start, _)| now.duration_since(start) >= WINDOW)
    }
}

type Principal = (String, String);

/// What the lock guards: every principal's holdings, and every capped
/// template's leases (an entry only while nonzero).
#[derive(Debug, Default)]
struct Table {
    principals: HashMap<Principal, Held>,
    templates: HashMap<String, usize>,
}

/// Every principal's holdings on this instance.
#[derive(Debug)]
pub struct Quotas {
    limits: Limits,
    table: Mutex<Table>,
}

/// A session's or credential lease's place in its principal's quota (and
/// in its template's, when capped); given back when dropped.
#[derive(Debug)]
pub struct Slot {
    quotas: Arc<Quotas>,
    principal: Principal,
    kind: QuotaKind,
    /// The capped template this lease counts in.
    template: Option<String>,
}

/// One less of `key` in `counts`, and no entry at 0.
fn release(counts: &mut HashMap<String, usize>, key: &str) {
    if let Some(n) = counts.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(key);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut table = self.quotas.lock();
        if let Some(template) = &self.template {
            release(&mut table.templates, template);
        }
        if let Some(h) = table.principals.get_mut(&self.principal) {
            match self.kind {
                QuotaKind::Sessions => h.sessions = h.sessions.saturating_sub(1),
                _ => h.credential_leases = h.credential_leases.saturating_sub(1),
            }
            if let Some(template) = &self.template {
                release(&mut h.templates, template);
            }
            if h.idle(Instant::now()) {
                table.principals.remove(&self.principal);
            }
        }
    }
}

impl Quotas {
    pub fn new(limits: Limits) -> Arc<Quotas> {
        Arc::new(Quotas {
            limits,
            table: Mutex::new(Table::default()),
        })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One more `kind` (sessions or credential leases) of `template` for
    /// the principal `(issuer, identity)`, and one more mint in its
    /// minute; or which quota is full. Nothing is counted when refused.
    pub fn take(
        self: &Arc<Self>,
        kind: QuotaKind,
        issuer: &str,
        identity: &str,
        template: Template<'_>,
    ) -> Result<Slot, QuotaExceeded> {
        let now = Instant::now();
        let principal = (issuer.to_owned(), identity.to_owned());
        let mut table = self.lock();
        let Table {
            principals,
            templates,
        } = &mut *table;
        if !principals.contains_key(&principal) && principals.len() >= self.limits.max_principals {
            principals.retain(|_, h| !h.idle(now));
            if principals.len() >= self.limits.max_principals {
                let limit = self.limits.max_principals;
                return Err(self.exceeded(QuotaKind::Principals, limit, template.name));
            }
        }
        let h = principals.entry(principal.clone()).or_default();
        let refused = self.check(h, kind, template, templates, now);
        if let Some((refused, limit)) = refused {
            if h.idle(now) {
                principals.remove(&principal);
            }
            return Err(self.exceeded(refused, limit, template.name));
        }
        if self.limits.mints_per_minute > 0 {
            let mints = h.window.map_or(0, |(_, n)| n);
            let start = h.window.map_or(now, |(start, _)| start);
            h.window = Some((start, mints + 1));
        }
        let kind = match kind {
            QuotaKind::Sessions => {
                h.sessions += 1;
                QuotaKind::Sessions
            }
            _ => {
                h.credential_leases += 1;
                QuotaKind::CredentialLeases
            }
        };
        let template = template.capped().then(|| {
            *h.templates.entry(template.name.to_owned()).or_default() += 1;
            *templates.entry(template.name.to_owned()).or_default() += 1;
            template.name.to_owned()
        });
        Ok(Slot {
            quotas: Arc::clone(self),
            principal,
            kind,
            template,
        })
    }

    /// The first full quota one more lease would pass, with its limit, if
    /// any. Starts a new minute in `h` when its last one is over.
    fn check(
        &self,
        h: &mut Held,
        kind: QuotaKind,
        template: Template<'_>,
        templates: &HashMap<String, usize>,
        now: Instant,
    ) -> Option<(QuotaKind, usize)> {
        let (count, limit) = match kind {
            QuotaKind::Sessions => (h.sessions, self.limits.sessions),
            _ => (h.credential_leases, self.limits.credential_leases),
        };
        if count >= limit {
            return Some((kind, limit));
        }
        let mine = h.templates.get(template.name).copied().unwrap_or(0);
        if let Some(cap) = template.per_principal.filter(|&cap| mine >= cap) {
            return Some((QuotaKind::TemplateLeasesPerPrincipal, cap));
        }
        let all = templates.get(template.name).copied().unwrap_or(0);
        if let Some(cap) = template.total.filter(|&cap| all >= cap) {
            return Some((QuotaKind::TemplateLeases, cap));
        }
        let rate = self.limits.mints_per_minute;
        if rate > 0 {
            match h.window {
                Some((start, n)) if now.duration_since(start) < WINDOW => {
                    if n >= rate {
                        return Some((QuotaKind::MintRate, rate));
                    }
                }
                _ => h.window = Some((now, 0)),
            }
        }
        None
    }

    /// The refusal of `kind` at `limit`, counted in the metric. The
    /// template is named only by the caps that are its own.
    fn exceeded(&self, kind: QuotaKind, limit: usize, template: &str) -> QuotaExceeded {
        crate::observe::metrics::quota_refused(kind.as_str());
        let what = match kind {
            QuotaKind::Sessions => "concurrent sessions per identity".to_owned(),
            QuotaKind::CredentialLeases => "live credential leases per identity".to_owned(),
            QuotaKind::MintRate => "new leases a minute per identity".to_owned(),
            QuotaKind::Principals => "tracked identities".to_owned(),
            QuotaKind::TemplateLeasesPerPrincipal => {
                format!("leases of template {template} per identity")
            }
            QuotaKind::TemplateLeases => format!("leases of template {template} at once"),
        };
        QuotaExceeded { kind, limit, what }
    }

    /// Principals tracked now.
    pub fn tracked(&self) -> usize {
        self.lock().principals.len()
    }
}

/// The audit line of a refusal.
pub fn refusal_event(
    refused: &QuotaExceeded,
    identity: &crate::auth::identity::Identity,
    template: &str,
    client_addr: Option<std::net::SocketAddr>,
) -> crate::observe::audit::Event {
    crate::observe::audit::Event::QuotaRefused {
        issuer: identity.issuer.clone(),
        identity: identity.subject.clone(),
        quota: refused.kind.as_str().to_owned(),
        limit: refused.limit,
        template: template.to_owned(),
        client_addr: client_addr.map(|a| a.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas(sessions: usize, creds: usize, rate: usize, principals: usize) -> Arc<Quotas> {
        Quotas::new(Limits {
            sessions,
            credential_leases: creds,
            mints_per_minute: rate,
            max_principals: principals,
        })
    }

    /// A template without caps of its own.
    const UNCAPPED: Template<'static> = Template {
        name: "readonly",
        per_principal: None,
        total: None,
    };

    #[test]
    fn a_principal_holds_at_most_its_quota_and_others_are_not_slowed() {
        let q = quotas(2, 1, 0, 100);
        let a1 = q
            .take(QuotaKind::Sessions, "corp", "alice", UNCAPPED)
            .unwrap();
        let _a2 = q
            .take(QuotaKind::Sessions, "corp", "alice", UNCAPPED)
            .unwrap();
        let refused = q
            .take(QuotaKind::Sessions, "corp", "alice", UNCAPPED)
            .unwrap_err();
        assert_eq!((refused.kind, refused.limit), (QuotaKind::Sessions, 2));
        // Another issuer's alice is another principal.
        let _k = q
            .take(QuotaKind::Sessions, "k8s", "alice", UNCAPPED)
            .unwrap();
        // Sessions and credential leases are counted apart.
        let _c = q
            .take(QuotaKind::CredentialLeases, "corp", "alice", UNCAPPED)
            .unwrap();
        assert!(q
            .take(QuotaKind::CredentialLeases, "corp", "alice", UNCAPPED)
            .is_err());
        drop(a1);
        assert!(q
            .take(QuotaKind::Sessions, "corp", "alice", UNCAPPED)
            .is_ok());
        assert_eq!(
            refused.to_string(),
            "quota exceeded: at most 2 concurrent sessions per identity"
        );
    }

    #[test]
    fn the_mint_rate_counts_a_minute_and_the_map_stays_bounded() {
        let q = quotas(100, 100, 3, 2);
        for _ in 0..3 {
            drop(
                q.take(QuotaKind::Sessions, "corp", "alice", UNCAPPED)
                    .unwrap(),
            );
        }
        let refused = q
            .take(QuotaKind::Sessions, "corp", "alice", UNCAPPED)
            .unwrap_err();
        assert_eq!(refused.kind, QuotaKind::MintRate);
        // alice's minute keeps her entry; bob takes the second; carol
        // finds no room while both are active.
        let _b = q
            .take(QuotaKind::Sessions, "corp", "bob", UNCAPPED)
            .unwrap();
        let refused = q
            .take(QuotaKind::Sessions, "corp", "carol", UNCAPPED)
            .unwrap_err();
        assert_eq!(refused.kind, QuotaKind::Principals);
        assert_eq!(q.tracked(), 2);
    }

    #[test]
    fn the_defaults_are_a_tenth_of_every_global_limit() {
        let mut config = crate::config::tests::example();
        config.proxy.max_connections = 1000;
        config.vault.max_credential_leases = 5000;
        let limits = Limits::from_config(&config);
        assert_eq!(limits.sessions, 100);
        assert_eq!(limits.credential_leases, 500);
        assert_eq!(limits.mints_per_minute, 0);
        config.proxy.max_connections = 5;
        assert_eq!(Limits::from_config(&config).sessions, 1);
    }

    #[test]
    fn an_entry_goes_when_its_principal_holds_nothing() {
        let q = quotas(1, 1, 0, 10);
        let s = q
            .take(QuotaKind::Sessions, "corp", "alice", UNCAPPED)
            .unwrap();
        assert_eq!(q.tracked(), 1);
        drop(s);
        assert_eq!(q.tracked(), 0);
        let _ = q
            .take(QuotaKind::Sessions, "corp", "bob", UNCAPPED)
            .map(drop);
        assert_eq!(q.tracked(), 0);
    }

    fn admin(per_principal: usize, total: usize) -> Template<'static> {
        Template {
            name: "admin",
            per_principal: Some(per_principal),
            total: Some(total),
        }
    }

    #[test]
    fn a_template_caps_its_leases_per_principal_and_in_total() {
        let q = quotas(100, 100, 0, 100);
        let (s, c) = (QuotaKind::Sessions, QuotaKind::CredentialLeases);
        // Sessions and credential leases of a template count together.
        let a1 = q.take(s, "corp", "alice", admin(2, 3)).unwrap();
        let _a2 = q.take(c, "corp", "alice", admin(2, 3)).unwrap();
        let refused = q.take(s, "corp", "alice", admin(2, 3)).unwrap_err();
        assert_eq!(
            (refused.kind, refused.limit),
            (QuotaKind::TemplateLeasesPerPrincipal, 2)
        );
        assert_eq!(
            refused.to_string(),
            "quota exceeded: at most 2 leases of template admin per identity"
        );
        // Other templates are not touched; another principal takes the
        // third lease of the template, and then nobody gets a fourth.
        let _r = q.take(s, "corp", "alice", UNCAPPED).unwrap();
        let _b = q.take(s, "corp", "bob", admin(2, 3)).unwrap();
        let refused = q.take(c, "corp", "carol", admin(2, 3)).unwrap_err();
        assert_eq!(
            (refused.kind, refused.limit),
            (QuotaKind::TemplateLeases, 3)
        );
        assert_eq!(
            refused.to_string(),
            "quota exceeded: at most 3 leases of template admin at once"
        );
        // Refusals counted nothing: carol holds no entry, and a released
        // slot is usable again, by its holder or by anyone.
        assert_eq!(q.tracked(), 2);
        drop(a1);
        let a3 = q.take(s, "corp", "alice", admin(2, 3)).unwrap();
        drop(a3);
        assert!(q.take(c, "corp", "carol", admin(2, 3)).is_ok());
    }

    #[test]
    fn template_counts_go_when_their_leases_end() {
        let q = quotas(100, 100, 0, 100);
        let slots: Vec<Slot> = ["alice", "bob"]
            .iter()
            .map(|who| {
                q.take(QuotaKind::Sessions, "corp", who, admin(1, 5))
                    .unwrap()
            })
            .collect();
        assert_eq!(q.lock().templates.get("admin"), Some(&2));
        drop(slots);
        let table = q.lock();
        assert!(table.templates.is_empty(), "{:?}", table.templates);
        assert!(table.principals.is_empty());
        drop(table);
        // Uncapped templates are never counted by name.
        let _s = q
            .take(QuotaKind::Sessions, "corp", "alice", UNCAPPED)
            .unwrap();
        assert!(q.lock().templates.is_empty());
        let alice = ("corp".to_owned(), "alice".to_owned());
        assert!(q.lock().principals[&alice].templates.is_empty());
    }

    #[test]
    fn template_caps_come_from_the_template_and_zero_is_refused_at_load() {
        let mut config = crate::config::tests::example();
        let (name, t) = config.roles.iter_mut().next().unwrap();
        let name = name.clone();
        assert!(!Template::of(&name, t).capped());
        t.max_leases_per_principal = Some(2);
        t.max_leases = Some(0);
        let caps = Template::of(&name, t);
        assert_eq!((caps.per_principal, caps.total), (Some(2), Some(0)));
        let e = config.validate().unwrap_err().to_string();
        assert!(
            e.contains("max_leases and max_leases_per_principal must be at least 1"),
            "{e}"
        );
        assert!(e.contains(&format!("roles.{name}")), "{e}");
    }
}
