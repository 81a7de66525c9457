//! The admin API on the metrics address, as HAProxy's runtime API and Envoy's admin: reload the
//! config, drain, disable or enable a backend, set its weight.
//!
//! Only for this host and only for requests no other site's page can make: a peer that is not a
//! loopback address gets 403 however widely the address is bound, and every request must say
//! `Content-Type: application/json` — a form cannot send that, and a script of another origin
//! can only after a CORS preflight (`OPTIONS`), which is never answered with the headers it
//! needs. The `Host` check of every route (DNS rebinding) applies too. Requests go over a
//! channel to what runs the balancers (`up`), which answers each one; answers are JSON,
//! `{"message": "..."}` or `{"error": "..."}`.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio::sync::{mpsc, oneshot};

use super::server;

/// What an operator may do to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// No new requests, clients or flows; those under way finish.
    Drain,
    /// Out of rotation.
    Disable,
    /// Back to what its health and strategy allow.
    Enable,
    /// A new weight (1 to 1000).
    Weight(u32),
}

/// A request of the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Read the config file again and apply it.
    Reload,
    /// `action` on the backend written `backend` (IP:PORT, or NAME:PORT as configured) of the
    /// balancer named `balancer`.
    Backend { balancer: String, backend: String, action: Action },
}

/// Why a command was not carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
}

impl Refusal {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }
}

/// What a command did (a line per change), or why it was not done.
pub type Reply = Result<String, Refusal>;

/// A command and where its reply goes.
pub type Asked = (Command, oneshot::Sender<Reply>);

/// The sending side, handed to the web server; cheap to clone.
#[derive(Debug, Clone)]
pub struct Admin {
    tx: mpsc::Sender<Asked>,
}

/// Commands waiting for their turn at most; more are answered 503.
const QUEUE: usize = 16;
/// A reload binds sockets and may resolve names: time enough for that.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

impl Admin {
    /// The handle and the commands it sends.
    pub fn channel() -> (Admin, mpsc::Receiver<Asked>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Admin { tx }, rx)
    }

    async fn ask(&self, command: Command) -> Reply {
        let busy = || Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "netpulse is stopping or busy; try again");
        let (tx, rx) = oneshot::channel();
        self.tx.try_send((command, tx)).map_err(|_| busy())?;
        match tokio::time::timeout(ANSWER_WITHIN, rx).await {
            Ok(Ok(reply)) => reply,
            _ => Err(busy()),
        }
    }
}

/// The routes, answering from `admin` (`None`: nothing here runs balancers).
pub fn routes<S: Clone + Send + Sync + 'static>(admin: Option<Admin>) -> Router<S> {
    Router::new()
        .route("/api/v1/admin/reload", post(reload))
        .route("/api/v1/admin/balancers/{balancer}/backends/{backend}/{action}", post(backend).put(weight))
        .with_state(admin)
}

/// The admin's own checks: a loopback peer, a JSON request.
fn allowed(req: &Request) -> Result<(), Refusal> {
    let peer = req.extensions().get::<server::Conn>().map(|c| c.peer.ip().to_canonical());
    if !peer.is_some_and(|ip| ip.is_loopback()) {
        let who = peer.map_or_else(|| "an unknown peer".to_string(), |ip| ip.to_string());
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            format!("the admin API answers only this host (loopback), not {who}"),
        ));
    }
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "admin requests must say Content-Type: application/json (which no other site's form can send)",
        ));
    }
    Ok(())
}

fn answer(reply: Reply) -> Response {
    let (status, body) = match reply {
        Ok(message) => (StatusCode::OK, serde_json::json!({ "message": message })),
        Err(r) => (r.status, serde_json::json!({ "error": r.message })),
    };
    (status, [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], body.to_string())
        .into_response()
}

async fn run(admin: Option<Admin>, allowed: Result<(), Refusal>, command: Command) -> Response {
    if let Err(r) = allowed {
        return answer(Err(r));
    }
    match admin {
        Some(a) => answer(a.ask(command).await),
        None => answer(Err(Refusal::new(StatusCode::NOT_FOUND, "no balancers run here (this is `netpulse monitor`)"))),
    }
}

async fn reload(State(admin): State<Option<Admin>>, req: Request) -> Response {
    run(admin, allowed(&req), Command::Reload).await
}

async fn backend(
    State(admin): State<Option<Admin>>,
    Path((balancer, backend, action)): Path<(String, String, String)>,
    req: Request,
) -> Response {
    let action = match action.as_str() {
        "drain" => Action::Drain,
        "disable" => Action::Disable,
        "enable" => Action::Enable,
        other => {
            let message = format!("unknown action {other:?}: POST drain, disable or enable; PUT weight");
            return answer(Err(Refusal::new(StatusCode::NOT_FOUND, message)));
        }
    };
    run(admin, allowed(&req), Command::Backend { balancer, backend, action }).await
}

/// The longest body a weight may come in.
const WEIGHT_BODY: usize = 64;

async fn weight(
    State(admin): State<Option<Admin>>,
    Path((balancer, backend, action)): Path<(String, String, String)>,
    req: Request,
) -> Response {
    if action != "weight" {
        let message = format!("PUT sets a weight: .../backends/{backend}/weight, not .../{action}");
        return answer(Err(Refusal::new(StatusCode::METHOD_NOT_ALLOWED, message)));
    }
    if let Err(r) = allowed(&req) {
        return answer(Err(r));
    }
    let bad = || {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "the body must be a weight, a whole number from 1 to 1000: `5` or `{\"weight\": 5}`",
        )
    };
    let body: Body = req.into_body();
    let Ok(bytes) = axum::body::to_bytes(body, WEIGHT_BODY).await else { return answer(Err(bad())) };
    // A bare number, or the object a JSON client would send.
    let weight = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Number(n)) => n.as_u64(),
        Ok(serde_json::Value::Object(o)) if o.len() == 1 => o.get("weight").and_then(serde_json::Value::as_u64),
        _ => None,
    }
    .and_then(|w| u32::try_from(w).ok())
    .filter(|w| (1..=1000).contains(w));
    let Some(weight) = weight else { return answer(Err(bad())) };
    run(admin, Ok(()), Command::Backend { balancer, backend, action: Action::Weight(weight) }).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::net::SocketAddr;

    use tokio_util::sync::CancellationToken;
    use tower::ServiceExt as _;

    use super::*;

    fn request(method: &str, path: &str, peer: &str, content_type: Option<&str>, body: &str) -> Request {
        let mut b = axum::http::Request::builder().method(method).uri(path).header(header::HOST, "127.0.0.1:9100");
        if let Some(t) = content_type {
            b = b.header(header::CONTENT_TYPE, t);
        }
        let mut req = b.body(Body::from(body.to_string())).unwrap();
        let peer: SocketAddr = peer.parse().unwrap();
        let local: SocketAddr = "127.0.0.1:9100".parse().unwrap();
        req.extensions_mut().insert(server::Conn { local, peer, cut: CancellationToken::new() });
        req
    }

    /// Answers every command by echoing it.
    fn echo() -> Admin {
        let (admin, mut rx) = Admin::channel();
        tokio::spawn(async move {
            while let Some((command, reply)) = rx.recv().await {
                let _ = reply.send(Ok(format!("{command:?}")));
            }
        });
        admin
    }

    async fn call(req: Request) -> (StatusCode, serde_json::Value) {
        let resp = routes::<()>(Some(echo())).oneshot(req).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn commands_from_this_host_in_json_are_carried_out() {
        let (status, body) =
            call(request("POST", "/api/v1/admin/reload", "127.0.0.1:5000", Some("application/json"), "")).await;
        assert_eq!((status, body["message"].as_str().unwrap()), (StatusCode::OK, "Reload"));
        let path = "/api/v1/admin/balancers/web/backends/127.0.0.1:8001/drain";
        let (status, body) = call(request("POST", path, "[::1]:5000", Some("application/json"), "{}")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body["message"].as_str().unwrap().contains("Drain"), "{body}");
        let path = "/api/v1/admin/balancers/web/backends/127.0.0.1:8001/weight";
        let (status, body) =
            call(request("PUT", path, "127.0.0.1:5000", Some("application/json; charset=utf-8"), " 7\n")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body["message"].as_str().unwrap().contains("Weight(7)"), "{body}");
    }

    #[tokio::test]
    async fn another_host_or_a_form_is_refused() {
        let (status, body) =
            call(request("POST", "/api/v1/admin/reload", "10.199.51.2:5000", Some("application/json"), "")).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(body["error"].as_str().unwrap().contains("10.199.51.2"), "{body}");
        // An IPv4 client on a dual-stack socket is loopback too.
        let (status, _) =
            call(request("POST", "/api/v1/admin/reload", "[::ffff:127.0.0.1]:1", Some("application/json"), "")).await;
        assert_eq!(status, StatusCode::OK);
        for form in [None, Some("application/x-www-form-urlencoded"), Some("text/plain"), Some("multipart/form-data")] {
            let (status, _) = call(request("POST", "/api/v1/admin/reload", "127.0.0.1:1", form, "")).await;
            assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{form:?}");
        }
        let path = "/api/v1/admin/balancers/web/backends/127.0.0.1:8001/weight";
        for bad in ["0", "1001", "many", ""] {
            let (status, _) = call(request("PUT", path, "127.0.0.1:1", Some("application/json"), bad)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}");
        }
        let path = "/api/v1/admin/balancers/web/backends/127.0.0.1:8001/explode";
        let (status, _) = call(request("POST", path, "127.0.0.1:1", Some("application/json"), "")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
