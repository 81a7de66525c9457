//! HTTP/1.x message heads and body framing for the proxy: parse a head, decide how its body is
//! delimited, and write the head the next hop should see. Pure functions over byte slices.

use std::borrow::Cow;
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
            // An empty element (`, chunked`, `chunked,`, an empty value) is skipped by some
            // parsers and not by others, which is how framing gets smuggled: refuse it.
            for t in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if t.is_empty() {
                    return Err(HeadError::Malformed("empty element in Transfer-Encoding".into()));
                }
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
        } else if h.name.eq_ignore_ascii_case("expect") {
            f.expect_continue |= h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
    }
    Ok(f)
}

/// Writes the fields that pass to the next hop; `drop_host` leaves out `Host` (replaced by the
/// authority of an absolute-form target).
fn write_end_to_end(
    out: &mut Vec<u8>,
    headers: &[httparse::Header<'_>],
    named: &[&[u8]],
    request: bool,
    drop_host: bool,
) {
    for h in headers {
        if is_hop_by_hop(h.name)
            || (request && (h.name.eq_ignore_ascii_case("x-forwarded-for") || h.name.eq_ignore_ascii_case("expect")))
            || (drop_host && h.name.eq_ignore_ascii_case("host"))
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

/// `tchar` (RFC 9110 §5.6.2): a byte of a token.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A byte of a `reg-name` (RFC 3986 §3.2.2): unreserved, sub-delims or `%`.
fn is_reg_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b)
}

/// Whether `v` is `uri-host [":" port]` (RFC 9110 §7.2): a name or a bracketed IP literal, no
/// userinfo, no whitespace, brackets closed, digits for a port.
fn valid_authority(v: &[u8]) -> bool {
    let (host_ok, port) = match v.strip_prefix(b"[") {
        Some(rest) => match rest.iter().position(|&b| b == b']') {
            Some(end) => (end > 0 && rest[..end].iter().all(|&b| b == b':' || is_reg_name_byte(b)), &rest[end + 1..]),
            None => return false,
        },
        None => {
            let end = v.iter().position(|&b| b == b':').unwrap_or(v.len());
            (end > 0 && v[..end].iter().all(|&b| is_reg_name_byte(b)), &v[end..])
        }
    };
    host_ok
        && match port {
            [] => true,
            [b':', digits @ ..] => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
            _ => false,
        }
}

/// Splits an absolute-form target (`http://authority/path?query`) into the authority and the
/// origin-form target; `None` for the other forms (`/path`, `*`, CONNECT's `host:port`).
fn absolute_form(target: &str) -> Result<Option<(&str, Cow<'_, str>)>, HeadError> {
    // The origin form, nearly every request: no search for a scheme.
    if target.starts_with('/') {
        return Ok(None);
    }
    let Some((scheme, rest)) = target.split_once("://") else { return Ok(None) };
    let is_scheme = scheme.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
        && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    if !is_scheme || target.starts_with('/') {
        return Ok(None);
    }
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(HeadError::Malformed(format!("unsupported scheme in absolute-form target: {scheme}")));
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if !valid_authority(authority.as_bytes()) {
        return Err(HeadError::Malformed("invalid authority in absolute-form target".into()));
    }
    let origin = match path.as_bytes().first() {
        Some(b'/') => Cow::Borrowed(path),
        _ => Cow::Owned(format!("/{path}")),
    };
    Ok(Some((authority, origin)))
}

/// A request line saying `HTTP/1.x` with x > 1 is served as HTTP/1.1, the highest 1.x we speak
/// (RFC 9110 §2.5): a copy of `buf` with the minor version lowered, `None` if there is nothing
/// to lower. Works on a partial line too, so a head parses the same however it was split.
fn lower_minor_version(buf: &[u8]) -> Option<Vec<u8>> {
    let start = buf.iter().position(|&b| b != b'\r' && b != b'\n')?;
    let line = &buf[start..];
    let line = &line[..line.iter().position(|&b| b == b'\n').unwrap_or(line.len())];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let version = line.len().checked_sub(9).map(|at| &line[at..])?;
    if !(version.starts_with(b" HTTP/1.") && (b'2'..=b'9').contains(&version[8])) {
        return None;
    }
    let mut copy = buf.to_vec();
    copy[start + line.len() - 1] = b'1';
    Some(copy)
}

/// `METHOD target` for the access log, which quotes it: `"`, `\`, control bytes and bytes
/// beyond ASCII are written `\xHH`, as nginx does, so a target cannot break the quoting.
fn log_line(method: &str, target: &str) -> String {
    let mut line = String::with_capacity(method.len() + 1 + target.len());
    line.push_str(method);
    line.push(' ');
    for &b in target.as_bytes() {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            let _ = write!(line, "\\x{b:02X}");
        } else {
            line.push(char::from(b));
        }
    }
    line
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
    let lowered = lower_minor_version(buf);
    let buf = lowered.as_deref().unwrap_or(buf);
    // Room for the fields, not written first (4 KiB of zeroes a request otherwise).
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let Some(len) = head_len(req.parse_with_uninit_headers(buf, &mut headers), buf.len())? else { return Ok(None) };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed("incomplete request line".into()));
    };
    let http10 = minor == 0;
    // RFC 9112 §3.2: more than one Host, an invalid one, or none on HTTP/1.1 is a 400.
    let mut hosts = req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("host"));
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(HeadError::Malformed("more than one Host field".into()));
    }
    if host.is_some_and(|h| !valid_authority(h.value)) {
        return Err(HeadError::Malformed("invalid Host field".into()));
    }
    if host.is_none() && !http10 {
        return Err(HeadError::Malformed("HTTP/1.1 request without a Host field".into()));
    }
    // RFC 9112 §3.2.2: an absolute-form target's authority replaces any Host field, and the
    // backend gets the origin form.
    let absolute = absolute_form(target)?;
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
    // Transfer-Encoding with Content-Length (or on HTTP/1.0) is how requests get smuggled past
    // proxies that frame differently: honour chunked, but close afterwards (RFC 9112 §6.1).
    let ambiguous = f.chunked && (f.content_length.is_some() || http10);
    let keep_alive = !ambiguous && if http10 { f.keep_alive && !f.close } else { !f.close };
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    match &absolute {
        Some((authority, origin)) => {
            let _ = write!(ByteWriter(out), "{origin} HTTP/1.1\r\nHost: {authority}\r\n");
        }
        None => {
            out.extend_from_slice(target.as_bytes());
            out.extend_from_slice(b" HTTP/1.1\r\n");
        }
    }
    write_end_to_end(out, req.headers, &f.named, true, absolute.is_some());
    out.extend_from_slice(b"X-Forwarded-For: ");
    for prior in &f.forwarded_for {
        out.extend_from_slice(prior);
        out.extend_from_slice(b", ");
    }
    push_ip(out, client);
    out.extend_from_slice(b"\r\n");
    match framing {
        Framing::Length(n) => push_content_length(out, n),
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
        has_host: host.is_some() || absolute.is_some(),
        expect_continue: f.expect_continue && framing != Framing::Empty,
        line: if want_line { log_line(method, target) } else { String::new() },
    }))
}

/// The value of the first `name` field of the request head `head` (a head that
/// [`parse_request`] accepted), for hashing; `None` when it has none.
pub(crate) fn header_value<'a>(head: &'a [u8], name: &str) -> Option<Cow<'a, [u8]>> {
    // Read as `parse_request` read it (HTTP/1.2 and up as 1.1).
    if let Some(lowered) = lower_minor_version(head) {
        return header_value(&lowered, name).map(|v| Cow::Owned(v.into_owned()));
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(head).ok()?;
    req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| Cow::Borrowed(h.value))
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
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, &mut headers);
    let Some(len) = head_len(parsed, buf.len())? else { return Ok(None) };
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
    // Three digits whatever the value: a backend's `000` stays `000` (httparse takes three).
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&[
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ]);
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    write_end_to_end(out, resp.headers, &f.named, false, false);
    match framing {
        Framing::Length(n) => push_content_length(out, n),
        Framing::Chunked if chunked_ok => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        // HEAD and 304 keep the length the backend announced.
        Framing::Empty => {
            // 204 never carries a length; HEAD and 304 keep the one the backend announced.
            if let Some(n) = f.content_length.filter(|_| status >= 200 && status != 204) {
                push_content_length(out, n);
            }
        }
        Framing::Chunked | Framing::UntilClose => {}
    }
    Ok(Some(ResponseHead { len, status, framing, reusable: persistent && framing != Framing::UntilClose }))
}

/// `Content-Length: n` and its line end; digits written by hand, as they are on every
/// request and response (`fmt` costs several times more).
fn push_content_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"Content-Length: ");
    push_u64(out, n);
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal.
fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// An address as `Display` writes it: IPv4 by hand (every request names its client), IPv6
/// through `fmt` (its shortest form has rules of its own).
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_u64(out, u64::from(octet));
            }
        }
        IpAddr::V6(_) => {
            let _ = write!(ByteWriter(out), "{ip}");
        }
    }
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
    Size {
        value: u64,
        digits: u8,
    },
    /// Whitespace after the size: only `;` or the line's end may follow.
    SizeWs {
        value: u64,
    },
    Extension {
        value: u64,
        at: Ext,
    },
    SizeLf {
        value: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// The start of a trailer line, or the blank line that ends the body.
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    EndLf,
    Done,
}

/// Where in `chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )`
/// (RFC 9112 §7.1.1) the decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ext {
    /// After `;`, before the name.
    NameStart,
    Name,
    /// Whitespace after the name.
    AfterName,
    /// After `=`, before the value.
    ValueStart,
    Token,
    Quoted,
    /// After a `\` inside a quoted string.
    QuotedPair,
    /// Whitespace after a value.
    AfterValue,
}

impl Ext {
    /// The position after byte `b`; `Ok(None)` at the CR that ends the size line.
    fn next(self, b: u8) -> Result<Option<Ext>, &'static str> {
        use Ext::*;
        let ws = b == b' ' || b == b'\t';
        Ok(Some(match self {
            NameStart if ws => NameStart,
            NameStart | Name if is_tchar(b) => Name,
            Name | AfterName if ws => AfterName,
            Name | AfterName if b == b'=' => ValueStart,
            ValueStart if ws => ValueStart,
            ValueStart | Token if is_tchar(b) => Token,
            ValueStart if b == b'"' => Quoted,
            Token | AfterValue if ws => AfterValue,
            Quoted if b == b'"' => AfterValue,
            Quoted if b == b'\\' => QuotedPair,
            Quoted | QuotedPair if is_field_vchar(b) => Quoted,
            Name | AfterName | Token | AfterValue if b == b';' => NameStart,
            Name | AfterName | Token | AfterValue if b == b'\r' => return Ok(None),
            // A bare LF or other control byte could end the line for a lenient backend and
            // smuggle what follows.
            _ => return Err("malformed chunk extension"),
        }))
    }
}

/// HTAB, SP, VCHAR or obs-text: what a field value (or a quoted string) may hold.
fn is_field_vchar(b: u8) -> bool {
    matches!(b, b'\t' | b' '..=b'~' | 0x80..=0xff)
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

    /// Counts one byte of extensions or trailers against [`MAX_CHUNK_EXTRA`].
    fn count_extra(&mut self, too_long: &'static str) -> Result<(), &'static str> {
        self.extra += 1;
        if self.extra > MAX_CHUNK_EXTRA { Err(too_long) } else { Ok(()) }
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
                    None if b == b';' => Extension { value, at: Ext::NameStart },
                    None if b == b' ' || b == b'\t' => SizeWs { value },
                    None => return Err("invalid chunk size"),
                },
                SizeWs { value } => {
                    self.count_extra("chunk extensions too long")?;
                    match b {
                        b' ' | b'\t' => SizeWs { value },
                        b';' => Extension { value, at: Ext::NameStart },
                        b'\r' => SizeLf { value },
                        // `5 6`, `5 xyz`: not a size, and not an extension.
                        _ => return Err("invalid chunk size"),
                    }
                }
                Extension { value, at } => {
                    self.count_extra("chunk extensions too long")?;
                    match at.next(b)? {
                        Some(at) => Extension { value, at },
                        None => SizeLf { value },
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
                TrailerStart | TrailerName | TrailerValue => {
                    self.count_extra("trailers too long")?;
                    // A trailer is a field, `name: value` (RFC 9112 §7.1.2); anything else
                    // (a folded line, a bare LF, a line without a colon) is refused.
                    match (self.state, b) {
                        (TrailerStart | TrailerName, _) if is_tchar(b) => TrailerName,
                        (TrailerName, b':') => TrailerValue,
                        (TrailerValue, b'\r') => TrailerLf,
                        (TrailerValue, _) if is_field_vchar(b) => TrailerValue,
                        (TrailerValue, _) => return Err("control byte in a trailer"),
                        _ => return Err("malformed trailer field"),
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

    #[test]
    fn numbers_and_addresses_written_by_hand_read_as_display_writes_them() {
        for n in [0, 1, 9, 10, 99, 100, 12_345, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
        let ips = [
            "0.0.0.0",
            "127.0.0.1",
            "10.200.3.45",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:1.2.3.4",
        ];
        for ip in ips {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            assert_eq!(out, ip.to_string().as_bytes());
        }
    }

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
        assert!(req("GET / HTTP/1.1\r\nHost: h\r\n\r\n").0.unwrap().unwrap().idempotent);
        assert_eq!(
            out,
            "POST /a?b=1 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\nX-Forwarded-For: 1.2.3.4, 10.0.0.7\r\nContent-Length: 5\r\n"
        );
    }

    #[test]
    fn request_framing_and_persistence() {
        let framing = |t: &str| req(t).0.map(|r| r.map(|r| (r.framing, r.keep_alive)));
        assert_eq!(framing("GET / HTTP/1.1\r\nHost: h\r\n\r\n"), Ok(Some((Framing::Empty, true))));
        assert_eq!(framing("GET / HTTP/1.0\r\n\r\n"), Ok(Some((Framing::Empty, false))));
        assert_eq!(framing("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"), Ok(Some((Framing::Empty, true))));
        assert_eq!(
            framing("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"),
            Ok(Some((Framing::Empty, false)))
        );
        assert_eq!(
            framing("PUT / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Ok(Some((Framing::Chunked, true)))
        );
        assert_eq!(framing("GET / HTTP/1.1\r\nHost: a"), Ok(None));
        assert!(matches!(
            framing("PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            framing("PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: -3\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            framing("PUT / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            framing("PUT / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(framing("GARBAGE\r\n\r\n"), Err(HeadError::Malformed(_))));
        // Chunked with a Content-Length: chunked wins, and the connection closes after.
        assert_eq!(
            framing("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Ok(Some((Framing::Chunked, false)))
        );
        // `Connection: host` cannot strip Host.
        let (_, out) = req("GET / HTTP/1.1\r\nHost: h\r\nConnection: host\r\n\r\n");
        assert!(out.contains("Host: h\r\n"), "{out}");
        let huge = format!("GET / HTTP/1.1\r\nHost: h\r\nX: {}", "a".repeat(MAX_HEAD));
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

    fn refusal(text: &str) -> String {
        match req(text).0 {
            Err(HeadError::Malformed(why)) => why,
            other => panic!("{text:?} was not refused as malformed: {other:?}"),
        }
    }

    #[test]
    fn a_request_with_two_host_fields_is_refused() {
        assert_eq!(refusal("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"), "more than one Host field");
        assert_eq!(refusal("GET / HTTP/1.1\r\nHost: a\r\nHOST: a\r\n\r\n"), "more than one Host field");
        assert_eq!(refusal("GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n"), "more than one Host field");
    }

    #[test]
    fn an_http11_request_without_host_is_refused_but_an_http10_one_is_served() {
        assert_eq!(refusal("GET / HTTP/1.1\r\nAccept: */*\r\n\r\n"), "HTTP/1.1 request without a Host field");
        // HTTP/1.0 may omit it; the proxy then adds the backend's address (see `has_host`).
        let (r, out) = req("GET / HTTP/1.0\r\n\r\n");
        assert!(!r.unwrap().unwrap().has_host);
        assert!(!out.to_ascii_lowercase().contains("host:"), "{out}");
    }

    #[test]
    fn a_host_with_spaces_or_that_is_not_an_authority_is_refused() {
        for bad in ["a b", "a\tb", "", "[::1", "::1]", "[]", "a:80x", "user@a", "a/b", "a:123456"] {
            let text = format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n");
            assert_eq!(refusal(&text), "invalid Host field", "{bad:?}");
        }
        for good in ["a", "a.test:8080", "127.0.0.1", "[::1]", "[::1]:80", "xn--d-1ga.test", "a:"] {
            let text = format!("GET / HTTP/1.1\r\nHost: {good}\r\n\r\n");
            assert!(req(&text).1.contains(&format!("Host: {good}\r\n")), "{good:?}");
        }
    }

    #[test]
    fn an_absolute_form_target_becomes_origin_form_with_the_host_from_the_uri() {
        let (r, out) = req("GET http://example.test/x?y=1 HTTP/1.1\r\nHost: other\r\nAccept: */*\r\n\r\n");
        let r = r.unwrap().unwrap();
        assert!(r.has_host);
        assert_eq!(out, "GET /x?y=1 HTTP/1.1\r\nHost: example.test\r\nAccept: */*\r\nX-Forwarded-For: 10.0.0.7\r\n");
        // The log keeps what the client sent.
        assert_eq!(r.line, "GET http://example.test/x?y=1");
        assert!(
            req("GET HTTP://[::1]:8080 HTTP/1.1\r\nHost: h\r\n\r\n")
                .1
                .starts_with("GET / HTTP/1.1\r\nHost: [::1]:8080\r\n")
        );
        assert!(
            req("GET http://a.test?q HTTP/1.1\r\nHost: h\r\n\r\n")
                .1
                .starts_with("GET /?q HTTP/1.1\r\nHost: a.test\r\n")
        );
        // HTTP/1.0 needs no Host field: the URI's authority is the Host.
        let (r, out) = req("GET https://a.test/p HTTP/1.0\r\n\r\n");
        assert!(r.unwrap().unwrap().has_host && out.starts_with("GET /p HTTP/1.1\r\nHost: a.test\r\n"), "{out}");
        // HTTP/1.1 still needs one (RFC 9112 §3.2), as nginx requires.
        assert_eq!(refusal("GET http://a.test/ HTTP/1.1\r\n\r\n"), "HTTP/1.1 request without a Host field");
        assert_eq!(
            refusal("GET http://u@a.test/ HTTP/1.1\r\nHost: a\r\n\r\n"),
            "invalid authority in absolute-form target"
        );
        assert_eq!(refusal("GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n"), "invalid authority in absolute-form target");
        assert_eq!(
            refusal("GET ftp://a.test/ HTTP/1.1\r\nHost: a\r\n\r\n"),
            "unsupported scheme in absolute-form target: ftp"
        );
        // Origin form that merely contains `://`, and CONNECT's authority form, pass unchanged.
        assert!(req("GET /r?u=http://x HTTP/1.1\r\nHost: h\r\n\r\n").1.starts_with("GET /r?u=http://x HTTP/1.1\r\n"));
        assert!(req("CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n").1.starts_with("CONNECT a.test:443 "));
    }

    #[test]
    fn transfer_encoding_with_an_empty_element_is_refused() {
        for te in [", chunked", "chunked,", "chunked, ,", "", " "] {
            let text = format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: {te}\r\n\r\n");
            assert_eq!(refusal(&text), "empty element in Transfer-Encoding", "{te:?}");
            let resp = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {te}\r\n\r\n");
            assert!(matches!(
                parse_response(resp.as_bytes(), false, true, &mut Vec::new()),
                Err(HeadError::Malformed(_))
            ));
        }
        // Codings we do not decode keep their existing answer (400 for a request).
        assert_eq!(
            refusal("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            "unsupported Transfer-Encoding (only chunked)"
        );
        let ok = req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:  Chunked \r\n\r\n").0;
        assert_eq!(ok.unwrap().unwrap().framing, Framing::Chunked);
    }

    #[test]
    fn a_backend_status_000_is_passed_on_as_three_digits() {
        for (line, want) in [("HTTP/1.1 000 Odd", "HTTP/1.1 000 Odd\r\n"), ("HTTP/1.1 042 X", "HTTP/1.1 042 X\r\n")] {
            let mut out = Vec::new();
            let text = format!("{line}\r\nContent-Length: 0\r\n\r\n");
            let r = parse_response(text.as_bytes(), false, true, &mut out).unwrap().unwrap();
            assert!(String::from_utf8(out).unwrap().starts_with(want), "{line}");
            assert!(r.status < 100);
        }
    }

    #[test]
    fn http_1_2_and_any_later_1_x_are_served_as_http_1_1() {
        for minor in 2..=9 {
            let text = format!("GET /v HTTP/1.{minor}\r\nHost: h\r\n\r\n");
            let (r, out) = req(&text);
            let r = r.unwrap().unwrap();
            assert!(!r.http10 && r.keep_alive, "1.{minor}");
            assert_eq!(r.len, text.len());
            assert!(out.starts_with("GET /v HTTP/1.1\r\nHost: h\r\n"), "{out}");
            // Like HTTP/1.1 it needs a Host.
            assert_eq!(refusal(&format!("GET / HTTP/1.{minor}\r\n\r\n")), "HTTP/1.1 request without a Host field");
        }
        assert!(req("\r\nGET / HTTP/1.2\r\nHost: h\r\n\r\n").0.unwrap().is_some(), "after a leading empty line");
        assert!(matches!(req("GET / HTTP/1.2").0, Ok(None)), "a partial line waits for more");
        for bad in ["GET / HTTP/1.10\r\nHost: h\r\n\r\n", "GET / HTTP/2.0\r\nHost: h\r\n\r\n", "GET / HTTP/1.x\r\n\r\n"]
        {
            refusal(bad);
        }
    }

    #[test]
    fn quotes_and_control_bytes_in_the_target_are_escaped_in_the_log_line() {
        assert_eq!(req("GET /a\"b HTTP/1.1\r\nHost: h\r\n\r\n").0.unwrap().unwrap().line, r"GET /a\x22b");
        assert_eq!(log_line("GET", "/a\\b\u{7f}\u{1}é"), r"GET /a\x5Cb\x7F\x01\xC3\xA9");
        assert_eq!(log_line("GET", "/plain?x=1&y=%20"), "GET /plain?x=1&y=%20");
    }

    fn feed_all(input: &[u8]) -> Result<(usize, Vec<u8>, bool), &'static str> {
        let mut c = Chunked::default();
        let mut data = Vec::new();
        let used = c.feed(input, |r| data.extend_from_slice(&input[r]))?;
        Ok((used, data, c.is_done()))
    }

    #[test]
    fn chunk_extensions_must_follow_the_grammar() {
        for good in [
            "5;name=value\r\nhello\r\n0\r\n\r\n",
            "5;a\r\nhello\r\n0;b;c=d\r\n\r\n",
            "5 ;a=b\r\nhello\r\n0\r\n\r\n",
            "5\t; a = b ; c\r\nhello\r\n0\r\n\r\n",
            "5;a=\"q \\\" ;x\"\r\nhello\r\n0\r\n\r\n",
            "5;a=\"\"\r\nhello\r\n0\r\n\r\n",
            "5 \r\nhello\r\n0\r\n\r\n",
        ] {
            assert_eq!(feed_all(good.as_bytes()), Ok((good.len(), b"hello".to_vec(), true)), "{good:?}");
        }
        for (bad, why) in [
            ("5 xyz\r\n", "invalid chunk size"),
            ("5 6\r\n", "invalid chunk size"),
            ("5;\r\n", "malformed chunk extension"),
            ("5;=v\r\n", "malformed chunk extension"),
            ("5;a=\r\n", "malformed chunk extension"),
            ("5;a b\r\n", "malformed chunk extension"),
            ("5;a=b c\r\n", "malformed chunk extension"),
            ("5;a=\"open\r\n", "malformed chunk extension"),
            ("5;a=b\n", "malformed chunk extension"),
            ("5;a=(b)\r\n", "malformed chunk extension"),
        ] {
            assert_eq!(feed_all(bad.as_bytes()), Err(why), "{bad:?}");
        }
    }

    #[test]
    fn malformed_trailer_fields_are_refused() {
        let good = "0\r\nX-Sum: abc \t def\r\nEmpty:\r\n\r\n";
        assert_eq!(feed_all(good.as_bytes()), Ok((good.len(), vec![], true)));
        for (bad, why) in [
            ("0\r\nNoColon\r\n\r\n", "malformed trailer field"),
            ("0\r\n folded: x\r\n\r\n", "malformed trailer field"),
            ("0\r\nX: a\r\n continued\r\n\r\n", "malformed trailer field"),
            ("0\r\n: v\r\n\r\n", "malformed trailer field"),
            ("0\r\nX : v\r\n\r\n", "malformed trailer field"),
            ("0\r\nX\u{1}: v\r\n\r\n", "malformed trailer field"),
            ("0\r\nX: a\u{0}b\r\n\r\n", "control byte in a trailer"),
            ("0\r\nX: a\nGET /admin", "control byte in a trailer"),
        ] {
            assert_eq!(feed_all(bad.as_bytes()), Err(why), "{bad:?}");
        }
    }

    /// Section 7: however the input is split, the parsers decide the same; what the proxy
    /// writes re-parses with the same framing.
    mod props {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;
        use proptest::sample::Index;

        /// Bytes from a grammar, with `splice` (position, junk) inserted, or wholly random.
        fn with_noise(grammar: BoxedStrategy<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
            let spliced = (grammar.clone(), any::<Index>(), vec(any::<u8>(), 1..4)).prop_map(|(mut b, at, junk)| {
                let at = at.index(b.len() + 1);
                b.splice(at..at, junk);
                b
            });
            prop_oneof![6 => grammar, 2 => spliced, 1 => vec(any::<u8>(), 0..64)]
        }

        fn header() -> impl Strategy<Value = String> {
            prop_oneof![
                "(a\\.test|127\\.0\\.6\\.1:80|\\[::1\\]|a b|\\[::1)".prop_map(|v| format!("Host: {v}")),
                (0u64..40).prop_map(|n| format!("Content-Length: {n}")),
                "(chunked|Chunked|gzip|chunked, gzip|, chunked|chunked,|)"
                    .prop_map(|v| format!("Transfer-Encoding: {v}")),
                "(close|keep-alive|Keep-Alive, X-A|X-A)".prop_map(|v| format!("Connection: {v}")),
                Just("Expect: 100-continue".to_string()),
                "[a-zA-Z0-9 ,;=\"]{0,10}".prop_map(|v| format!("X-A: {v}")),
            ]
        }

        /// A request: method, target (origin, absolute or `*`), version, a few fields, and
        /// maybe the first bytes of a body.
        fn request() -> impl Strategy<Value = Vec<u8>> {
            let method = prop_oneof![Just("GET"), Just("HEAD"), Just("POST"), Just("PUT"), Just("OPTIONS")];
            let target = prop_oneof![
                "/[a-z0-9/?=&%.\"-]{0,12}",
                "(http|HTTP|https)://(a\\.test|127\\.0\\.6\\.1:8080|\\[::1\\])([/?][a-z0-9?=]{0,8})?",
                Just("*".to_string()),
            ];
            let version = prop_oneof![Just("1.0"), Just("1.1"), Just("1.2")];
            let grammar = (method, target, version, vec(header(), 0..6), vec(any::<u8>(), 0..8)).prop_map(
                |(m, t, v, fields, body)| {
                    let mut head = format!("{m} {t} HTTP/{v}\r\n");
                    for f in fields {
                        head.push_str(&f);
                        head.push_str("\r\n");
                    }
                    let mut bytes = (head + "\r\n").into_bytes();
                    bytes.extend(body);
                    bytes
                },
            );
            with_noise(grammar.boxed())
        }

        fn response() -> impl Strategy<Value = Vec<u8>> {
            let status = prop_oneof!["[0-9]{3}", Just("000".to_string()), Just("204".into()), Just("304".into())];
            let fields = vec(header().prop_filter("no Host", |h| !h.starts_with("Host")), 0..5);
            let grammar = (prop_oneof![Just("1.0"), Just("1.1")], status, "[A-Za-z ]{0,8}", fields).prop_map(
                |(v, status, reason, fields)| {
                    let mut head = format!("HTTP/{v} {status} {reason}\r\n");
                    for f in fields {
                        head.push_str(&f);
                        head.push_str("\r\n");
                    }
                    (head + "\r\n").into_bytes()
                },
            );
            with_noise(grammar.boxed())
        }

        /// Where to cut the input: up to five points, in order.
        fn cuts(len: usize, at: &[Index]) -> Vec<usize> {
            let mut cuts: Vec<usize> = at.iter().map(|i| i.index(len + 1)).collect();
            cuts.sort_unstable();
            cuts.dedup();
            cuts
        }

        /// Re-parses a growing buffer as the proxy does after each read, until it decides.
        fn incrementally<T: PartialEq>(input: &[u8], cuts: &[usize], parse: impl Fn(&[u8]) -> Option<T>) -> Option<T> {
            cuts.iter().chain([&input.len()]).find_map(|&end| parse(&input[..end]))
        }

        /// A request parse as something comparable; `None` while incomplete.
        fn decide_request(buf: &[u8]) -> Option<String> {
            let mut out = Vec::new();
            match parse_request(buf, IP, true, &mut out) {
                Ok(None) => None,
                Ok(Some(h)) => Some(format!("{h:?} {:?}", String::from_utf8_lossy(&out))),
                Err(e) => Some(format!("{e:?}")),
            }
        }

        fn decide_response(buf: &[u8], was_head: bool, chunked_ok: bool) -> Option<String> {
            let mut out = Vec::new();
            match parse_response(buf, was_head, chunked_ok, &mut out) {
                Ok(None) => None,
                Ok(Some(h)) => Some(format!("{h:?} {:?}", String::from_utf8_lossy(&out))),
                Err(e) => Some(format!("{e:?}")),
            }
        }

        /// A chunked body from the grammar (with valid or arbitrary extensions and trailers),
        /// the payload it carries, and whether every piece was drawn from the valid ones.
        fn chunked() -> impl Strategy<Value = (Vec<u8>, Vec<u8>, bool)> {
            let ext = prop_oneof![
                3 => prop_oneof![Just(""), Just(";a"), Just(";a=b"), Just(" ;a = \"x\\\" y\""), Just(";a;b=c")]
                    .prop_map(|e| (e.to_string(), true)),
                1 => "[ -~]{0,6}".prop_map(|e| (e, false)),
            ];
            let chunk = (vec(any::<u8>(), 1..24), ext, any::<bool>());
            let trailer = prop_oneof![
                3 => prop_oneof![Just("X-T: v"), Just("Empty:"), Just("X-U: a b\t c")].prop_map(|t| (t.to_string(), true)),
                1 => "[ -~]{0,8}".prop_map(|t| (t, false)),
            ];
            (vec(chunk, 0..4), vec(trailer, 0..3)).prop_map(|(chunks, trailers)| {
                let (mut body, mut data, mut valid) = (Vec::new(), Vec::new(), true);
                for (bytes, (ext, ext_ok), upper) in chunks {
                    let size = if upper { format!("{:X}", bytes.len()) } else { format!("{:x}", bytes.len()) };
                    body.extend(format!("{size}{ext}\r\n").into_bytes());
                    body.extend(&bytes);
                    body.extend(b"\r\n");
                    data.extend(bytes);
                    valid &= ext_ok;
                }
                body.extend(b"0\r\n");
                for (t, ok) in trailers {
                    body.extend(format!("{t}\r\n").into_bytes());
                    valid &= ok;
                }
                body.extend(b"\r\n");
                (body, data, valid)
            })
        }

        /// Feeds `input` to one decoder in pieces, as the proxy does: (bytes of the body, its
        /// payload, whether it ended).
        fn dechunk_in_pieces(input: &[u8], cuts: &[usize]) -> Result<(usize, Vec<u8>, bool), &'static str> {
            let mut c = Chunked::default();
            let (mut used, mut data, mut from) = (0, Vec::new(), 0);
            for &to in cuts.iter().chain([&input.len()]) {
                if c.is_done() {
                    break;
                }
                let piece = &input[from..to];
                used += c.feed(piece, |r| data.extend_from_slice(&piece[r]))?;
                from = to;
            }
            Ok((used, data, c.is_done()))
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            #[test]
            fn a_request_head_parses_the_same_however_it_is_split(input in request(), at in vec(any::<Index>(), 1..6)) {
                let cuts = cuts(input.len(), &at);
                prop_assert_eq!(incrementally(&input, &cuts, decide_request), decide_request(&input));
            }

            #[test]
            fn a_response_head_parses_the_same_however_it_is_split(
                input in response(),
                at in vec(any::<Index>(), 1..6),
                was_head: bool,
                chunked_ok: bool,
            ) {
                let cuts = cuts(input.len(), &at);
                let decide = |b: &[u8]| decide_response(b, was_head, chunked_ok);
                prop_assert_eq!(incrementally(&input, &cuts, decide), decide(&input));
            }

            #[test]
            fn a_forwarded_request_head_reparses_with_the_same_method_target_and_framing(input in request()) {
                let mut out = Vec::new();
                let Ok(Some(head)) = parse_request(&input, IP, true, &mut out) else { return Ok(()) };
                // What `http.rs` adds: the backend's address when the client sent no Host, the blank line.
                if !head.has_host {
                    out.extend_from_slice(b"Host: 127.0.6.1:8001\r\n");
                }
                out.extend_from_slice(b"\r\n");
                let mut again = Vec::new();
                let forwarded = parse_request(&out, IP, true, &mut again);
                let Ok(Some(forwarded)) = forwarded else {
                    return Err(TestCaseError::fail(format!("{forwarded:?} for {:?}", String::from_utf8_lossy(&out))));
                };
                prop_assert_eq!(forwarded.len, out.len());
                prop_assert_eq!(forwarded.framing, head.framing);
                prop_assert_eq!((forwarded.is_head, forwarded.idempotent), (head.is_head, head.idempotent));
                // The method, and the target in origin form (an absolute-form one's path).
                let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut original = httparse::Request::new(&mut fields);
                let lowered = lower_minor_version(&input);
                original.parse(lowered.as_deref().unwrap_or(&input)).expect("it parsed before");
                let (method, target) = (original.method.unwrap_or(""), original.path.unwrap_or(""));
                let origin = absolute_form(target).ok().flatten().map_or(Cow::Borrowed(target), |(_, o)| o);
                prop_assert_eq!(forwarded.line, log_line(method, &origin));
                // Connection fields are hop-by-hop: towards the backend the exchange is always
                // HTTP/1.1 keep-alive (pooled), whatever the client asked for its own connection.
                prop_assert!(forwarded.keep_alive && !forwarded.http10 && forwarded.has_host);
            }

            #[test]
            fn a_forwarded_response_head_reparses_with_the_same_status_and_framing(input in response(), was_head: bool) {
                let mut out = Vec::new();
                let Ok(Some(head)) = parse_response(&input, was_head, true, &mut out) else { return Ok(()) };
                out.extend_from_slice(b"\r\n");
                let forwarded = parse_response(&out, was_head, true, &mut Vec::new());
                let Ok(Some(forwarded)) = forwarded else {
                    return Err(TestCaseError::fail(format!("{forwarded:?} for {:?}", String::from_utf8_lossy(&out))));
                };
                prop_assert_eq!((forwarded.len, forwarded.status, forwarded.framing), (out.len(), head.status, head.framing));
            }

            #[test]
            fn a_chunked_body_decodes_the_same_however_it_is_split(
                (body, data, valid) in chunked(),
                tail in vec(any::<u8>(), 0..6),
                at in vec(any::<Index>(), 1..6),
            ) {
                let mut input = body.clone();
                input.extend(&tail);
                let whole = dechunk_in_pieces(&input, &[]);
                prop_assert_eq!(dechunk_in_pieces(&input, &cuts(input.len(), &at)), whole.clone());
                if valid {
                    prop_assert_eq!(whole, Ok((body.len(), data, true)));
                }
            }

            #[test]
            fn random_bytes_decode_the_same_however_they_are_split(
                input in vec(any::<u8>(), 0..48),
                at in vec(any::<Index>(), 1..6),
            ) {
                prop_assert_eq!(dechunk_in_pieces(&input, &cuts(input.len(), &at)), dechunk_in_pieces(&input, &[]));
            }
        }
    }
}
