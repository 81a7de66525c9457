//! The web side of the metrics address (a sink): Prometheus `/metrics`, the JSON API
//! (`/api/v1/targets`, `/interfaces`, `/balancers`), the live event stream (`/api/v1/events`,
//! server-sent events, one per report) and the dashboard page at `/`, its scripts embedded in
//! the binary (uPlot vendored: no CDN, works offline). An axum `Router` served by the bounded
//! accept loop of [`crate::net::serve_http`]. Read-only: every other method gets 405.
//!
//! Nothing here can slow the monitor: [`Web::follow`] keeps a short history under a lock held
//! for microseconds, serialises each event once (only while a page listens) and hands it to a
//! bounded broadcast, where a client that falls behind skips reports instead of queueing them.

pub mod state;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::extract::{Request, State as Shared};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};
use tokio_util::sync::CancellationToken;

use crate::metrics::Exporter;
use crate::monitor::report::Report;
use crate::net::{self, BindError};
use crate::stats::traffic::{BalancerSnapshot, Balancers};
pub use state::{HISTORY, RECENT, State};

/// Clients served at once (a scrape, an API call or a page's event stream each hold one).
pub const MAX_CONNECTIONS: usize = 256;
/// Event streams open at once; the rest of [`MAX_CONNECTIONS`] stays for scrapes and the API.
pub const MAX_STREAMS: usize = 128;
/// Events a stream may fall behind by before it skips to the newest.
const EVENT_QUEUE: usize = 8;
/// A comment on an idle stream this often keeps proxies from closing it.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How soon a page's `EventSource` reconnects after the stream ends (the `retry:` hint).
const RETRY: Duration = Duration::from_secs(1);

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
/// uPlot 1.6.32 (MIT, see assets/uPlot.LICENSE), `dist/` of the npm package.
const UPLOT_JS: &str = include_str!("assets/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("assets/uPlot.min.css");

/// The dashboard's state and its subscribers; cheap to clone.
#[derive(Debug, Clone)]
pub struct Web {
    exporter: Exporter,
    balancers: Balancers,
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<Arc<str>>,
    streams: Arc<Semaphore>,
}

impl Web {
    /// A dashboard over `balancers`, serving `exporter`'s page at `/metrics`; `interval` is the
    /// monitor's (the page labels its charts with it).
    pub fn new(exporter: Exporter, balancers: Balancers, interval: Duration) -> Self {
        let interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        Self {
            exporter,
            balancers,
            state: Arc::new(Mutex::new(State::new(interval_ms))),
            events: broadcast::channel(EVENT_QUEUE).0,
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
        }
    }

    /// Binds `addr`, with a warning when the address is reachable from other hosts (the API has
    /// no authentication).
    pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, BindError> {
        let listener = net::bind_tcp(addr, "metrics and dashboard")?;
        if !addr.ip().is_loopback() {
            tracing::warn!(
                "the dashboard, API and metrics on {addr} are readable by anyone who can reach that address \
                 (there is no authentication); bind 127.0.0.1 to keep them on this host"
            );
        }
        Ok(listener)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn snapshots(&self, now: Instant) -> Vec<BalancerSnapshot> {
        self.balancers.iter().map(|b| b.snapshot(now)).collect()
    }

    /// Takes one report: the history, and the event for the pages listening.
    pub fn update(&self, report: Arc<Report>) {
        let now = Instant::now();
        let t = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let snapshots = self.snapshots(now);
        let mut state = self.state();
        let event = state.push(report, snapshots, now, t);
        if self.events.receiver_count() > 0 {
            match serde_json::to_string(&event) {
                Ok(json) => {
                    drop(state);
                    // Nobody listening is not an error.
                    let _ = self.events.send(json.into());
                }
                Err(e) => tracing::warn!("dashboard: cannot serialise a report: {e}"),
            }
        }
    }

    /// Follows the monitor's reports until it ends (a sink).
    pub async fn follow(self, mut reports: broadcast::Receiver<Arc<Report>>) {
        loop {
            match reports.recv().await {
                Ok(report) => self.update(report),
                // The history misses those rows; the charts show a gap.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// The service: every route, for `stop` to end the event streams.
    pub fn router(self, stop: CancellationToken) -> Router {
        let app = App { web: self, stop };
        Router::new()
            .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
            .route("/assets/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
            .route("/assets/app.css", get(|| async { asset("text/css; charset=utf-8", APP_CSS) }))
            .route("/assets/uPlot.iife.min.js", get(|| async { asset("text/javascript; charset=utf-8", UPLOT_JS) }))
            .route("/assets/uPlot.min.css", get(|| async { asset("text/css; charset=utf-8", UPLOT_CSS) }))
            .route("/metrics", get(metrics))
            .route("/api/v1/targets", get(targets))
            .route("/api/v1/interfaces", get(interfaces))
            .route("/api/v1/balancers", get(balancers))
            .route("/api/v1/events", get(events))
            .fallback(|| async {
                (StatusCode::NOT_FOUND, "not found: try /, /metrics or /api/v1/{targets,interfaces,balancers,events}\n")
            })
            .with_state(app)
    }

    /// Serves the router on `listener` until `shutdown` (which also ends the event streams).
    pub async fn serve(self, listener: std::net::TcpListener, shutdown: CancellationToken) -> std::io::Result<()> {
        let router = self.router(shutdown.clone());
        net::serve_http(listener, MAX_CONNECTIONS, shutdown, move |req, _| {
            let router = router.clone();
            async move {
                use tower::ServiceExt as _;
                match router.oneshot(req).await {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                }
            }
        })
        .await
    }
}

/// What the handlers share.
#[derive(Debug, Clone)]
struct App {
    web: Web,
    stop: CancellationToken,
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // A new binary may serve new files at the same address.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            // Nothing but this server: no CDN, no inline script.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'self'",
            ),
        ],
        body,
    )
        .into_response()
}

fn json(body: Result<String, serde_json::Error>) -> Response {
    match body {
        Ok(body) => {
            ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], body).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot serialise: {e}\n")).into_response(),
    }
}

/// `?history=N` (rows of history, at most [`HISTORY`]; default all).
fn rows(req: &Request) -> Result<usize, String> {
    let mut rows = HISTORY;
    for pair in req.uri().query().unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("history", n)) => {
                rows = n.parse().map_err(|_| format!("history={n} is not a number of rows (0 to {HISTORY})\n"))?;
            }
            _ => return Err(format!("unknown query {pair:?}; try ?history=N\n")),
        }
    }
    Ok(rows.min(HISTORY))
}

/// A JSON view with the history the query asks for.
fn view(req: &Request, render: impl FnOnce(usize) -> Result<String, serde_json::Error>) -> Response {
    match rows(req) {
        Ok(rows) => json(render(rows)),
        Err(bad) => (StatusCode::BAD_REQUEST, bad).into_response(),
    }
}

async fn metrics(Shared(app): Shared<App>) -> Response {
    let mut resp = app.web.exporter.page().into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    resp
}

async fn targets(Shared(app): Shared<App>, req: Request) -> Response {
    view(&req, |rows| serde_json::to_string(&app.web.state().targets(rows)))
}

async fn interfaces(Shared(app): Shared<App>, req: Request) -> Response {
    view(&req, |rows| serde_json::to_string(&app.web.state().interfaces(rows)))
}

async fn balancers(Shared(app): Shared<App>, req: Request) -> Response {
    view(&req, |rows| {
        let now = Instant::now();
        let live = app.web.snapshots(now);
        serde_json::to_string(&app.web.state().balancers(Some((live, now)), rows))
    })
}

/// One stream's state: where its events come from, its place among the streams, and the end.
struct Stream {
    events: broadcast::Receiver<Arc<str>>,
    stop: CancellationToken,
    _permit: OwnedSemaphorePermit,
    hello: bool,
}

async fn events(Shared(app): Shared<App>) -> Response {
    let Ok(permit) = app.web.streams.clone().try_acquire_owned() else {
        let busy = format!("too many event streams open (at most {MAX_STREAMS}); try again later\n");
        return (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "5")], busy).into_response();
    };
    let stream = Stream { events: app.web.events.subscribe(), stop: app.stop.clone(), _permit: permit, hello: true };
    let events = futures_util::stream::unfold(stream, |mut s| async move {
        if std::mem::take(&mut s.hello) {
            // Tells the page how soon to come back, and that the stream is open.
            let hello = Event::default().retry(RETRY).comment("netpulse: one `report` event per monitor report");
            return Some((Ok::<_, std::convert::Infallible>(hello), s));
        }
        loop {
            tokio::select! {
                // Reports already queued go out before the end.
                biased;
                got = s.events.recv() => match got {
                    Ok(json) => return Some((Ok(Event::default().event("report").data(&*json)), s)),
                    // A slow page skips to the newest report.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = s.stop.cancelled() => return None,
            }
        }
    });
    let mut resp = Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response();
    // Proxies such as nginx would otherwise buffer the stream.
    resp.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use axum::body::Body;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    use super::*;

    fn web() -> Web {
        Web::new(Exporter::new(Arc::from(Vec::new())), Arc::from(Vec::new()), Duration::from_secs(1))
    }

    async fn call(app: &Router, method: &str, uri: &str) -> (StatusCode, Response) {
        let req = axum::http::Request::builder().method(method).uri(uri).body(Body::empty()).unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        (resp.status(), resp)
    }

    async fn text(resp: Response) -> String {
        String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn every_route_answers_get_and_refuses_writes() {
        let app = web().router(CancellationToken::new());
        for (uri, ty) in [
            ("/", "text/html"),
            ("/assets/app.js", "text/javascript"),
            ("/assets/uPlot.iife.min.js", "text/javascript"),
            ("/assets/app.css", "text/css"),
            ("/metrics", "text/plain; version=0.0.4"),
            ("/api/v1/targets", "application/json"),
            ("/api/v1/interfaces", "application/json"),
            ("/api/v1/balancers", "application/json"),
        ] {
            let (status, resp) = call(&app, "GET", uri).await;
            assert_eq!(status, StatusCode::OK, "{uri}");
            let got = resp.headers()[header::CONTENT_TYPE].to_str().unwrap().to_string();
            assert!(got.starts_with(ty), "{uri}: {got}");
            let (status, resp) = call(&app, "POST", uri).await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{uri}");
            assert!(resp.headers()[header::ALLOW].to_str().unwrap().contains("GET"));
        }
        assert_eq!(call(&app, "DELETE", "/api/v1/events").await.0, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(call(&app, "GET", "/nope").await.0, StatusCode::NOT_FOUND);
        assert_eq!(call(&app, "GET", "/api/v1/targets?history=x").await.0, StatusCode::BAD_REQUEST);
        let (_, resp) = call(&app, "GET", "/api/v1/targets?history=0").await;
        let v: serde_json::Value = serde_json::from_str(&text(resp).await).unwrap();
        assert_eq!((v["targets"].clone(), v["time"].clone()), (serde_json::json!([]), serde_json::Value::Null));
    }

    #[tokio::test]
    async fn the_page_names_only_files_the_binary_serves() {
        let app = web().router(CancellationToken::new());
        let (_, resp) = call(&app, "GET", "/").await;
        let page = text(resp).await;
        for part in page.split(['"', '\'']).filter(|p| p.starts_with('/') || p.contains("://")) {
            assert!(!part.contains("://"), "the page must not load {part} from elsewhere");
            assert_eq!(call(&app, "GET", part).await.0, StatusCode::OK, "{part}");
        }
        assert!(page.contains("/assets/uPlot.iife.min.js") && page.contains("/assets/app.js"), "{page}");
    }

    #[tokio::test]
    async fn streams_are_capped_and_end_when_the_server_stops() {
        let web = web();
        let stop = CancellationToken::new();
        let app = web.clone().router(stop.clone());
        let mut open = Vec::new();
        for _ in 0..MAX_STREAMS {
            let (status, resp) = call(&app, "GET", "/api/v1/events").await;
            assert_eq!(status, StatusCode::OK);
            open.push(resp);
        }
        let (status, resp) = call(&app, "GET", "/api/v1/events").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(text(resp).await.contains("too many event streams"));
        // A report reaches a stream as one `report` event after the hello.
        web.update(Arc::new(Report::empty()));
        stop.cancel();
        let body = text(open.pop().unwrap()).await;
        assert!(body.starts_with("retry: 1000\n: netpulse"), "{body}");
        let event = body.split("\n\n").find(|e| e.starts_with("event: report")).unwrap();
        let data = event.strip_prefix("event: report\ndata: ").unwrap();
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["targets"]["connectivity"], "connected");
        drop(open);
        assert_eq!(call(&app, "GET", "/api/v1/events").await.0, StatusCode::OK, "closed streams give back their place");
    }
}
