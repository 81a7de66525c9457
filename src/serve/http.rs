//! Mock HTTP backends: every request gets `200` and a body naming the port that answered.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::log::Log;
use tokio_util::sync::CancellationToken;

use crate::net::{self, BindError};

/// Client connections one mock backend serves at once.
const MAX_CONNECTIONS: usize = 10_000;

/// Mock backends on a set of ports, bound and ready to run.
pub struct HttpServers {
    listeners: Vec<(u16, std::net::TcpListener)>,
    log: Log,
}

/// The body a backend on `port` answers with (the classic lab's text).
pub fn body_for(port: u16) -> String {
    format!("Handled by server on port {port}\n")
}

impl HttpServers {
    /// Binds every port first, so a busy one fails the whole start with its address.
    pub fn bind(ip: IpAddr, ports: &[u16], log: Log) -> Result<Self, BindError> {
        let listeners = ports
            .iter()
            .map(|&p| net::bind_tcp(SocketAddr::new(ip, p), "http backend").map(|l| (p, l)))
            .collect::<Result<_, _>>()?;
        Ok(Self { listeners, log })
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().filter_map(|(_, l)| l.local_addr().ok()).collect()
    }

    /// Serves every port until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let mut tasks = tokio::task::JoinSet::new();
        for (_, listener) in self.listeners {
            let port = listener.local_addr()?.port();
            let log = self.log.clone();
            let body = Bytes::from(body_for(port));
            tasks.spawn(net::serve_http(listener, MAX_CONNECTIONS, shutdown.clone(), move |req, peer| {
                respond(req, peer, port, body.clone(), log.clone())
            }));
        }
        while let Some(r) = tasks.join_next().await {
            r.map_err(std::io::Error::other)??;
        }
        Ok(())
    }
}

async fn respond(req: Request<Incoming>, peer: SocketAddr, port: u16, body: Bytes, log: Log) -> Response<Full<Bytes>> {
    // The monitor's own health probes would drown the lab's output: not logged.
    let probe = req.headers().get(header::USER_AGENT).is_some_and(|ua| ua == crate::probe::web::USER_AGENT);
    if log.enabled() && !probe {
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        log.line(format!("[{port}] {} {target} from {peer}", req.method()));
    }
    // Read (and discard) the request body so the connection stays usable for the next request.
    let mut incoming = req.into_body();
    while let Some(Ok(_)) = incoming.frame().await {}
    let mut resp = Response::new(Full::new(body));
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}
