//! HTTP/1.x message heads and body framing for the proxy: parse a head, decide how its body is
//! delimited, and write the head the next hop should see. Pure functions over byte slices.

use std::fmt::Write as _;
use std::net::IpAddr;

/// The largest request or response head accepted (431 / 502 beyond it).
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// The most header fields accepted in one head.
pub(crate) const MAX_HEADERS: usize = 128;

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the sender closes (responses only).
    UntilClose,
}

/// A request head that parsed and was rewritten for the backend.
#[derive(Debug)]
pub(crate) struct RequestHead {
    /// Bytes the head took in the input.
    pub len: usize,
    pub framing: Framing,
    /// Whether the client wants the connection kept after this exchange.
    pub keep_alive: bool,
    /// HTTP/1.0 client (no chunked responses, keep-alive only on request).
    pub http10: bool,
    pub is_head: bool,
    /// Whether the method may be sent twice (RFC 9110 §9.2.2), so a request lost on a stale
    /// pooled connection can be replayed.
    pub idempotent: bool,
    /// Whether the head carried a `Host` field (HTTP/1.0 may omit it).
    pub has_host: bool,
    /// `Expect: 100-continue`: the proxy answers `100 Continue` itself and does not forward it.
    pub expect_continue: bool,
    /// `METHOD /target`, for the access log (empty unless asked for).
    pub line: String,
}

/// A response head that parsed and was rewritten for the client.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub len: usize,
    pub status: u16,
    pub framing: Framing,
    /// Whether the backend connection may be reused after this response.
    pub reusable: bool,
}

/// Why a head was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeadError {
    #[error("malformed head: {0}")]
    Malformed(String),
    #[error("head larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("{0}")]
    Unsupported(&'static str),
}

/// Hop-by-hop fields (RFC 9110 §7.6.1) plus the framing fields the proxy writes itself.
fn is_hop_by_hop(name: &str) -> bool {
    const HOP: [&str; 10] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    ];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Comma-separated tokens of a field value, trimmed, empty ones skipped.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(|t| t.trim_ascii()).filter(|t| !t.is_empty())
}

/// What a head's fields say about framing and the connection.
#[derive(Default)]
struct Fields<'a> {
    content_length: Option<u64>,
    chunked: bool,
    other_coding: bool,
    close: bool,
    keep_alive: bool,
    named: Vec<&'a [u8]>,
    forwarded_for: Vec<&'a [u8]>,
    has_host: bool,
    expect_continue: bool,
}

fn read_fields<'a>(headers: &[httparse::Header<'a>]) -> Result<Fields<'a>, HeadError> {
    let mut f = Fields::default();
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()));
            let n = v
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| HeadError::Malformed("invalid Content-Length".into()))?;
            if f.content_length.is_some_and(|m| m != n) {
                return Err(HeadError::Malformed("conflicting Content-Length values".into()));
            }
            f.content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            for t in tokens(h.value) {
                // Only the final coding decides framing; anything after chunked is an error.
                if f.chunked {
                    f.other_coding = true;
                }
                if t.eq_ignore_ascii_case(b"chunked") { f.chunked = true } else { f.other_coding = true }
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    f.close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    f.keep_alive = true;
                } else {
                    f.named.push(t);
                }
            }
        } else if h.name.eq_ignore_ascii_case("x-forwarded-for") {
            f.forwarded_for.push(h.value.trim_ascii());
        } else if h.name.eq_ignore_ascii_case("host") {
            f.has_host = true;
        } else if h.name.eq_ignore_ascii_case("expect") {
            f.expect_continue |= h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
    }
    Ok(f)
}

/// Writes the fields that pass to the next hop.
fn write_end_to_end(out: &mut Vec<u8>, headers: &[httparse::Header<'_>], named: &[&[u8]], request: bool) {
    for h in headers {
        if is_hop_by_hop(h.name)
            || (request && (h.name.eq_ignore_ascii_case("x-forwarded-for") || h.name.eq_ignore_ascii_case("expect")))
            || (named.iter().any(|n| n.eq_ignore_ascii_case(h.name.as_bytes())) && !h.name.eq_ignore_ascii_case("host"))
        {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
}

/// The length of a complete head, `None` for a partial one, or why it is refused.
fn head_len(parsed: httparse::Result<usize>, buffered: usize) -> Result<Option<usize>, HeadError> {
    match parsed {
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) if buffered >= MAX_HEAD => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(e) => Err(HeadError::Malformed(e.to_string())),
    }
}

/// Parses a request head at the start of `buf`. `Ok(None)`: incomplete, read more.
/// On success the head for the backend is in `out`, without its final blank line (so the
/// caller can add `Host`); the body framing is already written.
pub(crate) fn parse_request(
    buf: &[u8],
    client: IpAddr,
    want_line: bool,
    out: &mut Vec<u8>,
) -> Result<Option<RequestHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let Some(len) = head_len(req.parse(buf), buf.len())? else { return Ok(None) };
    let (Some(method), Some(path), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed("incomplete request line".into()));
    };
    let f = read_fields(req.headers)?;
    let framing = if f.chunked || f.other_coding {
        if f.other_coding {
            return Err(HeadError::Malformed("unsupported Transfer-Encoding (only chunked)".into()));
        }
        Framing::Chunked
    } else {
        match f.content_length {
            Some(0) | None => Framing::Empty,
            Some(n) => Framing::Length(n),
        }
    };
    let http10 = minor == 0;
    // Transfer-Encoding with Content-Length (or on HTTP/1.0) is how requests get smuggled past
    // proxies that frame differently: honour chunked, but close afterwards (RFC 9112 §6.1).
    let ambiguous = f.chunked && (f.content_length.is_some() || http10);
    let keep_alive = !ambiguous && if http10 { f.keep_alive && !f.close } else { !f.close };
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    write_end_to_end(out, req.headers, &f.named, true);
    out.extend_from_slice(b"X-Forwarded-For: ");
    for prior in &f.forwarded_for {
        out.extend_from_slice(prior);
        out.extend_from_slice(b", ");
    }
    let _ = write!(ByteWriter(out), "{client}\r\n");
    match framing {
        Framing::Length(n) => {
            let _ = write!(ByteWriter(out), "Content-Length: {n}\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Framing::Empty if f.content_length == Some(0) => out.extend_from_slice(b"Content-Length: 0\r\n"),
        Framing::Empty | Framing::UntilClose => {}
    }
    Ok(Some(RequestHead {
        len,
        framing,
        keep_alive,
        http10,
        is_head: method == "HEAD",
        idempotent: matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"),
        has_host: f.has_host,
        expect_continue: f.expect_continue && framing != Framing::Empty,
        line: if want_line { format!("{method} {path}") } else { String::new() },
    }))
}

/// Parses a response head at the start of `buf`; `Ok(None)`: incomplete. The head for the
/// client goes to `out` without its final blank line; `chunked_ok` is false for HTTP/1.0
/// clients, in which case a chunked body will be decoded and the caller must close afterwards.
pub(crate) fn parse_response(
    buf: &[u8],
    request_was_head: bool,
    chunked_ok: bool,
    out: &mut Vec<u8>,
) -> Result<Option<ResponseHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let Some(len) = head_len(resp.parse(buf), buf.len())? else { return Ok(None) };
    let (Some(minor), Some(status)) = (resp.version, resp.code) else {
        return Err(HeadError::Malformed("incomplete status line".into()));
    };
    if status == 101 {
        return Err(HeadError::Unsupported("protocol upgrades are not proxied"));
    }
    let f = read_fields(resp.headers)?;
    if f.other_coding {
        // Transfer codings other than chunked (gzip, ...) would have to be forwarded with
        // their header; backends send them practically never.
        return Err(HeadError::Unsupported("transfer codings other than chunked are not proxied"));
    }
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 || request_was_head {
        Framing::Empty
    } else if f.chunked {
        Framing::Chunked
    } else {
        match f.content_length {
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    let persistent = if minor == 0 { f.keep_alive && !f.close } else { !f.close };
    out.clear();
    let _ = write!(ByteWriter(out), "HTTP/1.1 {status} {}\r\n", resp.reason.unwrap_or(""));
    write_end_to_end(out, resp.headers, &f.named, false);
    match framing {
        Framing::Length(n) => {
            let _ = write!(ByteWriter(out), "Content-Length: {n}\r\n");
        }
        Framing::Chunked if chunked_ok => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        // HEAD and 304 keep the length the backend announced.
        Framing::Empty => {
            // 204 never carries a length; HEAD and 304 keep the one the backend announced.
            if let Some(n) = f.content_length.filter(|_| status >= 200 && status != 204) {
                let _ = write!(ByteWriter(out), "Content-Length: {n}\r\n");
            }
        }
        Framing::Chunked | Framing::UntilClose => {}
    }
    Ok(Some(ResponseHead { len, status, framing, reusable: persistent && framing != Framing::UntilClose }))
}

/// `fmt::Write` into a byte vector.
struct ByteWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Tracks where a chunked body ends while its bytes pass through, and finds its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chunked {
    state: ChunkState,
    /// Bytes of extensions or trailers seen, bounded.
    extra: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size { value: u64, digits: u8 },
    Extension { value: u64 },
    SizeLf { value: u64 },
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// Extensions and trailers together may take this many bytes per body.
const MAX_CHUNK_EXTRA: usize = 16 * 1024;

impl Default for Chunked {
    fn default() -> Self {
        Self { state: ChunkState::Size { value: 0, digits: 0 }, extra: 0 }
    }
}

impl Chunked {
    pub(crate) fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consumes the body's bytes from the front of `input`; returns how many belong to it (the
    /// rest follows the body). `on_data` receives the ranges of `input` that are payload.
    pub(crate) fn feed(
        &mut self,
        input: &[u8],
        mut on_data: impl FnMut(std::ops::Range<usize>),
    ) -> Result<usize, &'static str> {
        use ChunkState::*;
        let mut i = 0;
        while i < input.len() && self.state != Done {
            let b = input[i];
            self.state = match self.state {
                Size { value, digits } => match (b as char).to_digit(16) {
                    Some(d) if digits < 15 => Size { value: value * 16 + u64::from(d), digits: digits + 1 },
                    Some(_) => return Err("chunk size too large"),
                    None if digits == 0 => return Err("chunk size missing"),
                    None if b == b'\r' => SizeLf { value },
                    None if b == b';' || b == b' ' || b == b'\t' => Extension { value },
                    None => return Err("invalid chunk size"),
                },
                Extension { value } => {
                    self.extra += 1;
                    if self.extra > MAX_CHUNK_EXTRA {
                        return Err("chunk extensions too long");
                    }
                    match b {
                        b'\r' => SizeLf { value },
                        // A bare LF or other control byte could end the line for a lenient
                        // backend and smuggle what follows: refuse it.
                        b'\t' | b' '..=b'~' | 0x80..=0xff => Extension { value },
                        _ => return Err("control byte in a chunk extension"),
                    }
                }
                SizeLf { value } if b == b'\n' => {
                    if value == 0 {
                        TrailerStart
                    } else {
                        Data(value)
                    }
                }
                Data(left) => {
                    let take = (left.min((input.len() - i) as u64)) as usize;
                    on_data(i..i + take);
                    i += take;
                    self.state = if left == take as u64 { DataCr } else { Data(left - take as u64) };
                    continue;
                }
                DataCr if b == b'\r' => DataLf,
                DataLf if b == b'\n' => Size { value: 0, digits: 0 },
                TrailerStart if b == b'\r' => EndLf,
                TrailerStart | Trailer => {
                    self.extra += 1;
                    if self.extra > MAX_CHUNK_EXTRA {
                        return Err("trailers too long");
                    }
                    match b {
                        b'\r' => TrailerLf,
                        b'\t' | b' '..=b'~' | 0x80..=0xff => Trailer,
                        _ => return Err("control byte in a trailer"),
                    }
                }
                TrailerLf if b == b'\n' => TrailerStart,
                EndLf if b == b'\n' => Done,
                _ => return Err("invalid chunked framing"),
            };
            i += 1;
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 7));

    fn req(text: &str) -> (Result<Option<RequestHead>, HeadError>, String) {
        let mut out = Vec::new();
        let r = parse_request(text.as_bytes(), IP, true, &mut out);
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn request_heads_are_rewritten_for_the_backend() {
        let text = "POST /a?b=1 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nX-Forwarded-For: 1.2.3.4\r\nContent-Length: 5\r\nAccept: */*\r\n\r\nhello";
        let (r, out) = req(text);
        let r = r.unwrap().unwrap();
        assert_eq!(r.framing, Framing::Length(5));
        assert!(r.keep_alive && !r.http10 && r.has_host);
        assert_eq!(r.len, text.len() - "hello".len());
        assert_eq!(r.line, "POST /a?b=1");
        assert!(!r.idempotent, "a POST is never replayed");
        assert!(req("GET / HTTP/1.1\r\n\r\n").0.unwrap().unwrap().idempotent);
        assert_eq!(
            out,
            "POST /a?b=1 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\nX-Forwarded-For: 1.2.3.4, 10.0.0.7\r\nContent-Length: 5\r\n"
        );
    }

    #[test]
    fn request_framing_and_persistence() {
        let framing = |t: &str| req(t).0.map(|r| r.map(|r| (r.framing, r.keep_alive)));
        assert_eq!(framing("GET / HTTP/1.1\r\n\r\n"), Ok(Some((Framing::Empty, true))));
        assert_eq!(framing("GET / HTTP/1.0\r\n\r\n"), Ok(Some((Framing::Empty, false))));
        assert_eq!(framing("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"), Ok(Some((Framing::Empty, true))));
        assert_eq!(framing("GET / HTTP/1.1\r\nConnection: close\r\n\r\n"), Ok(Some((Framing::Empty, false))));
        assert_eq!(framing("PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), Ok(Some((Framing::Chunked, true))));
        assert_eq!(framing("GET / HTTP/1.1\r\nHost: a"), Ok(None));
        assert!(matches!(
            framing("PUT / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(framing("PUT / HTTP/1.1\r\nContent-Length: -3\r\n\r\n"), Err(HeadError::Malformed(_))));
        assert!(matches!(framing("PUT / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"), Err(HeadError::Malformed(_))));
        assert!(matches!(
            framing("PUT / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(framing("GARBAGE\r\n\r\n"), Err(HeadError::Malformed(_))));
        // Chunked with a Content-Length: chunked wins, and the connection closes after.
        assert_eq!(
            framing("POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Ok(Some((Framing::Chunked, false)))
        );
        // `Connection: host` cannot strip Host.
        let (_, out) = req("GET / HTTP/1.1\r\nHost: h\r\nConnection: host\r\n\r\n");
        assert!(out.contains("Host: h\r\n"), "{out}");
        let huge = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(framing(&huge), Err(HeadError::TooLarge));
    }

    #[test]
    fn response_heads_framing_and_reuse() {
        let resp = |t: &str, head: bool, chunked_ok: bool| {
            let mut out = Vec::new();
            let r = parse_response(t.as_bytes(), head, chunked_ok, &mut out).unwrap().unwrap();
            (r.status, r.framing, r.reusable, String::from_utf8(out).unwrap())
        };
        assert_eq!(
            resp("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=5\r\nX-A: b\r\n\r\nhi", false, true),
            (200, Framing::Length(2), true, "HTTP/1.1 200 OK\r\nX-A: b\r\nContent-Length: 2\r\n".into())
        );
        assert_eq!(resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, true).1, Framing::Chunked);
        assert!(
            resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, true)
                .3
                .contains("Transfer-Encoding: chunked")
        );
        assert!(!resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, false).3.contains("chunked"));
        assert_eq!(resp("HTTP/1.1 200 OK\r\n\r\n", false, true).1, Framing::UntilClose);
        assert!(!resp("HTTP/1.1 200 OK\r\n\r\n", false, true).2);
        assert!(!resp("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", false, true).2);
        assert!(!resp("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false, true).2);
        assert_eq!(resp("HTTP/1.1 304 Not Modified\r\n\r\n", false, true).1, Framing::Empty);
        assert!(
            !resp("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", false, true).3.contains("Content-Length")
        );
        assert_eq!(resp("HTTP/1.1 100 Continue\r\n\r\n", false, true).1, Framing::Empty);
        let head = resp("HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", true, true);
        assert_eq!((head.1, head.2), (Framing::Empty, true));
        assert!(head.3.contains("Content-Length: 99"));
    }

    fn dechunk(input: &[u8], split: usize) -> Result<(usize, Vec<u8>), &'static str> {
        let mut c = Chunked::default();
        let mut data = Vec::new();
        let a = c.feed(&input[..split], |r| data.extend_from_slice(&input[r]))?;
        let mut used = a;
        if !c.is_done() {
            let rest = &input[split..];
            used += c.feed(rest, |r| data.extend_from_slice(&rest[r]))?;
        }
        assert!(c.is_done());
        Ok((used, data))
    }

    #[test]
    fn chunked_bodies_end_where_they_end_at_any_split() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\nNEXT";
        let end = body.len() - 4;
        for split in 0..=end {
            assert_eq!(dechunk(body, split), Ok((end, b"hello world".to_vec())), "split at {split}");
        }
        assert_eq!(dechunk(b"0\r\n\r\n", 2), Ok((5, vec![])));
    }

    #[test]
    fn bad_chunked_framing_is_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX",
            b"\r\n",
            b"1234567890abcdef0\r\n",
            b"5\nhello",
            b"0;\n\r\n",
            b"0\r\nX: a\nGET /admin",
        ] {
            assert!(Chunked::default().feed(bad, |_| {}).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
