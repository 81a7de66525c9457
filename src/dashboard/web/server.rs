//! The dashboard's HTTP/1.1 accept loop: [`crate::net::serve_http`]'s, plus what a server of
//! long-lived streams needs — a write deadline on every connection (a client that takes nothing
//! we send for [`WRITE_TIMEOUT`] is dropped, with its unsent data) and a way for a handler to cut
//! its own connection ([`Conn::cut`], used for a stream that falls behind). hyper has neither: it
//! waits on a full socket for ever, and polls a response body only when it can buffer more.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use crate::net::{DRAIN_TIMEOUT, HEADER_READ_TIMEOUT, accept_limited};

/// A client that takes none of what we have to send for this long is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// What hyper buffers for one connection before it stops asking the handler for more (a
/// stream's events are shared bytes, so this bounds how far ahead of the socket it runs).
const MAX_BUF: usize = 64 * 1024;

/// The connection a request came on, in its extensions.
#[derive(Debug, Clone)]
pub struct Conn {
    /// The address the client connected to.
    pub local: SocketAddr,
    /// The client's address.
    pub peer: SocketAddr,
    /// Cancelling it closes the connection at once (unsent data is dropped, the peer gets a reset).
    pub cut: CancellationToken,
}

/// Serves `router` on `listener` until `shutdown`, then lets in-flight requests finish for up
/// to [`DRAIN_TIMEOUT`]. At most `max_connections` clients at once; more wait to be accepted.
pub async fn serve(
    listener: std::net::TcpListener,
    router: Router,
    max_connections: usize,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    let local = listener.local_addr()?;
    let permits = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).keep_alive(true).header_read_timeout(HEADER_READ_TIMEOUT).max_buf_size(MAX_BUF);
    let stop = shutdown.cancelled();
    tokio::pin!(stop);
    let owner = format!("dashboard {local}");
    let mut warn = crate::log::Throttled::default();
    while let Some((stream, peer, permit)) = accept_limited(&listener, &permits, &mut stop, &owner, &mut warn).await {
        let conn = Conn { local, peer, cut: CancellationToken::new() };
        let cut = conn.cut.clone();
        let io = TokioIo::new(Deadline::new(stream, WRITE_TIMEOUT, cut.clone()));
        let router = router.clone();
        let service = service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(conn.clone());
            let router = router.clone();
            async move {
                use tower::ServiceExt as _;
                router.oneshot(req).await
            }
        });
        let served = graceful.watch(builder.serve_connection(io, service));
        tokio::spawn(async move {
            tokio::select! {
                // Errors here are the client's (a reset, a missed deadline, a malformed request).
                _ = served => {}
                () = cut.cancelled() => {}
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await;
    Ok(())
}

/// A socket that can be reset: what [`Deadline`] does to a connection it gives up on.
pub trait Reset {
    /// Makes closing it drop unsent data and reset the connection (SO_LINGER 0), so the kernel
    /// does not keep the data for a peer that does not read.
    fn reset_on_close(&self);
}

impl Reset for tokio::net::TcpStream {
    fn reset_on_close(&self) {
        let _ = socket2::SockRef::from(self).set_linger(Some(Duration::ZERO));
    }
}

impl Reset for tokio::io::DuplexStream {
    fn reset_on_close(&self) {}
}

/// A connection's socket with a write deadline: a write that cannot go on (the peer's window
/// and our buffer are full) starts the clock, any byte taken stops it, and at [`WRITE_TIMEOUT`]
/// the write fails, which ends the connection. Dropped after a missed deadline or a cut, the
/// socket is reset.
#[derive(Debug)]
pub struct Deadline<T: Reset> {
    io: T,
    timeout: Duration,
    clock: Option<Pin<Box<Sleep>>>,
    missed: bool,
    cut: CancellationToken,
}

impl<T: Reset> Deadline<T> {
    pub fn new(io: T, timeout: Duration, cut: CancellationToken) -> Self {
        Self { io, timeout, clock: None, missed: false, cut }
    }

    fn written(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) if n > 0 => {
                self.clock = None;
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let clock = self.clock.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                ready!(clock.as_mut().poll(cx));
                self.missed = true;
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the client took nothing for {} s", timeout.as_secs()),
                )))
            }
            other => other,
        }
    }
}

impl<T: Reset> Drop for Deadline<T> {
    fn drop(&mut self) {
        if self.missed || self.cut.is_cancelled() {
            self.io.reset_on_close();
        }
    }
}

impl<T: Reset + AsyncRead + Unpin> AsyncRead for Deadline<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: Reset + AsyncWrite + Unpin> AsyncWrite for Deadline<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.written(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.written(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_write_nobody_takes_fails_at_the_deadline_and_any_progress_restarts_the_clock() {
        let (ours, mut theirs) = tokio::io::duplex(16);
        let mut w = Deadline::new(ours, WRITE_TIMEOUT, CancellationToken::new());
        w.write_all(&[1; 16]).await.unwrap();
        // The pipe is full. The peer takes a byte at 9 s: the clock starts again.
        let write = tokio::spawn(async move {
            let r = w.write_all(&[2; 8]).await;
            (r, w)
        });
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(!write.is_finished());
        let mut one = [0u8; 1];
        theirs.read_exact(&mut one).await.unwrap();
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(!write.is_finished(), "a byte taken restarts the clock");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (r, w) = write.await.unwrap();
        let e = r.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(e.to_string(), "the client took nothing for 10 s");
        assert!(w.missed);
    }
}
