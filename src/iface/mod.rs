//! Interface counters and rates. Counters come from the OS (Linux: `/proc/net/dev` and
//! `/sys/class/net`); rates are computed over the real elapsed monotonic time, and a counter
//! that goes backwards (a wrap or a reset) never produces a negative or absurd rate.

use std::collections::HashMap;
use std::time::Instant;

/// One interface's cumulative counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

/// One interface as read from the OS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub name: String,
    /// Whether the link can carry traffic: see [`link_up`].
    pub up: bool,
    /// The kernel's RFC 2863 operational state as it words it (`up`, `down`, `dormant`,
    /// `lowerlayerdown`, `unknown`, …); empty where the OS does not say.
    pub operstate: String,
    pub counters: Counters,
}

/// One interface with its rates, as the monitor reports it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct InterfaceStats {
    pub name: String,
    /// Whether the link can carry traffic (operationally up, or administratively up where the
    /// driver reports no operational state, as loopback does): what the verdict uses.
    pub up: bool,
    /// The kernel's word for its operational state (node_exporter's `node_network_up` is 1
    /// only when it is `up`).
    pub operstate: String,
    #[serde(flatten)]
    pub counters: Counters,
    pub rx_bytes_per_sec: f64,
    pub tx_bytes_per_sec: f64,
}

/// Parses Linux's `/proc/net/dev`.
pub fn parse_proc_net_dev(text: &str) -> Vec<(String, Counters)> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let v: Vec<u64> = rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
            (v.len() >= 16).then(|| {
                let c = Counters {
                    rx_bytes: v[0],
                    rx_packets: v[1],
                    rx_errors: v[2],
                    rx_dropped: v[3],
                    tx_bytes: v[8],
                    tx_packets: v[9],
                    tx_errors: v[10],
                    tx_dropped: v[11],
                };
                (name.trim().to_string(), c)
            })
        })
        .collect()
}

/// Reads every interface's counters and link state (blocking: call off async workers).
#[cfg(target_os = "linux")]
pub fn read() -> std::io::Result<Vec<Snapshot>> {
    let text = std::fs::read_to_string("/proc/net/dev")?;
    Ok(parse_proc_net_dev(&text)
        .into_iter()
        .map(|(name, counters)| {
            let sys = |f: &str| std::fs::read_to_string(format!("/sys/class/net/{name}/{f}")).unwrap_or_default();
            let operstate = sys("operstate").trim().to_string();
            let up = link_up(&operstate, &sys("flags"));
            Snapshot { name, up, operstate, counters }
        })
        .collect())
}

/// Not yet implemented on this OS: no interfaces are reported.
#[cfg(not(target_os = "linux"))]
pub fn read() -> std::io::Result<Vec<Snapshot>> {
    Ok(Vec::new())
}

/// Whether a link carries traffic, from its `operstate` and `flags` in `/sys/class/net`:
/// operationally up, or (loopback and some virtual links report "unknown") administratively up.
pub fn link_up(operstate: &str, flags: &str) -> bool {
    match operstate.trim() {
        "up" => true,
        "unknown" => u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).is_ok_and(|f| f & 0x1 != 0),
        _ => false,
    }
}

/// Interface names with their addresses (IPv4 and IPv6).
pub fn addresses() -> std::io::Result<Vec<(String, std::net::IpAddr)>> {
    crate::sys::interface_addrs()
}

/// The interface the OS would send to `target` through, found by connecting a UDP socket
/// (which sends nothing) and matching its source address; `None` with no route.
pub fn egress(target: std::net::IpAddr, addrs: &[(String, std::net::IpAddr)]) -> Option<String> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
    let any: SocketAddr =
        if target.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
    let s = UdpSocket::bind(any).ok()?;
    s.connect((target, 9)).ok()?;
    let local = s.local_addr().ok()?.ip();
    addrs.iter().find(|(_, a)| *a == local).map(|(name, _)| name.clone())
}

/// How much a counter grew from `old` to `new`. A counter that went backwards either wrapped
/// at 32 bits (some drivers) — when that reading gives a plausible (< 2 GiB) step — or was reset
/// (interface re-created), in which case it counts from zero.
pub fn counter_delta(old: u64, new: u64) -> u64 {
    const WRAP: u64 = 1 << 32;
    if new >= old {
        new - old
    } else if old < WRAP && new + (WRAP - old) < WRAP / 2 {
        new + (WRAP - old)
    } else {
        new
    }
}

/// Turns successive snapshots into rates.
#[derive(Debug, Default)]
pub struct RateTracker {
    prev: HashMap<String, (Counters, Instant)>,
}

impl RateTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rates since the previous snapshot of each interface (zero the first time it is seen).
    pub fn update(&mut self, snaps: Vec<Snapshot>, now: Instant) -> Vec<InterfaceStats> {
        let mut seen = HashMap::with_capacity(snaps.len());
        let stats = snaps
            .into_iter()
            .map(|s| {
                let (rx, tx) = match self.prev.get(&s.name) {
                    Some((old, at)) => {
                        let secs = now.duration_since(*at).as_secs_f64();
                        // Bytes and packets both going backwards is a reset (the interface
                        // was re-created), whatever the byte counts would allow as a wrap.
                        let reset = s.counters.rx_packets < old.rx_packets && s.counters.tx_packets < old.tx_packets;
                        let delta = |o: u64, n: u64| if reset { n } else { counter_delta(o, n) };
                        if secs > 0.0 {
                            (
                                delta(old.rx_bytes, s.counters.rx_bytes) as f64 / secs,
                                delta(old.tx_bytes, s.counters.tx_bytes) as f64 / secs,
                            )
                        } else {
                            (0.0, 0.0)
                        }
                    }
                    None => (0.0, 0.0),
                };
                seen.insert(s.name.clone(), (s.counters, now));
                InterfaceStats {
                    name: s.name,
                    up: s.up,
                    operstate: s.operstate,
                    counters: s.counters,
                    rx_bytes_per_sec: rx,
                    tx_bytes_per_sec: tx,
                }
            })
            .collect();
        self.prev = seen;
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const PROC: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0
  eth0: 123456789 1000  2    3    0     0          0         5  987654321   2000    4    5    0     0       0          0
";

    #[test]
    fn parses_proc_net_dev() {
        let v = parse_proc_net_dev(PROC);
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].0, "eth0");
        let c = v[1].1;
        assert_eq!((c.rx_bytes, c.rx_packets, c.rx_errors, c.rx_dropped), (123_456_789, 1000, 2, 3));
        assert_eq!((c.tx_bytes, c.tx_packets, c.tx_errors, c.tx_dropped), (987_654_321, 2000, 4, 5));
    }

    #[test]
    fn a_link_is_up_when_operationally_up_or_administratively_up_with_no_operational_state() {
        assert!(link_up("up\n", "0x1002\n"));
        assert!(link_up("unknown\n", "0x9\n"), "loopback: IFF_UP set");
        assert!(!link_up("unknown\n", "0x8\n"), "loopback set down");
        assert!(!link_up("down\n", "0x1003\n"), "administratively up, no carrier");
        assert!(!link_up("lowerlayerdown", "0x1003"));
        assert!(!link_up("", ""));
    }

    #[test]
    fn wraps_and_resets_do_not_produce_nonsense() {
        assert_eq!(counter_delta(100, 150), 50);
        assert_eq!(counter_delta(u64::from(u32::MAX) - 9, 5), 15, "32-bit wrap");
        assert_eq!(counter_delta(10_000_000_000, 500), 500, "reset of a 64-bit counter");
        assert_eq!(counter_delta(3000, 100), 100, "reset of a small counter is not a wrap");
    }

    #[test]
    fn rates_use_the_elapsed_time() {
        let mut t = RateTracker::new();
        let start = Instant::now();
        let snap = |rx, tx| {
            vec![Snapshot {
                name: "eth0".into(),
                up: true,
                operstate: "up".into(),
                counters: Counters { rx_bytes: rx, tx_bytes: tx, ..Counters::default() },
            }]
        };
        let first = t.update(snap(1000, 0), start);
        assert_eq!((first[0].rx_bytes_per_sec, first[0].tx_bytes_per_sec), (0.0, 0.0));
        let second = t.update(snap(3000, 500), start + Duration::from_millis(500));
        assert_eq!((second[0].rx_bytes_per_sec, second[0].tx_bytes_per_sec), (4000.0, 1000.0));
        let reset = t.update(snap(100, 500), start + Duration::from_millis(1500));
        assert_eq!(reset[0].rx_bytes_per_sec, 100.0);
        // A re-created interface whose old byte count looked like it could wrap at 32 bits:
        // its packet counts went backwards too, so it is a reset, not 800 MB in a second.
        let big = |rx, packets| {
            vec![Snapshot {
                name: "tun0".into(),
                up: true,
                operstate: "unknown".into(),
                counters: Counters { rx_bytes: rx, rx_packets: packets, tx_packets: packets, ..Counters::default() },
            }]
        };
        t.update(big(3_500_000_000, 5_000_000), start);
        let after = t.update(big(1000, 2), start + Duration::from_secs(1));
        assert_eq!(after[0].rx_bytes_per_sec, 1000.0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_the_loopback_interface_and_routes_through_it() {
        let all = read().unwrap();
        let lo = all.iter().find(|s| s.name == "lo").expect("lo exists");
        // Loopback has no operational state of its own: "unknown", and up because it is
        // administratively up.
        assert_eq!((lo.up, lo.operstate.as_str()), (true, "unknown"));
        let addrs = addresses().unwrap();
        assert!(addrs.iter().any(|(n, a)| n == "lo" && a.is_loopback()), "{addrs:?}");
        assert_eq!(egress("127.0.0.1".parse().unwrap(), &addrs).as_deref(), Some("lo"));
        assert_eq!(egress("127.9.9.9".parse().unwrap(), &addrs).as_deref(), Some("lo"));
    }
}
