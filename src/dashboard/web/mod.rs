//! The web side of the metrics address (a sink): Prometheus `/metrics`, the JSON API
//! (`/api/v1/targets`, `/interfaces`, `/balancers`; `/history`, read from the recorded history:
//! [`history`]), the live event stream (`/api/v1/events`,
//! server-sent events, one per report) and the dashboard page at `/`, its scripts embedded in
//! the binary (uPlot vendored: no CDN, works offline). An axum `Router` served by its own
//! bounded accept loop ([`server`]: write deadlines, streams that can be cut). Read-only: every
//! other method gets 405; a `Host` that is not an IP address or `localhost` gets 421 (DNS
//! rebinding).
//!
//! Nothing here can slow the monitor: [`Web::follow`] appends each report to a short history
//! under a lock held for the copy of one row per item, and serialises the event after releasing
//! it, once, into bytes every stream shares. The API copies what it shows under the lock and
//! serialises it on a blocking thread, once per report (cached). A stream that falls more than
//! [`MAX_LAG`] reports behind, or takes nothing for [`server::WRITE_TIMEOUT`], is cut; the page
//! then reconnects and reloads, or polls the API while the streams are all taken.

pub mod admin;
pub mod history;
pub mod server;
pub mod state;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State as Shared};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore, broadcast};
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
/// Reports a stream may fall behind by (not yet taken by its connection) before it is cut.
pub const MAX_LAG: u64 = 4;
/// Events kept for the streams (more than [`MAX_LAG`]: a stream is cut before it misses one).
const EVENT_QUEUE: usize = 8;
/// A comment on an idle stream this often keeps proxies from closing it.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How soon a page's `EventSource` reconnects after the stream ends (the `retry:` hint).
const RETRY: Duration = Duration::from_secs(1);
/// Views serialised at once (each on a blocking thread; the rest wait their turn).
const SERIALISERS: usize = 2;
/// Views of the newest report kept serialised (by view and rows asked for).
const CACHED: usize = 4;
/// History queries answered at once (each reads the file on a blocking thread); the rest wait.
const HISTORY_QUERIES: usize = 2;

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
    /// The number of the newest report in `state` (read without its lock).
    published: Arc<AtomicU64>,
    events: broadcast::Sender<Frame>,
    streams: Arc<Semaphore>,
    /// How far each open stream got, to cut those that fall behind.
    watches: Arc<Mutex<Vec<Weak<Watch>>>>,
    cache: Arc<Mutex<Cache>>,
    serialisers: Arc<Semaphore>,
    /// The file the monitor records its history into, for `/api/v1/history` (`None`: off).
    history: Option<Arc<PathBuf>>,
    history_queries: Arc<Semaphore>,
    /// Where admin requests go (`None`: no balancers run here).
    admin: Option<admin::Admin>,
}

/// One report's event as the streams send it: the whole `event: report` block, shared.
#[derive(Debug, Clone)]
struct Frame {
    seq: u64,
    bytes: Bytes,
}

/// An open stream: the last report its connection took, and how to cut that connection.
#[derive(Debug)]
struct Watch {
    taken: AtomicU64,
    cut: CancellationToken,
}

/// The serialised views of report `seq`.
#[derive(Debug, Default)]
struct Cache {
    seq: u64,
    views: Vec<(Key, Arc<OnceCell<Bytes>>)>,
}

/// A view and the rows of history asked for.
type Key = (View, usize);

/// The views the cache keeps (the balancers' is taken live, so it is not kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    Targets,
    Interfaces,
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
            published: Arc::new(AtomicU64::new(0)),
            events: broadcast::channel(EVENT_QUEUE).0,
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
            watches: Arc::default(),
            cache: Arc::default(),
            serialisers: Arc::new(Semaphore::new(SERIALISERS)),
            history: None,
            history_queries: Arc::new(Semaphore::new(HISTORY_QUERIES)),
            admin: None,
        }
    }

    /// Serves `/api/v1/history` from `path`, the file the monitor records into (`None`: the
    /// history is off, and the API says so).
    pub fn with_history(mut self, path: Option<PathBuf>) -> Self {
        self.history = path.map(Arc::new);
        self
    }

    /// Serves the admin API ([`admin`]) too, sending its commands to `admin`.
    pub fn with_admin(mut self, admin: admin::Admin) -> Self {
        self.admin = Some(admin);
        self
    }

    /// Binds `addr`, with a warning when the address is reachable from other hosts (the API has
    /// no authentication).
    pub fn bind(addr: std::net::SocketAddr) -> Result<std::net::TcpListener, BindError> {
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

    /// Takes one report: the history, and the event for the streams open. The lock is held to
    /// append the rows and copy the event's one row; the event is serialised after.
    pub fn update(&self, report: Arc<Report>) {
        let now = Instant::now();
        let t = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let snapshots = self.snapshots(now);
        let listening = self.events.receiver_count() > 0;
        let (seq, event) = {
            let mut state = self.state();
            let seq = state.push(report, snapshots, now, t);
            (seq, listening.then(|| state.event()))
        };
        self.published.store(seq, Ordering::Release);
        // The views of the last report are of no more use (requests under way keep theirs).
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = Cache { seq, views: Vec::new() };
        if let Some(event) = event {
            match serde_json::to_vec(&event) {
                Ok(json) => {
                    let mut frame = Vec::with_capacity(json.len() + 24);
                    frame.extend_from_slice(b"event: report\ndata: ");
                    frame.extend_from_slice(&json);
                    frame.extend_from_slice(b"\n\n");
                    // Nobody listening any more is not an error.
                    let _ = self.events.send(Frame { seq, bytes: frame.into() });
                }
                Err(e) => tracing::warn!("dashboard: cannot serialise a report: {e}"),
            }
        }
        self.cut_laggards(seq);
    }

    /// Cuts the streams whose connection has not taken the reports after `seq - MAX_LAG`.
    fn cut_laggards(&self, seq: u64) {
        let mut watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        watches.retain(|w| match w.upgrade() {
            Some(w) if seq.saturating_sub(w.taken.load(Ordering::Acquire)) > MAX_LAG => {
                w.cut.cancel();
                false
            }
            Some(_) => true,
            None => false,
        });
    }

    /// Follows the monitor's reports until it ends (a sink). Each is taken on a blocking
    /// thread: at a thousand targets that is milliseconds of work the runtime's workers skip.
    pub async fn follow(self, mut reports: broadcast::Receiver<Arc<Report>>) {
        loop {
            match reports.recv().await {
                Ok(report) => {
                    let web = self.clone();
                    if let Err(e) = tokio::task::spawn_blocking(move || web.update(report)).await {
                        tracing::warn!("dashboard: taking a report failed: {e}");
                    }
                }
                // The history misses those rows; the charts show a gap.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// Serialises what `view` copies out of the state, on a blocking thread (at most
    /// [`SERIALISERS`] at once), without the lock.
    async fn serialise<V, F>(&self, view: F) -> Result<Bytes, String>
    where
        V: Serialize,
        F: FnOnce(&Web) -> V + Send + 'static,
    {
        let _turn = self.serialisers.acquire().await.map_err(|e| e.to_string())?;
        let web = self.clone();
        tokio::task::spawn_blocking(move || {
            let view = view(&web);
            serde_json::to_vec(&view).map(Bytes::from).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// A view of the newest report with `rows` of history, serialised once per report.
    async fn cached(&self, which: View, rows: usize) -> Result<Bytes, String> {
        let seq = self.published.load(Ordering::Acquire);
        let cell = {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.seq != seq {
                *cache = Cache { seq, views: Vec::new() };
            }
            match cache.views.iter().find(|(k, _)| *k == (which, rows)) {
                Some((_, cell)) => cell.clone(),
                None => {
                    let cell = Arc::new(OnceCell::new());
                    // Past a few, a view is serialised for its client alone.
                    if cache.views.len() < CACHED {
                        cache.views.push(((which, rows), cell.clone()));
                    }
                    cell
                }
            }
        };
        let body = cell
            .get_or_try_init(|| {
                self.serialise(move |web| {
                    let state = web.state();
                    match which {
                        View::Targets => Views::Targets(state.targets(rows)),
                        View::Interfaces => Views::Interfaces(state.interfaces(rows)),
                    }
                })
            })
            .await?;
        Ok(body.clone())
    }

    /// The service: every route, for `stop` to end the event streams.
    pub fn router(self, stop: CancellationToken) -> Router {
        let admin = admin::routes(self.admin.clone());
        let app = App { web: self, stop };
        Router::new()
            .merge(admin)
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
            .route("/api/v1/history", get(recorded))
            .fallback(|| async {
                (
                    StatusCode::NOT_FOUND,
                    "not found: try /, /metrics or /api/v1/{targets,interfaces,balancers,events,history}\n",
                )
            })
            .layer(axum::middleware::from_fn(check_host))
            .with_state(app)
    }

    /// Serves the router on `listener` until `shutdown` (which also ends the event streams).
    pub async fn serve(self, listener: std::net::TcpListener, shutdown: CancellationToken) -> std::io::Result<()> {
        let router = self.router(shutdown.clone());
        server::serve(listener, router, MAX_CONNECTIONS, shutdown).await
    }
}

/// A view copied out of the state, to serialise.
#[derive(Serialize)]
#[serde(untagged)]
enum Views {
    Targets(state::TargetsView),
    Interfaces(state::InterfacesView),
}

/// What the handlers share.
#[derive(Debug, Clone)]
struct App {
    web: Web,
    stop: CancellationToken,
}

/// Whether a `Host` names this server in a way no other site can: an IP address (the one it
/// listens on, or another of this host's) or `localhost`. A page of some other site that gets
/// its name pointed at this address (DNS rebinding) sends its own name, and is refused.
fn host_allowed(host: &str) -> bool {
    let port_ok = |p: &str| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((ip, "")) => ip.parse::<Ipv6Addr>().is_ok(),
            Some((ip, port)) => ip.parse::<Ipv6Addr>().is_ok() && port.strip_prefix(':').is_some_and(port_ok),
            None => false,
        };
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port_ok(port) => name,
        Some(_) => return false,
        None => host,
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    name.parse::<Ipv4Addr>().is_ok() || name == "localhost" || name.ends_with(".localhost")
}

/// Refuses requests whose `Host` (or absolute URI) names this server by a name that could be
/// someone else's (see [`host_allowed`]), except `/metrics`: Prometheus addresses a fleet's
/// hosts by name, and the exposition is not a page a browser runs.
async fn check_host(req: Request, next: Next) -> Response {
    if req.uri().path() == "/metrics" {
        return next.run(req).await;
    }
    let named = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| req.headers().get(header::HOST).map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned()));
    match named {
        Some(host) if !host_allowed(&host) => {
            let open = match req.extensions().get::<server::Conn>() {
                Some(conn) => format!("open http://{}/ instead", conn.local),
                None => "use the address it listens on or localhost".to_string(),
            };
            let line = format!(
                "netpulse: Host {host:?} is not served here, only an IP address or localhost \
                 (a name could be another site's: DNS rebinding); {open}\n"
            );
            (StatusCode::MISDIRECTED_REQUEST, line).into_response()
        }
        // Without a Host (HTTP/1.0, a hand-made request) no browser is involved.
        _ => next.run(req).await,
    }
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

fn json(body: Result<Bytes, String>) -> Response {
    match body {
        Ok(body) => {
            ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], body).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot serialise: {e}\n")).into_response(),
    }
}

/// Decodes one part of a query string (`%XX` and `+` for a space); `None` if it is not UTF-8
/// or has a broken escape.
fn decode(part: &str) -> Option<String> {
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The query's `key=value` pairs, percent-decoded.
fn pairs(req: &Request) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for pair in req.uri().query().unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = || format!("the query {pair:?} has a broken %-escape");
        out.push((decode(key).ok_or_else(bad)?, decode(value).ok_or_else(bad)?));
    }
    Ok(out)
}

/// A one-line JSON error: `{"error": "..."}`.
fn json_error(status: StatusCode, error: &str) -> Response {
    let mut body = serde_json::json!({ "error": error }).to_string();
    body.push('\n');
    (status, [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], body).into_response()
}

/// `GET /api/v1/history?target=NAME&since=24h&until=TIME&step=1m`: see [`history`]. The file
/// is read on a blocking thread, [`HISTORY_QUERIES`] at a time.
async fn recorded(Shared(app): Shared<App>, req: Request) -> Response {
    let query = match pairs(&req).and_then(history::Query::parse) {
        Ok(q) => q,
        Err(bad) => return json_error(StatusCode::BAD_REQUEST, &bad),
    };
    let Some(path) = app.web.history.clone() else {
        return json(serde_json::to_vec(&history::Answer::off()).map(Bytes::from).map_err(|e| e.to_string()));
    };
    let Ok(_turn) = app.web.history_queries.acquire().await else {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping");
    };
    let now = crate::history::now_ms();
    let answered = tokio::task::spawn_blocking(move || {
        history::answer(&path, &query, now).map(|a| serde_json::to_vec(&a).map(Bytes::from))
    })
    .await;
    match answered {
        Ok(Ok(body)) => json(body.map_err(|e| e.to_string())),
        Ok(Err(history::Refusal::Bad(bad))) => json_error(StatusCode::BAD_REQUEST, &bad),
        Ok(Err(history::Refusal::Unreadable(e))) => {
            json_error(StatusCode::SERVICE_UNAVAILABLE, &format!("history: {e}"))
        }
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &format!("history: the query failed: {e}")),
    }
}

/// `?history=N` (rows of history, at most [`HISTORY`]; default all).
fn rows(req: &Request) -> Result<usize, String> {
    let mut rows = HISTORY;
    for pair in req.uri().query().unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = || format!("the query {pair:?} has a broken %-escape\n");
        match (decode(key).ok_or_else(bad)?.as_str(), decode(value).ok_or_else(bad)?) {
            ("history", n) => {
                rows =
                    n.trim().parse().map_err(|_| format!("history={n} is not a number of rows (0 to {HISTORY})\n"))?;
            }
            _ => return Err(format!("unknown query {pair:?}; try ?history=N\n")),
        }
    }
    Ok(rows.min(HISTORY))
}

async fn metrics(Shared(app): Shared<App>) -> Response {
    // A thousand targets make a page of milliseconds: not on the runtime's workers.
    let exporter = app.web.exporter.clone();
    let page = match tokio::task::spawn_blocking(move || exporter.page()).await {
        Ok(page) => page,
        Err(e) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot render the metrics: {e}\n")).into_response();
        }
    };
    let mut resp = page.into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    resp
}

fn bad_request(bad: String) -> Response {
    (StatusCode::BAD_REQUEST, bad).into_response()
}

async fn targets(Shared(app): Shared<App>, req: Request) -> Response {
    match rows(&req) {
        Ok(rows) => json(app.web.cached(View::Targets, rows).await),
        Err(bad) => bad_request(bad),
    }
}

async fn interfaces(Shared(app): Shared<App>, req: Request) -> Response {
    match rows(&req) {
        Ok(rows) => json(app.web.cached(View::Interfaces, rows).await),
        Err(bad) => bad_request(bad),
    }
}

/// Taken live (the rates up to now), so never cached.
async fn balancers(Shared(app): Shared<App>, req: Request) -> Response {
    match rows(&req) {
        Ok(rows) => json(
            app.web
                .serialise(move |web| {
                    let now = Instant::now();
                    let live = web.snapshots(now);
                    web.state().balancers(Some((live, now)), rows)
                })
                .await,
        ),
        Err(bad) => bad_request(bad),
    }
}

/// One stream's state: where its events come from, how far it got, its place among the
/// streams, and its ends (the server stopping, or the stream cut).
struct Stream {
    events: broadcast::Receiver<Frame>,
    watch: Arc<Watch>,
    stop: CancellationToken,
    _permit: OwnedSemaphorePermit,
    hello: bool,
    idle: std::pin::Pin<Box<tokio::time::Sleep>>,
}

/// The stream of one page: a hello (`retry:` and a comment), then one `report` event per
/// report, and a comment when idle. Every event is the same shared bytes for every stream.
async fn events(Shared(app): Shared<App>, req: Request) -> Response {
    let Ok(permit) = app.web.streams.clone().try_acquire_owned() else {
        let busy =
            format!("too many event streams open (at most {MAX_STREAMS}); try again later (the API still answers)\n");
        return (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "5")], busy).into_response();
    };
    // Under the server, cutting the stream closes its connection: data it has not taken yet
    // is dropped with it. Without one (a test calling the router), the stream just ends.
    let cut = req.extensions().get::<server::Conn>().map_or_else(CancellationToken::new, |c| c.cut.clone());
    let events = app.web.events.subscribe();
    let watch = Arc::new(Watch { taken: AtomicU64::new(app.web.published.load(Ordering::Acquire)), cut });
    app.web.watches.lock().unwrap_or_else(|p| p.into_inner()).push(Arc::downgrade(&watch));
    let idle = Box::pin(tokio::time::sleep(KEEP_ALIVE));
    let stream = Stream { events, watch, stop: app.stop.clone(), _permit: permit, hello: true, idle };
    let body = futures_util::stream::unfold(stream, |mut s| async move {
        if std::mem::take(&mut s.hello) {
            // Tells the page how soon to come back, and that the stream is open.
            let hello = format!("retry: {}\n: netpulse: one `report` event per monitor report\n\n", RETRY.as_millis());
            return Some((Ok::<_, std::io::Error>(Bytes::from(hello)), s));
        }
        let next = tokio::select! {
            // Reports already queued go out before the end.
            biased;
            _ = s.watch.cut.cancelled() => None,
            got = s.events.recv() => match got {
                Ok(frame) => {
                    s.watch.taken.store(frame.seq, Ordering::Release);
                    Some(Ok(frame.bytes))
                }
                // Cut before it could lag this far; should it happen, the page reloads.
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    Some(Err(std::io::Error::other(format!("the stream fell {n} reports behind"))))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            },
            _ = s.stop.cancelled() => None,
            () = s.idle.as_mut() => Some(Ok(Bytes::from_static(b": keep-alive\n\n"))),
        };
        s.idle.as_mut().reset(tokio::time::Instant::now() + KEEP_ALIVE);
        next.map(|item| (item, s))
    });
    let headers = [
        (header::CONTENT_TYPE, "text/event-stream"),
        (header::CACHE_CONTROL, "no-cache"),
        // Proxies such as nginx would otherwise buffer the stream.
        (header::HeaderName::from_static("x-accel-buffering"), "no"),
    ];
    (headers, Body::from_stream(body)).into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use axum::body::Body;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    use super::*;

    fn web() -> Web {
        Web::new(Exporter::new(Balancers::default()), Balancers::default(), Duration::from_secs(1))
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
        assert_eq!(call(&app, "GET", "/api/v1/targets?history=%3").await.0, StatusCode::BAD_REQUEST);
        assert_eq!(call(&app, "GET", "/api/v1/targets?histories=3").await.0, StatusCode::BAD_REQUEST);
        let (_, resp) = call(&app, "GET", "/api/v1/targets?history=0").await;
        let v: serde_json::Value = serde_json::from_str(&text(resp).await).unwrap();
        assert_eq!((v["targets"].clone(), v["time"].clone()), (serde_json::json!([]), serde_json::Value::Null));
    }

    async fn get_with_host(app: &Router, uri: &str, host: &str) -> (StatusCode, String) {
        let req = axum::http::Request::builder().uri(uri).header(header::HOST, host).body(Body::empty()).unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        (resp.status(), text(resp).await)
    }

    #[tokio::test]
    async fn only_ip_addresses_and_localhost_are_served_so_dns_rebinding_gets_nothing() {
        let app = web().router(CancellationToken::new());
        for host in [
            "127.0.0.1:9100",
            "127.0.15.2",
            "[::1]:9100",
            "[::1]",
            "localhost:9100",
            "LocalHost",
            "localhost.",
            "a.localhost:1",
        ] {
            assert_eq!(get_with_host(&app, "/api/v1/targets", host).await.0, StatusCode::OK, "{host}");
        }
        for host in [
            "evil",
            "evil:9100",
            "evil.example:9100",
            "127.0.0.1.evil.example",
            "localhost.evil",
            "[::1",
            "::1",
            "127.0.0.1:x",
        ] {
            for uri in ["/", "/api/v1/targets", "/api/v1/events", "/assets/app.js"] {
                let (status, body) = get_with_host(&app, uri, host).await;
                assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{host} {uri}");
                assert_eq!(body.lines().count(), 1, "one line: {body}");
                assert!(body.contains("not served here") && body.contains("DNS rebinding"), "{body}");
            }
        }
        // Prometheus scrapes hosts by name.
        assert_eq!(get_with_host(&app, "/metrics", "box.example:9100").await.0, StatusCode::OK);
        // An absolute URI names the host too.
        assert_eq!(
            get_with_host(&app, "http://evil.example/api/v1/targets", "127.0.0.1").await.0,
            StatusCode::MISDIRECTED_REQUEST
        );
    }

    #[tokio::test]
    async fn a_query_is_percent_decoded() {
        let web = web();
        for i in 0..5 {
            let mut r = Report::empty();
            r.time = format!("t{i}");
            web.update(Arc::new(r));
        }
        let app = web.router(CancellationToken::new());
        for uri in ["/api/v1/targets?history=%33", "/api/v1/targets?%68istory=3", "/api/v1/interfaces?history=+3"] {
            let (status, resp) = call(&app, "GET", uri).await;
            assert_eq!(status, StatusCode::OK, "{uri}");
            let v: serde_json::Value = serde_json::from_str(&text(resp).await).unwrap();
            assert_eq!(v["t"].as_array().unwrap().len(), 3, "{uri}");
        }
        assert_eq!(
            (decode("a%20b+c%2B"), decode("%e2%9c%93"), decode("%zz"), decode("%ff")),
            (Some("a b c+".into()), Some("✓".into()), None, None)
        );
    }

    #[tokio::test]
    async fn a_view_is_serialised_once_per_report() {
        let web = web();
        web.update(Arc::new(Report::empty()));
        let a = web.cached(View::Targets, HISTORY).await.unwrap();
        let b = web.cached(View::Targets, HISTORY).await.unwrap();
        assert_eq!(a.as_ptr(), b.as_ptr(), "the same bytes, not serialised again");
        assert_ne!(web.cached(View::Targets, 1).await.unwrap().as_ptr(), a.as_ptr());
        web.update(Arc::new(Report::empty()));
        let c = web.cached(View::Targets, HISTORY).await.unwrap();
        assert_ne!(c.as_ptr(), a.as_ptr(), "a new report, a new view");
        let v: serde_json::Value = serde_json::from_slice(&c).unwrap();
        assert_eq!(v["t"].as_array().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_stream_that_falls_behind_is_cut_and_gives_back_its_place() {
        let web = web();
        let app = web.clone().router(CancellationToken::new());
        let (_, slow) = call(&app, "GET", "/api/v1/events").await;
        let (_, fast) = call(&app, "GET", "/api/v1/events").await;
        let mut fast = fast.into_body();
        let frame =
            |b: Option<Result<hyper::body::Frame<Bytes>, axum::Error>>| b.unwrap().unwrap().into_data().unwrap();
        assert!(frame(fast.frame().await).starts_with(b"retry: 1000"));
        // The slow one's connection takes nothing; the fast one takes every report.
        for i in 1..=MAX_LAG + 1 {
            web.update(Arc::new(Report::empty()));
            let got = frame(fast.frame().await);
            assert!(got.starts_with(b"event: report\ndata: {") && got.ends_with(b"}\n\n"), "report {i}");
        }
        assert_eq!(web.streams.available_permits(), MAX_STREAMS - 2);
        web.update(Arc::new(Report::empty()));
        assert!(frame(fast.frame().await).starts_with(b"event: report"));
        let mut slow = slow.into_body();
        assert!(frame(slow.frame().await).starts_with(b"retry:"), "the hello was still due");
        assert!(slow.frame().await.is_none(), "cut: {} reports behind", MAX_LAG + 2);
        drop(slow);
        assert_eq!(web.streams.available_permits(), MAX_STREAMS - 1, "its place is free again");
        assert_eq!(web.watches.lock().unwrap().len(), 1);
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
