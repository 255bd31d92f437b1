//! How a request presenting a Vault token becomes a caller: [`resolve`],
//! a layer around every admin route, reads the token from the store once
//! per request (spending a use when counted) and holds it in
//! [`LiveTokens`] while the request runs, where the synchronous
//! `VaultDoor::principal` finds it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::super::{Principal, VaultDoor};
use super::store_error;
use crate::auth::token::{is_token, TokenHash, MAX_TOKEN_TTL};
use crate::control::auth::presented_token;
use crate::control::AdminState;
use crate::store::tokens::StoredToken;

/// Stored tokens of the requests running now, by hash.
#[derive(Default)]
pub struct LiveTokens {
    map: Mutex<HashMap<TokenHash, (Arc<StoredToken>, usize)>>,
}

impl std::fmt::Debug for LiveTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveTokens(..)")
    }
}

impl LiveTokens {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TokenHash, (Arc<StoredToken>, usize)>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The token `hash` as read for a request running now.
    pub fn get(&self, hash: &TokenHash) -> Option<Arc<StoredToken>> {
        self.lock().get(hash).map(|(t, _)| Arc::clone(t))
    }

    pub(super) fn hold(&self, token: StoredToken) {
        let mut map = self.lock();
        let entry = map
            .entry(token.hash)
            .or_insert((Arc::new(token.clone()), 0));
        // The newest read wins (uses left, a renewed expiry).
        entry.0 = Arc::new(token);
        entry.1 += 1;
    }

    pub(super) fn release(&self, hash: &TokenHash) {
        let mut map = self.lock();
        if let Some((_, n)) = map.get_mut(hash) {
            *n -= 1;
            if *n == 0 {
                map.remove(hash);
            }
        }
    }
}

/// Drops a request's hold on its token, also when the request's future is
/// dropped (a timeout).
struct Held {
    door: Arc<VaultDoor>,
    hash: TokenHash,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.door.live.release(&self.hash);
    }
}

/// The layer that reads a presented Vault token from the store for the
/// request (see the module doc). Unknown, expired and used-up tokens are
/// left unresolved: the route then answers 403 as for any wrong token.
pub async fn resolve(
    State(state): State<Arc<AdminState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(door) = state.vault.clone() else {
        return next.run(request).await;
    };
    let hash = match presented_token(request.headers()) {
        Some(t) if is_token(t) => TokenHash::of(t),
        _ => return next.run(request).await,
    };
    match door.tokens.use_once(&hash).await {
        Ok(Some(token)) => {
            door.live.hold(token);
            let _held = Held {
                door: Arc::clone(&door),
                hash,
            };
            next.run(request).await
        }
        Ok(None) => next.run(request).await,
        Err(e) => store_error(e).into_response(),
    }
}

/// The principal of a stored token, as a caller.
pub fn principal_of(token: &Arc<StoredToken>) -> Principal {
    Principal {
        identity: crate::auth::identity::Identity {
            subject: token.subject.clone(),
            groups: token.groups.clone(),
            expires_at: token
                .expires_at
                .unwrap_or_else(|| SystemTime::now() + MAX_TOKEN_TTL),
            issuer: token.issuer.clone(),
        },
        policies: token.policies.clone(),
        token: Some(Arc::clone(token)),
    }
}
