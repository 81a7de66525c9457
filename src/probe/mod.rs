//! One probe engine for every kind of target: ICMP echo, TCP connect, the classic UDP ping and
//! HTTP. Each probe yields a [`Sample`]; `stats` turns samples into loss, RTT and jitter.

pub mod icmp;
pub mod tcp;
pub mod udp;
pub mod web;

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;

/// The kind of probe a target gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    Icmp,
    Tcp,
    Udp,
    Http,
}

impl ProbeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Icmp => "icmp",
            ProbeKind::Tcp => "tcp",
            ProbeKind::Udp => "udp",
            ProbeKind::Http => "http",
        }
    }
}

impl fmt::Display for ProbeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The local addresses this process's UDP probes send from, so that the lab servers can tell a
/// health probe from a user's ping and leave it out of their logs. A cheap handle: the monitor
/// adds to it, the servers it is handed to at bind time read it. Bounded.
#[derive(Debug, Clone, Default)]
pub struct ProbeSources(Arc<RwLock<HashSet<SocketAddr>>>);

impl ProbeSources {
    /// Most addresses remembered (one per probed UDP target).
    const MAX: usize = 4096;

    pub fn add(&self, addr: SocketAddr) {
        let mut set = self.0.write().unwrap_or_else(|p| p.into_inner());
        if set.len() < Self::MAX {
            set.insert(addr);
        }
    }

    pub fn contains(&self, addr: SocketAddr) -> bool {
        self.0.read().unwrap_or_else(|p| p.into_inner()).contains(&addr)
    }
}

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An echo reply (ICMP or UDP) of this many bytes.
    Reply { bytes: usize, ttl: Option<u8> },
    /// A TCP connection was accepted.
    Connected,
    /// An HTTP response head arrived with this status, one the probe accepts.
    Http(u16),
    /// An HTTP response head arrived with a status the probe does not accept.
    Status(u16),
    /// Nothing came back in time.
    Timeout,
    /// The target said no (connection refused, port or host unreachable) or failed otherwise.
    Failed(String),
    /// We could not probe (out of descriptors or memory here): says nothing about the target.
    Local(String),
}

/// The outcome of a probe that failed with `e`: ours when we ran out of descriptors or memory,
/// the target's otherwise.
pub fn failure(e: &std::io::Error) -> Outcome {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => Outcome::Local(words(e)),
        _ => Outcome::Failed(words(e)),
    }
}

/// An I/O error as a person reads it: `Connection refused`, without Rust's ` (os error 111)`.
pub fn words(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_string(),
        _ => text,
    }
}

/// One probe's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub seq: u64,
    /// Round-trip time, for probes that got an answer.
    pub rtt: Option<Duration>,
    pub outcome: Outcome,
}

impl Sample {
    /// Whether this sample says the target is up.
    pub fn up(&self) -> bool {
        match self.outcome {
            Outcome::Reply { .. } | Outcome::Connected => true,
            Outcome::Http(_) => true,
            Outcome::Status(_) | Outcome::Timeout | Outcome::Failed(_) | Outcome::Local(_) => false,
        }
    }
}

/// Why probing could not start at all.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "ICMP sockets are not permitted here ({0}); allow unprivileged ping with \
         `sysctl -w net.ipv4.ping_group_range=\"0 2147483647\"`, or run as root (or with CAP_NET_RAW)"
    )]
    NotPermitted(std::io::Error),
    #[error("cannot open an ICMP socket: {0}")]
    Socket(std::io::Error),
    #[error("cannot resolve host '{0}': {1}")]
    Resolve(String, String),
}

/// The HTTP statuses a probe takes for up, e.g. `200-399`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatusRange {
    pub lo: u16,
    pub hi: u16,
}

impl StatusRange {
    /// Anything but a server error: what the monitor's `http://` targets accept.
    pub const NOT_5XX: StatusRange = StatusRange { lo: 100, hi: 499 };
    /// Success and redirects: what a balancer's health check accepts by default (HAProxy's).
    pub const OK: StatusRange = StatusRange { lo: 200, hi: 399 };

    pub fn contains(&self, status: u16) -> bool {
        (self.lo..=self.hi).contains(&status)
    }
}

impl FromStr for StatusRange {
    type Err = String;
    /// `200` or `200-399`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is not a status or range; write it like 200 or 200-399");
        let code = |t: &str| t.trim().parse::<u16>().ok().filter(|c| (100..=599).contains(c)).ok_or_else(bad);
        let (lo, hi) = match s.split_once('-') {
            Some((a, b)) => (code(a)?, code(b)?),
            None => (code(s)?, code(s)?),
        };
        if lo > hi {
            return Err(bad());
        }
        Ok(StatusRange { lo, hi })
    }
}

impl fmt::Display for StatusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi { write!(f, "{}", self.lo) } else { write!(f, "{}-{}", self.lo, self.hi) }
    }
}

/// A UDP exchange other than the classic ping: send these bytes, expect a reply starting with
/// those (any reply when empty).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UdpExchange {
    pub send: Vec<u8>,
    pub expect: Vec<u8>,
}

/// See [`Target::probe_key`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ProbeKey {
    Icmp(IpAddr),
    Other(Box<Target>),
}

/// A monitored target, parsed from `HOST`, `tcp://HOST:PORT`, `udp://HOST:PORT` or `http://...`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Icmp {
        host: String,
        ip: IpAddr,
    },
    Tcp {
        host: String,
        addr: SocketAddr,
    },
    /// The classic UDP ping, or `exchange` when given.
    Udp {
        host: String,
        addr: SocketAddr,
        exchange: Option<UdpExchange>,
    },
    Http {
        url: String,
        addr: SocketAddr,
        host_header: String,
        path: String,
        expect: StatusRange,
    },
}

impl Target {
    /// Whether two targets are probed the same way, so one probe can serve both: ICMP targets
    /// when they share an address (replies are matched by address), the others when every part
    /// of the probe (address, path, expected statuses, exchange) is the same.
    pub fn probe_key(&self) -> ProbeKey {
        match self {
            Target::Icmp { ip, .. } => ProbeKey::Icmp(*ip),
            other => ProbeKey::Other(Box::new(other.clone())),
        }
    }

    /// What makes two targets the same: ICMP targets are the same host when they share an
    /// address (replies are matched by address), the others when they are written alike.
    pub fn identity(&self) -> String {
        match self {
            Target::Icmp { ip, .. } => format!("icmp {ip}"),
            other => other.to_string(),
        }
    }

    /// The kind of probe it gets.
    pub fn kind(&self) -> ProbeKind {
        match self {
            Target::Icmp { .. } => ProbeKind::Icmp,
            Target::Tcp { .. } => ProbeKind::Tcp,
            Target::Udp { .. } => ProbeKind::Udp,
            Target::Http { .. } => ProbeKind::Http,
        }
    }

    /// The address probes go to (port 0 for ICMP).
    pub fn addr(&self) -> SocketAddr {
        match self {
            Target::Icmp { ip, .. } => SocketAddr::new(*ip, 0),
            Target::Tcp { addr, .. } | Target::Udp { addr, .. } | Target::Http { addr, .. } => *addr,
        }
    }

    /// The HTTP health check of a backend: `GET path` with the backend's address as `Host`,
    /// up when the status is in `expect`.
    pub fn http_check(addr: SocketAddr, path: &str, expect: StatusRange) -> Self {
        Target::Http {
            url: format!("http://{addr}{path}"),
            addr,
            host_header: addr.to_string(),
            path: path.into(),
            expect,
        }
    }

    /// The HTTP probe of a backend the monitor shows: `GET /`, up unless a 5xx.
    pub fn http_backend(addr: SocketAddr) -> Self {
        Self::http_check(addr, "/", StatusRange::NOT_5XX)
    }

    /// The classic UDP ping of a backend.
    pub fn udp_backend(addr: SocketAddr) -> Self {
        Target::Udp { host: addr.to_string(), addr, exchange: None }
    }

    /// A TCP connect check of a backend.
    pub fn tcp_backend(addr: SocketAddr) -> Self {
        Target::Tcp { host: addr.to_string(), addr }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Icmp { host, .. } => write!(f, "{host}"),
            Target::Tcp { host, .. } => write!(f, "tcp://{host}"),
            Target::Udp { host, .. } => write!(f, "udp://{host}"),
            Target::Http { url, .. } => write!(f, "{url}"),
        }
    }
}

/// Resolves `host:port` (or `host` with `default_port`), preferring IPv4 as the classic tools do.
pub fn resolve(host: &str, default_port: u16) -> Result<SocketAddr, ProbeError> {
    let fail = |e: String| ProbeError::Resolve(host.to_string(), e);
    let addrs: Vec<SocketAddr> = if let Ok(a) = host.parse::<SocketAddr>() {
        vec![a]
    } else if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
        vec![SocketAddr::new(ip, default_port)]
    } else if host.contains(':') {
        host.to_socket_addrs().map_err(|e| fail(e.to_string()))?.collect()
    } else {
        (host, default_port).to_socket_addrs().map_err(|e| fail(e.to_string()))?.collect()
    };
    addrs.iter().find(|a| a.is_ipv4()).or_else(|| addrs.first()).copied().ok_or_else(|| fail("no address".into()))
}

/// Whether the brackets of an authority are those of `[IPv6]` or `[IPv6]:PORT`: opened first,
/// closed once, followed by nothing or a port (`http://[::1` is not an address).
fn brackets_close(authority: &str) -> bool {
    match authority.strip_prefix('[') {
        Some(rest) => rest
            .split_once(']')
            .is_some_and(|(ip, after)| !ip.contains(['[', ']']) && (after.is_empty() || after.starts_with(':'))),
        None => !authority.contains(['[', ']']),
    }
}

impl FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let need_port = |rest: &str, scheme: &str| -> Result<SocketAddr, String> {
            let (_, port) = rest.rsplit_once(':').ok_or(format!("'{s}' needs a port: {scheme}://HOST:PORT"))?;
            port.parse::<u16>().ok().filter(|&p| p > 0).ok_or(format!("'{s}' has a bad port '{port}'"))?;
            resolve(rest, 0).map_err(|e| e.to_string())
        };
        if let Some(rest) = s.strip_prefix("tcp://") {
            Ok(Target::Tcp { host: rest.to_string(), addr: need_port(rest, "tcp")? })
        } else if let Some(rest) = s.strip_prefix("udp://") {
            Ok(Target::Udp { host: rest.to_string(), addr: need_port(rest, "udp")?, exchange: None })
        } else if let Some(rest) = s.strip_prefix("http://") {
            // The URL goes into a request line as written: a space or a line break there would
            // end the line early and make the rest a header or a second request.
            if let Some(c) = rest.chars().find(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!(
                    "'{}' contains {c:?}; percent-encode spaces and control characters",
                    s.escape_debug()
                ));
            }
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            if authority.is_empty() {
                return Err(format!("'{s}' has no host"));
            }
            if !brackets_close(authority) {
                return Err(format!("'{s}' has a malformed host '{authority}': write an IPv6 address as [ADDR]:PORT"));
            }
            let addr = resolve(authority, 80).map_err(|e| e.to_string())?;
            Ok(Target::Http {
                url: s.to_string(),
                addr,
                host_header: authority.to_string(),
                path: path.to_string(),
                expect: StatusRange::NOT_5XX,
            })
        } else if s.contains("://") {
            Err(format!("'{s}': unknown scheme; use HOST, tcp://HOST:PORT, udp://HOST:PORT or http://HOST[:PORT]/PATH"))
        } else {
            let ip = resolve(s, 0).map_err(|e| e.to_string())?.ip();
            Ok(Target::Icmp { host: s.to_string(), ip })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_by_scheme() {
        let t: Target = "127.0.0.1".parse().unwrap();
        assert_eq!(t, Target::Icmp { host: "127.0.0.1".into(), ip: "127.0.0.1".parse().unwrap() });
        let t: Target = "tcp://127.0.0.1:80".parse().unwrap();
        assert_eq!(t.kind(), ProbeKind::Tcp);
        assert_eq!(t.to_string(), "tcp://127.0.0.1:80");
        let t: Target = "udp://localhost:8888".parse().unwrap();
        assert_eq!(
            t,
            Target::Udp { host: "localhost:8888".into(), addr: "127.0.0.1:8888".parse().unwrap(), exchange: None }
        );
        let t: Target = "http://127.0.0.1:8000/health?x=1".parse().unwrap();
        match t {
            Target::Http { addr, host_header, path, .. } => {
                assert_eq!(addr, "127.0.0.1:8000".parse().unwrap());
                assert_eq!((host_header.as_str(), path.as_str()), ("127.0.0.1:8000", "/health?x=1"));
            }
            other => panic!("{other:?}"),
        }
        let t: Target = "http://[::1]".parse().unwrap();
        assert!(matches!(t, Target::Http { addr, .. } if addr == "[::1]:80".parse().unwrap()));
        assert!("tcp://127.0.0.1".parse::<Target>().unwrap_err().contains("needs a port"));
        assert!("ftp://x".parse::<Target>().unwrap_err().contains("unknown scheme"));
        assert!("no-such-host..invalid".parse::<Target>().is_err());
    }

    #[test]
    fn an_http_target_with_a_space_or_line_break_in_its_url_is_refused_at_parse_time() {
        for bad in [
            "http://127.0.6.1:8000/a b",
            "http://127.0.6.1:8000/a\r\nX-Injected: 1",
            "http://127.0.6.1:8000/a\nb",
            "http://127.0.6.1:8000/a\tb",
            "http://127.0.6.1:8000/a\u{0}",
            "http://127.0.6.1 :8000/",
        ] {
            let err = bad.parse::<Target>().unwrap_err();
            assert!(err.contains("percent-encode"), "{bad:?}: {err}");
            assert!(!err.contains(['\r', '\n']), "the message stays on one line: {err:?}");
        }
        let t: Target = "http://127.0.6.1:8000/a%20b".parse().unwrap();
        assert!(matches!(t, Target::Http { path, .. } if path == "/a%20b"));
    }

    #[test]
    fn an_http_target_with_an_unclosed_bracket_is_refused_at_parse_time() {
        for bad in
            ["http://[::1", "http://[::1/x", "http://[::1:80/", "http://::1]/", "http://[::1]x/", "http://[[::1]]/"]
        {
            let err = bad.parse::<Target>().unwrap_err();
            assert!(err.contains("malformed host"), "{bad:?}: {err}");
        }
        for good in ["http://[::1]", "http://[::1]:8080/x"] {
            assert_eq!(good.parse::<Target>().unwrap().kind(), ProbeKind::Http, "{good}");
        }
    }
}
