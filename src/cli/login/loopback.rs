//! The loopback redirect of the code flow (RFC 8252 §7.3): a listener on
//! 127.0.0.1 with a port the kernel picks, serving `/callback` until the
//! one redirect that carries our `state` arrives, or the wait ends.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::Html;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use tokio::sync::mpsc;

/// What the provider's redirect brought.
#[derive(Deserialize)]
pub struct Redirect {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

impl std::fmt::Debug for Redirect {
    // By hand: the code (with the PKCE verifier) is worth tokens.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redirect")
            .field("has_code", &self.code.is_some())
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// The listener, bound; [`Loopback::wait`] serves it.
pub struct Loopback {
    listener: tokio::net::TcpListener,
}

impl Loopback {
    pub async fn bind() -> std::io::Result<Loopback> {
        Ok(Loopback {
            listener: tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?,
        })
    }

    /// The `redirect_uri` to register the request with.
    pub fn redirect_uri(&self) -> std::io::Result<String> {
        Ok(format!(
            "http://127.0.0.1:{}/callback",
            self.listener.local_addr()?.port()
        ))
    }

    /// Serves until a redirect with `state` arrives (others are answered
    /// and ignored: a stray or forged request cannot end the login), or
    /// `timeout` passes.
    pub async fn wait(self, state: String, timeout: Duration) -> Option<Redirect> {
        let (tx, mut rx) = mpsc::channel::<Redirect>(1);
        let app = Router::new()
            .route("/callback", get(callback))
            .with_state((tx, state));
        let stop = tokio_util::sync::CancellationToken::new();
        let server =
            axum::serve(self.listener, app).with_graceful_shutdown(stop.clone().cancelled_owned());
        let task = tokio::spawn(async move { server.await });
        let got = tokio::time::timeout(timeout, rx.recv())
            .await
            .ok()
            .flatten();
        stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        got
    }
}

async fn callback(
    State((tx, state)): State<(mpsc::Sender<Redirect>, String)>,
    Query(r): Query<Redirect>,
) -> Html<&'static str> {
    if r.state.as_deref() != Some(state.as_str()) {
        return Html("<p>This sign-in link is not the one rolemint is waiting for.</p>");
    }
    let _ = tx.try_send(r);
    Html("<p>Signed in to rolemint. You can close this window.</p>")
}
