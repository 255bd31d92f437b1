//! Quotas per principal: what one workload may hold of this instance at
//! once, so that one principal looping on `database/creds` (or on
//! connections) cannot take the global limits from everybody.
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
//!   rate it would be a tenth of).
//!
//! A session or lease holds a [`Slot`] and gives it back when it ends. The
//! map has an entry only for a principal holding something or minting in
//! the last minute, and at most `max_principals` of them: when full, the
//! entries whose minute is over are dropped, and a principal that still
//! finds no room is refused (so memory stays bounded even under many
//! identities).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Config;

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
}

impl QuotaKind {
    /// The metric label and audit word.
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaKind::Sessions => "sessions",
            QuotaKind::CredentialLeases => "credential_leases",
            QuotaKind::MintRate => "mints_per_minute",
            QuotaKind::Principals => "principals",
        }
    }

    pub const ALL: [QuotaKind; 4] = [
        QuotaKind::Sessions,
        QuotaKind::CredentialLeases,
        QuotaKind::MintRate,
        QuotaKind::Principals,
    ];
}

/// A refusal: which quota, and its limit. The `Display` text is what the
/// client may be told (it names no other principal).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("quota exceeded: at most {limit} {what} per identity")]
pub struct QuotaExceeded {
    pub kind: QuotaKind,
    pub limit: usize,
    what: &'static str,
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

#[derive(Debug, Default)]
struct Held {
    sessions: usize,
    credential_leases: usize,
    /// Start of the current minute, and mints in it.
    window: Option<(Instant, usize)>,
}

impl Held {
    fn idle(&self, now: Instant) -> bool {
        self.sessions == 0
            && self.credential_leases == 0
            && self
                .window
                .is_none_or(|(start, _)| now.duration_since(start) >= WINDOW)
    }
}

type Principal = (String, String);

/// Every principal's holdings on this instance.
#[derive(Debug)]
pub struct Quotas {
    limits: Limits,
    held: Mutex<HashMap<Principal, Held>>,
}

/// A session's or credential lease's place in its principal's quota;
/// given back when dropped.
#[derive(Debug)]
pub struct Slot {
    quotas: Arc<Quotas>,
    principal: Principal,
    kind: QuotaKind,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.quotas.lock();
        if let Some(h) = held.get_mut(&self.principal) {
            match self.kind {
                QuotaKind::Sessions => h.sessions = h.sessions.saturating_sub(1),
                QuotaKind::CredentialLeases => {
                    h.credential_leases = h.credential_leases.saturating_sub(1)
                }
                QuotaKind::MintRate | QuotaKind::Principals => {}
            }
            if h.idle(Instant::now()) {
                held.remove(&self.principal);
            }
        }
    }
}

impl Quotas {
    pub fn new(limits: Limits) -> Arc<Quotas> {
        Arc::new(Quotas {
            limits,
            held: Mutex::new(HashMap::new()),
        })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Principal, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One more `kind` (sessions or credential leases) for the principal
    /// `(issuer, identity)`, and one more mint in its minute; or which
    /// quota is full. Nothing is counted when refused.
    pub fn take(
        self: &Arc<Self>,
        kind: QuotaKind,
        issuer: &str,
        identity: &str,
    ) -> Result<Slot, QuotaExceeded> {
        let now = Instant::now();
        let principal = (issuer.to_owned(), identity.to_owned());
        let mut held = self.lock();
        if !held.contains_key(&principal) && held.len() >= self.limits.max_principals {
            held.retain(|_, h| !h.idle(now));
            if held.len() >= self.limits.max_principals {
                return Err(self.exceeded(QuotaKind::Principals));
            }
        }
        let h = held.entry(principal.clone()).or_default();
        let (count, limit) = match kind {
            QuotaKind::Sessions => (&mut h.sessions, self.limits.sessions),
            _ => (&mut h.credential_leases, self.limits.credential_leases),
        };
        if *count >= limit {
            let refused = self.exceeded(kind);
            if h.idle(now) {
                held.remove(&principal);
            }
            return Err(refused);
        }
        let rate = self.limits.mints_per_minute;
        if rate > 0 {
            let (start, mints) = match h.window {
                Some((start, n)) if now.duration_since(start) < WINDOW => (start, n),
                _ => (now, 0),
            };
            if mints >= rate {
                return Err(self.exceeded(QuotaKind::MintRate));
            }
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
        Ok(Slot {
            quotas: Arc::clone(self),
            principal,
            kind,
        })
    }

    fn exceeded(&self, kind: QuotaKind) -> QuotaExceeded {
        crate::observe::metrics::quota_refused(kind.as_str());
        let (limit, what) = match kind {
            QuotaKind::Sessions => (self.limits.sessions, "concurrent sessions"),
            QuotaKind::CredentialLeases => {
                (self.limits.credential_leases, "live credential leases")
            }
            QuotaKind::MintRate => (self.limits.mints_per_minute, "new leases a minute"),
            QuotaKind::Principals => (self.limits.max_principals, "tracked identities"),
        };
        QuotaExceeded { kind, limit, what }
    }

    /// Principals tracked now.
    pub fn tracked(&self) -> usize {
        self.lock().len()
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

    #[test]
    fn a_principal_holds_at_most_its_quota_and_others_are_not_slowed() {
        let q = quotas(2, 1, 0, 100);
        let a1 = q.take(QuotaKind::Sessions, "corp", "alice").unwrap();
        let _a2 = q.take(QuotaKind::Sessions, "corp", "alice").unwrap();
        let refused = q.take(QuotaKind::Sessions, "corp", "alice").unwrap_err();
        assert_eq!((refused.kind, refused.limit), (QuotaKind::Sessions, 2));
        // Another issuer's alice is another principal.
        let _k = q.take(QuotaKind::Sessions, "k8s", "alice").unwrap();
        // Sessions and credential leases are counted apart.
        let _c = q
            .take(QuotaKind::CredentialLeases, "corp", "alice")
            .unwrap();
        assert!(q
            .take(QuotaKind::CredentialLeases, "corp", "alice")
            .is_err());
        drop(a1);
        assert!(q.take(QuotaKind::Sessions, "corp", "alice").is_ok());
        assert_eq!(
            refused.to_string(),
            "quota exceeded: at most 2 concurrent sessions per identity"
        );
    }

    #[test]
    fn the_mint_rate_counts_a_minute_and_the_map_stays_bounded() {
        let q = quotas(100, 100, 3, 2);
        for _ in 0..3 {
            drop(q.take(QuotaKind::Sessions, "corp", "alice").unwrap());
        }
        let refused = q.take(QuotaKind::Sessions, "corp", "alice").unwrap_err();
        assert_eq!(refused.kind, QuotaKind::MintRate);
        // alice's minute keeps her entry; bob takes the second; carol
        // finds no room while both are active.
        let _b = q.take(QuotaKind::Sessions, "corp", "bob").unwrap();
        let refused = q.take(QuotaKind::Sessions, "corp", "carol").unwrap_err();
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
        let s = q.take(QuotaKind::Sessions, "corp", "alice").unwrap();
        assert_eq!(q.tracked(), 1);
        drop(s);
        assert_eq!(q.tracked(), 0);
        let _ = q.take(QuotaKind::Sessions, "corp", "bob").map(drop);
        assert_eq!(q.tracked(), 0);
    }
}
