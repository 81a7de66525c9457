//! The HTTP/1.1 reverse proxy: one rotation shared by all clients, pooled keep-alive connections
//! to the backends, bodies streamed both ways, and errors that say who caused them.

use std::error::Error as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::balance::{BackendSet, RoundRobin};
use crate::clock::UtcTime;
use crate::config::HttpBalancerConfig;
use crate::log::Log;
use crate::net::{self, BindError, ShutdownRx};

/// What a client receives: the backend's streamed body, or our own short error text.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// How long an idle pooled backend connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Headers that describe one hop and must not be forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// A bound, ready-to-run HTTP balancer.
pub struct HttpBalancer {
    name: String,
    listener: std::net::TcpListener,
    max_connections: usize,
    inner: Arc<Proxy>,
}

/// The per-request state shared by every connection.
struct Proxy {
    name: String,
    backends: Arc<ArcSwap<BackendSet>>,
    authorities: Vec<Authority>,
    rotation: RoundRobin,
    client: Client<HttpConnector, Incoming>,
    timeout: Duration,
    log: Log,
}

/// Why a request got no answer from a backend; decides 502 / 503 / 504.
#[derive(Debug, thiserror::Error)]
enum ProxyError {
    #[error("no healthy backend")]
    NoBackend,
    #[error("backend {0} did not accept a connection in time")]
    ConnectTimeout(SocketAddr),
    #[error("backend {0} could not be reached: {1}")]
    Connect(SocketAddr, String),
    #[error("backend {0} did not respond within {1:?}")]
    Timeout(SocketAddr, Duration),
    #[error("backend {0} failed: {1}")]
    Backend(SocketAddr, String),
}

impl ProxyError {
    fn status(&self) -> StatusCode {
        match self {
            Self::NoBackend => StatusCode::SERVICE_UNAVAILABLE,
            Self::ConnectTimeout(..) | Self::Timeout(..) => StatusCode::GATEWAY_TIMEOUT,
            Self::Connect(..) | Self::Backend(..) => StatusCode::BAD_GATEWAY,
        }
    }
}

impl HttpBalancer {
    /// Binds the listening socket; nothing is served until [`HttpBalancer::run`].
    pub fn bind(config: &HttpBalancerConfig, log: Log) -> Result<Self, BindError> {
        let owner = format!("http balancer \"{}\"", config.name);
        let listener = net::bind_tcp(config.listen.0, &owner)?;
        let backends = &config.backends.0;
        let authorities = backends
            .iter()
            .map(|a| {
                Authority::try_from(a.to_string()).expect("a socket address is a valid authority")
            })
            .collect();
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout.0));
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(config.pool_max_idle)
            .set_host(false)
            .build(connector);
        let inner = Arc::new(Proxy {
            name: config.name.clone(),
            backends: Arc::new(ArcSwap::from_pointee(BackendSet::new(backends))),
            authorities,
            rotation: RoundRobin::new(),
            client,
            timeout: config.timeout.0,
            log: if config.access_log {
                log
            } else {
                Log::disabled()
            },
        });
        Ok(Self {
            name: config.name.clone(),
            listener,
            max_connections: config.max_connections,
            inner,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The live backend set, for health checkers to replace.
    pub fn backends(&self) -> Arc<ArcSwap<BackendSet>> {
        self.inner.backends.clone()
    }

    /// Serves until `shutdown`, then drains in-flight requests.
    pub async fn run(self, shutdown: ShutdownRx) -> std::io::Result<()> {
        let proxy = self.inner;
        net::serve_http(
            self.listener,
            self.max_connections,
            shutdown,
            move |req, peer| {
                let proxy = proxy.clone();
                async move { proxy.handle(req, peer).await }
            },
        )
        .await
    }
}

impl Proxy {
    async fn handle(&self, req: Request<Incoming>, client: SocketAddr) -> Response<ProxyBody> {
        let start = Instant::now();
        let method = req.method().clone();
        let target = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let (backend, result) = self.forward(req, client).await;
        let response = match result {
            Ok(resp) => resp.map(Either::Left),
            Err(e) => error_response(&e),
        };
        if self.log.enabled() {
            let to = backend.map_or_else(|| "-".to_string(), |b| b.to_string());
            self.log.line(format!(
                "{} http {} {client} \"{method} {target}\" -> {to} {} {:.3}ms",
                UtcTime::now().rfc3339(),
                self.name,
                response.status().as_u16(),
                start.elapsed().as_secs_f64() * 1000.0
            ));
        }
        response
    }

    /// Sends the request to the next backend; returns which one was chosen and its answer.
    async fn forward(
        &self,
        mut req: Request<Incoming>,
        client: SocketAddr,
    ) -> (Option<SocketAddr>, Result<Response<Incoming>, ProxyError>) {
        let picked = {
            let set = self.backends.load();
            self.rotation
                .pick(&set)
                .and_then(|i| set.get(i).map(|b| (i, b.addr)))
        };
        let Some((index, backend)) = picked else {
            return (None, Err(ProxyError::NoBackend));
        };
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.authorities[index].clone());
        parts.path_and_query = req
            .uri()
            .path_and_query()
            .cloned()
            .or_else(|| Some("/".parse().expect("/")));
        *req.uri_mut() = Uri::from_parts(parts).expect("scheme, authority and path make a URI");
        *req.version_mut() = http::Version::HTTP_11;
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        append_forwarded_for(headers, client);
        if !headers.contains_key(header::HOST) {
            if let Ok(v) = HeaderValue::from_str(self.authorities[index].as_str()) {
                headers.insert(header::HOST, v);
            }
        }
        let result = match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Err(_) => Err(ProxyError::Timeout(backend, self.timeout)),
            Ok(Err(e)) => Err(classify(&e, backend)),
            Ok(Ok(mut resp)) => {
                strip_hop_by_hop(resp.headers_mut());
                Ok(resp)
            }
        };
        (Some(backend), result)
    }
}

/// Turns a client error into who-caused-what.
fn classify(e: &hyper_util::client::legacy::Error, backend: SocketAddr) -> ProxyError {
    let mut cause = e.source();
    let mut detail = e.to_string();
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return ProxyError::ConnectTimeout(backend);
            }
        }
        detail = c.to_string();
        cause = c.source();
    }
    if e.is_connect() {
        ProxyError::Connect(backend, detail)
    } else {
        ProxyError::Backend(backend, detail)
    }
}

fn error_response(e: &ProxyError) -> Response<ProxyBody> {
    let status = e.status();
    let body = format!(
        "{} {}: {e}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Removes the fixed hop-by-hop headers and any header the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    // Upgrades (WebSocket) are not proxied yet; never half-forward one.
    headers.remove(header::UPGRADE);
}

/// Appends the client's IP to `X-Forwarded-For`, keeping what earlier proxies wrote.
fn append_forwarded_for(headers: &mut HeaderMap, client: SocketAddr) {
    let ip = client.ip().to_string();
    let previous: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let value = if previous.is_empty() {
        ip
    } else {
        format!("{}, {ip}", previous.join(", "))
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, vec!["content-length", "x-kept"]);
    }

    #[test]
    fn forwarded_for_is_appended() {
        let client: SocketAddr = "10.1.2.3:5555".parse().unwrap();
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, client);
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("2.2.2.2"));
        append_forwarded_for(&mut h, client);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.1.2.3");
    }

    #[test]
    fn errors_map_to_the_status_that_names_the_culprit() {
        let b: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(ProxyError::NoBackend.status(), 503);
        assert_eq!(ProxyError::Connect(b, "refused".into()).status(), 502);
        assert_eq!(ProxyError::Backend(b, "closed".into()).status(), 502);
        assert_eq!(ProxyError::Timeout(b, Duration::from_secs(1)).status(), 504);
        assert_eq!(ProxyError::ConnectTimeout(b).status(), 504);
    }
}
