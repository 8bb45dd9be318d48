//! A small Docker-Hub-like token server: `GET /token?service=…&scope=…` with Basic auth,
//! answering ES256 JWTs that distribution 2.8 verifies through the `x5c` chain.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::Context as _;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

use crate::util;

/// `service` the registry expects in the token's `aud` claim.
pub const SERVICE: &str = "test-registry";
/// `iss` the registry trusts.
pub const ISSUER: &str = "test-issuer";
/// Lifetime of issued tokens, in seconds.
pub const EXPIRES_IN: u64 = 300;

/// One request the token server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// Every requested scope (each `scope` parameter, split on spaces), as sent.
    pub scopes: Vec<String>,
    /// `service` parameter, if any.
    pub service: Option<String>,
    /// Whether the Basic credentials were right (a token was issued).
    pub authorized: bool,
    /// `User-Agent` header, if any (our own client sends `copycat-testkit`).
    pub user_agent: Option<String>,
}

struct Shared {
    user: String,
    pass: String,
    key: EcdsaKeyPair,
    x5c: String,
    log: Mutex<Vec<TokenRequest>>,
    /// Every token issued, oldest first.
    issued: Mutex<Vec<String>>,
}

/// The running token server; dropping it stops it.
pub(crate) struct TokenServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TokenServer {
    /// Starts the server on `127.0.0.1:<free port>` on its own thread and runtime.
    pub(crate) fn start(user: &str, pass: &str) -> anyhow::Result<TokenServer> {
        let certs = crate::certs::certs()?;
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &certs.signing_pkcs8,
            &ring::rand::SystemRandom::new(),
        )
        .map_err(|e| anyhow::anyhow!("loading token signing key: {e}"))?;
        let shared = Arc::new(Shared {
            user: user.to_owned(),
            pass: pass.to_owned(),
            key,
            x5c: STANDARD.encode(&certs.signing_cert_der),
            log: Mutex::new(Vec::new()),
            issued: Mutex::new(Vec::new()),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding token server")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let state = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("token-server-{}", addr.port()))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        eprintln!("token server runtime: {e}");
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("token server listener: {e}");
                            return;
                        }
                    };
                    let app = axum::Router::new()
                        .route("/token", axum::routing::get(token_handler))
                        .with_state(state);
                    tokio::select! {
                        r = axum::serve(listener, app) => {
                            if let Err(e) = r { eprintln!("token server: {e}"); }
                        }
                        _ = stop_rx => {}
                    }
                });
                // Dropping the runtime here aborts any connection still open.
            })
            .context("spawning token server thread")?;
        Ok(TokenServer {
            addr,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT/token`: the realm to put in the registry config.
    pub(crate) fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// All requests received so far, oldest first.
    pub(crate) fn log(&self) -> Vec<TokenRequest> {
        self.shared.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every token issued so far, oldest first.
    pub(crate) fn issued(&self) -> Vec<String> {
        self.shared.issued.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn token_handler(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery, headers: HeaderMap) -> Response {
    let mut scopes = Vec::new();
    let mut service = None;
    for (k, v) in util::parse_query(query.as_deref().unwrap_or("")) {
        match k.as_str() {
            "scope" => scopes.extend(v.split_whitespace().map(str::to_owned)),
            "service" => service = Some(v),
            _ => {}
        }
    }
    let user = basic_user(&headers, &shared.user, &shared.pass);
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    shared.log.lock().unwrap_or_else(|e| e.into_inner()).push(TokenRequest {
        scopes: scopes.clone(),
        service,
        authorized: user.is_some(),
        user_agent,
    });
    let Some(user) = user else {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"test-token\"")],
            "unauthorized\n",
        )
            .into_response();
    };
    match mint(&shared, &user, &scopes) {
        Ok(jwt) => {
            shared
                .issued
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(jwt.clone());
            let now = util::unix_now();
            axum::Json(serde_json::json!({
                "token": jwt,
                "access_token": jwt,
                "expires_in": EXPIRES_IN,
                "issued_at": util::rfc3339(now),
            }))
            .into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")).into_response(),
    }
}

/// The user name if the request carries Basic credentials equal to `user:pass`.
fn basic_user(headers: &HeaderMap, user: &str, pass: &str) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(b64.trim()).ok()?).ok()?;
    let (u, p) = decoded.split_once(':')?;
    (u == user && p == pass).then(|| u.to_owned())
}

/// Turns `type:name:actions` into a JWT `access` entry (name may itself contain `:`).
fn access_entry(scope: &str) -> Option<serde_json::Value> {
    let (typ, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    let actions: Vec<&str> = actions.split(',').filter(|a| !a.is_empty()).collect();
    Some(serde_json::json!({ "type": typ, "name": name, "actions": actions }))
}

fn mint(shared: &Shared, subject: &str, scopes: &[String]) -> anyhow::Result<String> {
    let now = util::unix_now();
    let header = serde_json::json!({ "typ": "JWT", "alg": "ES256", "x5c": [shared.x5c] });
    let access: Vec<serde_json::Value> = scopes.iter().filter_map(|s| access_entry(s)).collect();
    let mut jti = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut jti)
        .map_err(|_| anyhow::anyhow!("rng failure"))?;
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": subject,
        "aud": SERVICE,
        "exp": now + EXPIRES_IN,
        "nbf": now.saturating_sub(10),
        "iat": now,
        "jti": util::hex(&jti),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?)
    );
    let sig = shared
        .key
        .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
        .map_err(|_| anyhow::anyhow!("signing token"))?;
    Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_with_port_like_name() {
        let v = access_entry("repository:a/b:pull,push").unwrap();
        assert_eq!(v["name"], "a/b");
        assert_eq!(v["actions"], serde_json::json!(["pull", "push"]));
        let v = access_entry("registry:catalog:*").unwrap();
        assert_eq!(v["type"], "registry");
        assert_eq!(v["actions"], serde_json::json!(["*"]));
        assert!(access_entry("bogus").is_none());
    }
}
