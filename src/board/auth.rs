//! Access: who is asking, what their role lets them do, and CSRF protection of changes.
//!
//! The board does not authenticate anyone itself. The organisation's reverse proxy does
//! (SSO, client certificates, ...) and passes the user name in `[board] user_header`, as
//! Grafana's auth proxy and karma expect. So the board must only be reachable through that
//! proxy (it listens on loopback by default), and the proxy must overwrite the header a
//! client sends. No header: 401. A name not in `[board.users]`: 403. Both are audited.
//!
//! Every change (a POST) carries a per-user random token that only the board's own pages
//! hold; a request from another site's page (the proxy's session cookie rides along with it)
//! has no token and is refused. `Sec-Fetch-Site: cross-site`, sent by browsers, is refused too.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dashmap::DashMap;

use super::audit::Action;
use super::config::Role;
use super::http::{now_ms, App};
use super::pages;

/// The user of a request, put in its extensions by [`require_user`].
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub role: Role,
}

/// Per-user CSRF tokens: random, made on a user's first page, kept for the process's life.
#[derive(Default)]
pub struct Csrf(DashMap<String, String>);

impl Csrf {
    /// The token of `user`'s forms.
    pub fn token(&self, user: &str) -> String {
        self.0
            .entry(user.to_string())
            .or_insert_with(|| {
                use rand::RngCore;
                let mut b = [0u8; 16];
                // ThreadRng is a CSPRNG seeded from the OS.
                rand::thread_rng().fill_bytes(&mut b);
                b.iter().map(|x| format!("{x:02x}")).collect()
            })
            .clone()
    }

    /// Whether `given` is `user`'s token, compared in constant time.
    pub fn check(&self, user: &str, given: &str) -> bool {
        let Some(want) = self.0.get(user) else {
            return false;
        };
        let (a, b) = (want.as_bytes(), given.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// Whether the browser says this request comes from another site's page.
pub fn cross_site(headers: &HeaderMap) -> bool {
    headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
}

/// Middleware: the user header must name a configured user; their [`User`] goes into the
/// request for the handlers.
pub async fn require_user(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let name = req
        .headers()
        .get(app.cfg.user_header.as_str())
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string);
    let Some(name) = name else {
        app.metrics.refused.with_label_values(&["no_user"]).inc();
        if let Err(e) = app
            .audit
            .log(now_ms(), None, Action::RefusedNoUser, &path, None, None)
        {
            return pages::failure(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
        }
        return pages::failure(
            StatusCode::UNAUTHORIZED,
            "No user: the board is reached through the organisation's sign-in proxy.",
        );
    };
    let Some(role) = app.cfg.users.get(&name).copied() else {
        app.metrics
            .refused
            .with_label_values(&["unknown_user"])
            .inc();
        if let Err(e) = app.audit.log(
            now_ms(),
            Some(&name),
            Action::RefusedUnknownUser,
            &path,
            None,
            None,
        ) {
            return pages::failure(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
        }
        return pages::failure(
            StatusCode::FORBIDDEN,
            "You are signed in but not a user of this board: ask its administrator.",
        );
    };
    req.extensions_mut().insert(User { name, role });
    next.run(req).await.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_per_user_and_checked_exactly() {
        let c = Csrf::default();
        let a = c.token("alice");
        assert_eq!(a.len(), 32);
        assert_eq!(c.token("alice"), a);
        assert_ne!(c.token("bob"), a);
        assert!(c.check("alice", &a));
        assert!(!c.check("bob", &a));
        assert!(!c.check("alice", ""));
        assert!(!c.check("carol", &a), "no token issued");
    }

    #[test]
    fn roles_are_ordered() {
        assert!(!Role::Viewer.may_act());
        assert!(Role::Analyst.may_act());
        assert!(Role::Admin.may_act());
    }

    #[test]
    fn cross_site_requests_are_recognised() {
        let mut h = HeaderMap::new();
        assert!(!cross_site(&h));
        h.insert("sec-fetch-site", "same-origin".parse().unwrap());
        assert!(!cross_site(&h));
        h.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(cross_site(&h));
    }
}
