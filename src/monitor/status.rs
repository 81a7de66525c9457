//! The checks behind `netpulse status`: a one-shot connectivity verdict from local facts (an interface up with an
//! address, a default route), name resolution, and reachability of a few targets.

use std::fmt::Write as _;
use std::net::{IpAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::monitor::report::Connectivity;
use crate::probe::{Sample, Target, tcp, udp::UdpProber, web};

/// Targets checked when none are given: well-known public resolvers.
pub const DEFAULT_TARGETS: [&str; 3] = ["tcp://1.1.1.1:53", "tcp://8.8.8.8:53", "tcp://9.9.9.9:443"];
/// The name resolved when none is given.
pub const DEFAULT_NAME: &str = "example.com";

/// One check's result.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    pub took: Duration,
}

/// Interfaces (not loopback) that are up with a routable address.
fn interface_check() -> Check {
    let start = Instant::now();
    let up: Vec<String> =
        crate::iface::read().unwrap_or_default().into_iter().filter(|s| s.up).map(|s| s.name).collect();
    let addrs = crate::iface::addresses().unwrap_or_default();
    let usable: Vec<String> = addrs
        .iter()
        .filter(|(name, ip)| up.contains(name) && !ip.is_loopback() && !is_link_local(ip))
        .map(|(name, ip)| format!("{name} {ip}"))
        .collect();
    let ok = !usable.is_empty();
    let detail = if ok { usable.join(", ") } else { "no interface is up with an address (besides loopback)".into() };
    Check { name: "interface", ok, detail, took: start.elapsed() }
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Parses `/proc/net/route` for an IPv4 default route that is up; returns its interface.
pub fn default_route_v4(text: &str) -> Option<String> {
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
        (f.get(1) == Some(&"00000000") && f.get(7) == Some(&"00000000") && flags & 1 != 0).then(|| f[0].to_string())
    })
}

/// Parses `/proc/net/ipv6_route` for an IPv6 default route that is up (not the loopback reject).
pub fn default_route_v6(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let flags = u32::from_str_radix(f.get(8)?, 16).ok()?;
        let iface = *f.get(9)?;
        // RTF_UP, and not RTF_REJECT (0x200).
        (f[0].bytes().all(|b| b == b'0') && f[1] == "00" && flags & 1 != 0 && flags & 0x200 == 0 && iface != "lo")
            .then(|| iface.to_string())
    })
}

fn route_check() -> Check {
    let start = Instant::now();
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let v4 = default_route_v4(&read("/proc/net/route"));
    let v6 = default_route_v6(&read("/proc/net/ipv6_route"));
    let detail = match (&v4, &v6) {
        (None, None) => "no default route".to_string(),
        _ => [v4.map(|i| format!("IPv4 via {i}")), v6.map(|i| format!("IPv6 via {i}"))]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", "),
    };
    Check { name: "route", ok: detail != "no default route", detail, took: start.elapsed() }
}

async fn dns_check(name: String, timeout: Duration) -> Check {
    let start = Instant::now();
    let lookup = tokio::task::spawn_blocking({
        let name = name.clone();
        move || (name.as_str(), 0).to_socket_addrs().map(|a| a.map(|a| a.ip()).collect::<Vec<_>>())
    });
    let (ok, detail) = match tokio::time::timeout(timeout, lookup).await {
        Ok(Ok(Ok(ips))) if !ips.is_empty() => (true, format!("{name} -> {}", ips[0])),
        Ok(Ok(Ok(_))) => (false, format!("{name}: no address")),
        Ok(Ok(Err(e))) => (false, format!("{name}: {e}")),
        Ok(Err(e)) => (false, format!("{name}: {e}")),
        Err(_) => (false, format!("{name}: no answer within {timeout:?}")),
    };
    Check { name: "dns", ok, detail, took: start.elapsed() }
}

async fn reach_check(target: Target, timeout: Duration) -> Check {
    let start = Instant::now();
    let sample: Sample = match &target {
        Target::Tcp { addr, .. } => tcp::probe(*addr, 1, timeout).await,
        Target::Http { addr, host_header, path, expect, .. } => {
            web::probe(*addr, host_header, path, *expect, 1, timeout).await
        }
        Target::Udp { addr, .. } => match UdpProber::connect(*addr).await {
            Ok(p) => p.probe(1, timeout).await,
            Err(e) => Sample { seq: 1, rtt: None, outcome: crate::probe::Outcome::Failed(e.to_string()) },
        },
        Target::Icmp { ip, .. } => {
            let plan = crate::probe::icmp::IcmpPlan {
                targets: vec![*ip],
                interval: timeout,
                timeout,
                size: 56,
                count: Some(1),
            };
            tokio::task::spawn_blocking(move || {
                let mut got = None;
                let r = crate::probe::icmp::run(&plan, || false, |_, s| got = Some(s));
                match (r, got) {
                    (Ok(()), Some(s)) => s,
                    (Err(e), _) => Sample { seq: 1, rtt: None, outcome: crate::probe::Outcome::Failed(e.to_string()) },
                    (Ok(()), None) => Sample { seq: 1, rtt: None, outcome: crate::probe::Outcome::Timeout },
                }
            })
            .await
            .unwrap_or(Sample { seq: 1, rtt: None, outcome: crate::probe::Outcome::Timeout })
        }
    };
    let detail = match (&sample.outcome, sample.rtt) {
        (_, Some(rtt)) if sample.up() => format!("{target} {:.1} ms", rtt.as_secs_f64() * 1000.0),
        (crate::probe::Outcome::Timeout, _) => format!("{target}: no answer within {timeout:?}"),
        (crate::probe::Outcome::Failed(e), _) => format!("{target}: {e}"),
        (other, _) => format!("{target}: {other:?}"),
    };
    Check { name: "reach", ok: sample.up(), detail, took: start.elapsed() }
}

/// What `netpulse status` checks.
#[derive(Debug, Clone)]
pub struct StatusPlan {
    /// Targets that must be reachable.
    pub targets: Vec<Target>,
    /// The name resolved for the DNS check.
    pub resolve: String,
    /// Time allowed for each check.
    pub timeout: Duration,
}

/// Runs every check (the network ones concurrently); returns them in order, with the verdict.
pub async fn run(plan: StatusPlan) -> (Vec<Check>, Connectivity) {
    let StatusPlan { targets, resolve: name, timeout } = plan;
    let local = tokio::task::spawn_blocking(|| vec![interface_check(), route_check()]).await.unwrap_or_default();
    let dns = tokio::spawn(dns_check(name, timeout));
    let reach: Vec<_> = targets.into_iter().map(|t| tokio::spawn(reach_check(t, timeout))).collect();
    let mut checks = local;
    if let Ok(c) = dns.await {
        checks.push(c);
    }
    for r in reach {
        if let Ok(c) = r.await {
            checks.push(c);
        }
    }
    let verdict = verdict(&checks);
    (checks, verdict)
}

/// Connected: every check passed. Disconnected: no target reachable. Degraded: in between.
pub fn verdict(checks: &[Check]) -> Connectivity {
    let reach: Vec<&Check> = checks.iter().filter(|c| c.name == "reach").collect();
    if checks.iter().all(|c| c.ok) {
        Connectivity::Connected
    } else if reach.iter().all(|c| !c.ok) {
        Connectivity::Disconnected
    } else {
        Connectivity::Degraded
    }
}

/// The checks as lines, then the verdict.
pub fn render(checks: &[Check], verdict: Connectivity) -> String {
    let mut out = String::new();
    for c in checks {
        let _ = writeln!(
            out,
            "{:<10} {:<4}  {}  ({:.1} ms)",
            c.name,
            if c.ok { "ok" } else { "FAIL" },
            c.detail,
            c.took.as_secs_f64() * 1000.0
        );
    }
    let word = match verdict {
        Connectivity::Connected => "connected",
        Connectivity::Degraded => "degraded",
        Connectivity::Disconnected => "disconnected",
    };
    let _ = writeln!(out, "verdict: {word}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_routes_are_found_in_proc() {
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  eth0\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                  eth0\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(default_route_v4(v4).as_deref(), Some("eth0"));
        assert_eq!(default_route_v4("Iface\tDestination\n"), None);
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth0\n\
                  00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n";
        assert_eq!(default_route_v6(v6).as_deref(), Some("eth0"));
        assert_eq!(default_route_v6(v6.lines().nth(1).unwrap()), None);
    }

    fn check(name: &'static str, ok: bool) -> Check {
        Check { name, ok, detail: String::new(), took: Duration::ZERO }
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict(&[check("route", true), check("reach", true)]), Connectivity::Connected);
        assert_eq!(verdict(&[check("route", false), check("reach", true)]), Connectivity::Degraded);
        assert_eq!(verdict(&[check("reach", true), check("reach", false)]), Connectivity::Degraded);
        assert_eq!(verdict(&[check("route", true), check("reach", false)]), Connectivity::Disconnected);
    }
}
