//! Listener plumbing shared by the balancers and the mock servers: binding with errors that name
//! the address and its owner, the descriptor limit, the bounded accept loop (and taking the
//! backlog when stopping), and the HTTP/1.1 server loop of the lab servers and `/metrics`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// How long in-flight HTTP requests may take to finish once shutdown starts.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A client must send its request headers within this time.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A listening socket could not be created.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {proto} {addr} ({owner})")]
pub struct BindError {
    pub proto: &'static str,
    pub addr: SocketAddr,
    pub owner: String,
    #[source]
    pub source: io::Error,
}

/// Binds a TCP listener (SO_REUSEADDR, a deep backlog), non-blocking, ready for tokio.
pub fn bind_tcp(addr: SocketAddr, owner: &str) -> Result<std::net::TcpListener, BindError> {
    bind_tcp_with(addr, owner, false)
}

/// Binds a UDP socket with large buffers so bursts are absorbed rather than dropped.
pub fn bind_udp(addr: SocketAddr, owner: &str) -> Result<std::net::UdpSocket, BindError> {
    bind_udp_with(addr, owner, false)
}

/// Binds `n` TCP listeners on one address with SO_REUSEPORT, so the kernel spreads connections
/// over `n` workers (see [`bind_shared`]).
pub fn bind_tcp_shared(addr: SocketAddr, owner: &str, n: usize) -> Result<Vec<std::net::TcpListener>, BindError> {
    bind_shared(addr, owner, n, "tcp", bind_tcp_with)
}

/// Binds `n` UDP sockets on one address with SO_REUSEPORT; the kernel hashes each client
/// address to one of them (see [`bind_shared`]).
pub fn bind_udp_shared(addr: SocketAddr, owner: &str, n: usize) -> Result<Vec<std::net::UdpSocket>, BindError> {
    bind_shared(addr, owner, n, "udp", bind_udp_with)
}

/// The port is first bound alone, so an address someone else holds — even another process
/// using SO_REUSEPORT — is reported as busy instead of being silently shared with it.
fn bind_shared<S>(
    addr: SocketAddr,
    owner: &str,
    n: usize,
    proto: &'static str,
    bind: fn(SocketAddr, &str, bool) -> Result<S, BindError>,
) -> Result<Vec<S>, BindError>
where
    Socket: From<S>,
    S: From<Socket>,
{
    let probe = Socket::from(bind(addr, owner, false)?);
    if n <= 1 {
        return Ok(vec![S::from(probe)]);
    }
    // Keep the port we were given (port 0 picks one) for the shared sockets.
    let fail = |source| BindError { proto, addr, owner: owner.to_string(), source };
    let addr = probe.local_addr().map_err(fail)?.as_socket().ok_or_else(|| fail(io::ErrorKind::InvalidData.into()))?;
    drop(probe);
    (0..n).map(|_| bind(addr, owner, true)).collect()
}

fn bind_tcp_with(addr: SocketAddr, owner: &str, reuse_port: bool) -> Result<std::net::TcpListener, BindError> {
    let fail = |source| BindError { proto: "tcp", addr, owner: owner.to_string(), source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    socket.set_reuse_port(reuse_port).map_err(fail)?;
    socket.bind(&addr.into()).map_err(fail)?;
    socket.listen(1024).map_err(fail)?;
    socket.set_nonblocking(true).map_err(fail)?;
    Ok(socket.into())
}

fn bind_udp_with(addr: SocketAddr, owner: &str, reuse_port: bool) -> Result<std::net::UdpSocket, BindError> {
    let fail = |source| BindError { proto: "udp", addr, owner: owner.to_string(), source };
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(fail)?;
    socket.set_reuse_port(reuse_port).map_err(fail)?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.bind(&addr.into()).map_err(fail)?;
    Ok(socket.into())
}

/// Waits for the next client while fewer than the permitted connections are open; `None` once
/// `stop` resolves. Accept errors (EMFILE and friends) back off instead of spinning, and are
/// logged at most once a second.
pub(crate) async fn accept_limited<F: Future>(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
    stop: &mut std::pin::Pin<&mut F>,
    owner: &str,
    warn: &mut crate::log::Throttled,
) -> Option<(tokio::net::TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    let permit = tokio::select! {
        _ = stop.as_mut() => return None,
        p = permits.clone().acquire_owned() => p.ok()?,
    };
    loop {
        tokio::select! {
            _ = stop.as_mut() => return None,
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    return Some((stream, peer, permit));
                }
                Err(e) => {
                    warn.warn(std::time::Instant::now(), || format!("{owner}: accept: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Raises the soft limit on open descriptors to the hard limit (as HAProxy does); returns the
/// limit now in force.
pub fn raise_descriptor_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    }
}

/// Takes the connections the kernel already accepted for `listener` (its backlog) without
/// waiting, so a stopping server can still serve them instead of resetting them.
pub(crate) fn accept_backlog(listener: TcpListener) -> Vec<(tokio::net::TcpStream, SocketAddr)> {
    let Ok(listener) = listener.into_std() else { return Vec::new() };
    let _ = listener.set_nonblocking(true);
    let mut taken = Vec::new();
    while let Ok((stream, peer)) = listener.accept() {
        let _ = stream.set_nonblocking(true);
        let _ = stream.set_nodelay(true);
        if let Ok(stream) = tokio::net::TcpStream::from_std(stream) {
            taken.push((stream, peer));
        }
    }
    taken
}

/// Serves HTTP/1.1 with keep-alive on `listener` until `shutdown`, then lets in-flight
/// requests finish for up to [`DRAIN_TIMEOUT`]. At most `max_connections` clients are served
/// at once; further ones wait in the accept queue.
pub async fn serve_http<F, Fut, B>(
    listener: std::net::TcpListener,
    max_connections: usize,
    shutdown: CancellationToken,
    handler: F,
) -> io::Result<()>
where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::from_std(listener)?;
    let handler = Arc::new(handler);
    let permits = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).keep_alive(true).header_read_timeout(HEADER_READ_TIMEOUT);
    let stop = shutdown.cancelled();
    tokio::pin!(stop);
    let owner = format!("http backend {}", listener.local_addr()?);
    let mut warn = crate::log::Throttled::default();
    while let Some((stream, peer, permit)) = accept_limited(&listener, &permits, &mut stop, &owner, &mut warn).await {
        let h = handler.clone();
        let service = service_fn(move |req| {
            let h = h.clone();
            async move { Ok::<_, Infallible>(h(req, peer).await) }
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // Errors here are the client's (reset, malformed request already answered with 400).
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await;
    Ok(())
}
