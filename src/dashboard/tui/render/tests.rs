//! Frames drawn with ratatui's `TestBackend`: what a person would see at 80×24 and 160×48.

use super::*;

#[test]
fn numbers_read_like_a_person_would_write_them() {
    assert_eq!(ms(Some(0.1234)), "0.12");
    assert_eq!(ms(Some(12.34)), "12.3");
    assert_eq!(ms(Some(1234.5)), "1234");
    assert_eq!(ms(None), "-");
    assert_eq!(percent(Some(0.0)), "0%");
    assert_eq!(percent(Some(2.5)), "2.5%");
    assert_eq!(percent(Some(28.571_428)), "29%");
    assert_eq!(percent(Some(100.0)), "100%");
    assert_eq!(bits(100.0), "800 bit/s");
    assert_eq!(bits(1_500.0), "12.0 kbit/s");
    assert_eq!(bits(125_000_000.0), "1.00 Gbit/s");
    assert_eq!(per_sec(Some(0.333)), "0.3");
    assert_eq!(per_sec(Some(1234.0)), "1.2k");
    assert_eq!(age(59), "59s");
    assert_eq!(age(192), "3m12s");
    assert_eq!(age(7500), "2h05m");
    assert_eq!(short_times("2026-11-22T03:04:05.678Z http web"), "03:04:05 http web");
    assert_eq!(short_times("[8001] GET / from x"), "[8001] GET / from x");
    assert_eq!(fit_left("http://127.0.0.1:8001/", 10), "…0.1:8001/");
    assert_eq!(nice_ceiling(0.37), 0.5);
    assert_eq!(nice_ceiling(12.0), 20.0);
}

#[test]
fn the_focused_panel_gets_the_room_the_others_can_spare() {
    // Targets, chart, balancers, interfaces, log in 22 rows.
    let wants = [(3, 9), (5, 14), (3, 12), (3, 4), (2, 13)];
    let ranks = [0, 2, 1, 4, 3];
    let h = fit(22, &wants, &ranks, Some(0), Some(1));
    assert_eq!(h.iter().sum::<u16>(), 22);
    assert_eq!(h[0], 9, "all targets on one screen");
    let h = fit(22, &wants, &ranks, Some(2), Some(1));
    assert_eq!(h[2], 12, "Tab to the balancers shows them all: {h:?}");
    assert_eq!(h[0], 3, "the targets stay");
    let h = fit(22, &[(3, 1002), (5, 14), (3, 12), (3, 4), (2, 13)], &ranks, Some(0), Some(1));
    assert!(h.iter().all(|&h| h > 0), "1000 targets push nothing out: {h:?}");
    let h = fit(8, &wants, &ranks, Some(0), Some(1));
    assert_eq!(h, vec![3, 0, 3, 0, 2], "what does not fit is left out, by rank");
}

mod frames {
    use std::net::SocketAddr;
    use std::time::{Duration, Instant, SystemTime};

    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use ratatui::buffer::Buffer;
    use ratatui::style::Color;

    use super::super::{balancer_rows, draw};
    use crate::dashboard::tui::state::{Options, State};
    use crate::iface::InterfaceStats;
    use crate::log::{LineKind, PaneLine};
    use crate::monitor::report::{Connectivity, ProbePoint, Report, TargetId, TargetReport};
    use crate::probe::{Outcome, ProbeKind, Sample};
    use crate::stats::Window;
    use crate::stats::traffic::{
        BackendSnapshot, BackendState, BalancerSnapshot, Classes, Histogram, HttpBackendCounts, HttpTotals, Proto,
        UdpBackendCounts, UdpTotals,
    };

    pub(crate) const HTTP: [&str; 4] =
        ["http://127.0.16.1:8001/", "http://127.0.16.1:8002/", "http://127.0.16.1:8003/", "http://127.0.16.1:8004/"];
    pub(crate) const UDP: [&str; 3] = ["udp://127.0.16.1:2526", "udp://127.0.16.1:2527", "udp://127.0.16.1:2528"];

    /// A target's report line with `probes` (RTT in ms, `None` lost) and a window over them.
    pub(crate) fn target(i: usize, name: &str, kind: ProbeKind, probes: &[Option<f64>]) -> TargetReport {
        let mut w = Window::new(100);
        for (seq, p) in probes.iter().enumerate() {
            w.push(Sample {
                seq: seq as u64,
                rtt: p.map(|ms| Duration::from_secs_f64(ms / 1000.0)),
                outcome: if p.is_some() { Outcome::Connected } else { Outcome::Timeout },
            });
        }
        TargetReport {
            id: TargetId(i),
            target: name.into(),
            probe: kind,
            summary: w.summary(),
            newest: None,
            probes: probes
                .iter()
                .enumerate()
                .map(|(seq, p)| ProbePoint {
                    seq: seq as u64,
                    rtt_ms: *p,
                    up: p.is_some(),
                    lost: p.is_none(),
                    sent: None,
                })
                .collect(),
            sent_total: probes.len() as u64,
            received_total: probes.iter().filter(|p| p.is_some()).count() as u64,
            rtt_sum_ms: 0.0,
            duration_ms: None,
        }
    }

    fn iface(name: &str, up: bool, rate: f64) -> InterfaceStats {
        InterfaceStats {
            name: name.into(),
            up,
            operstate: "up".into(),
            counters: Default::default(),
            rx_bytes_per_sec: rate,
            tx_bytes_per_sec: rate / 2.0,
        }
    }

    /// The classic lab: four HTTP backends, three UDP servers (the last one silent), a round
    /// robin in front of each.
    pub(crate) fn lab_report() -> Report {
        let mut r = Report::empty();
        r.time = "2026-11-22T03:04:05.678Z".into();
        let steady: Vec<Option<f64>> = (0..120).map(|i| Some(0.2 + f64::from(i % 7) * 0.05)).collect();
        for (i, name) in HTTP.iter().enumerate() {
            r.targets.push(target(i, name, ProbeKind::Http, &steady));
        }
        let mut lossy = steady.clone();
        for (i, p) in lossy.iter_mut().enumerate() {
            if i % 3 == 0 {
                *p = None;
            }
        }
        r.targets.push(target(4, UDP[0], ProbeKind::Udp, &steady));
        r.targets.push(target(5, UDP[1], ProbeKind::Udp, &lossy));
        r.targets.push(target(6, UDP[2], ProbeKind::Udp, &[None; 120]));
        r.interfaces =
            vec![iface("lo", true, 125_000.0), iface("eth0", true, 2_500_000.0), iface("docker0", false, 0.0)];
        r.connectivity = Connectivity::Degraded;
        r
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 16, 1], port))
    }

    fn backend(port: u16, state: BackendState) -> BackendSnapshot {
        BackendSnapshot {
            addr: addr(port),
            state,
            since: String::new(),
            why: (state == BackendState::Down).then(|| "3 probes in a row got no answer".to_string()),
            ejected_for_ms: None,
            weight: 1,
            measured: 1.0,
            effective_weight: 1.0,
            weight_why: None,
            http: None,
            udp: None,
        }
    }

    /// The balancers after `n` requests to each backend (the silent UDP server got its share
    /// but answered none).
    pub(crate) fn lab_balancers(n: u64) -> Vec<BalancerSnapshot> {
        let http_backends = (8001..=8004)
            .map(|port| {
                let mut latency = Histogram::default();
                latency.counts[4] = n; // (0.3, 0.5] ms
                BackendSnapshot {
                    http: Some(HttpBackendCounts {
                        requests: n,
                        responses: Classes { c2xx: n, ..Classes::default() },
                        latency,
                        ..HttpBackendCounts::default()
                    }),
                    ..backend(port, BackendState::Up)
                }
            })
            .collect();
        let udp_backends = (2526..=2528)
            .map(|port| {
                let silent = port == 2528;
                BackendSnapshot {
                    udp: Some(UdpBackendCounts {
                        datagrams_sent: n,
                        bytes_sent: n * 15,
                        datagrams_received: if silent { 0 } else { n },
                        bytes_received: if silent { 0 } else { n * 15 },
                        unanswered: 0,
                    }),
                    ..backend(port, if silent { BackendState::Down } else { BackendState::Up })
                }
            })
            .collect();
        vec![
            BalancerSnapshot {
                name: "web".into(),
                proto: Proto::Http,
                listen: Some(addr(8000)),
                strategy: "round-robin".into(),
                started: "2026-11-22T03:00:00.000Z".into(),
                http: Some(HttpTotals {
                    requests: 4 * n,
                    responses: Classes { c2xx: 4 * n, ..Classes::default() },
                    clients_active: 2,
                    ..HttpTotals::default()
                }),
                udp: None,
                backends: http_backends,
            },
            BalancerSnapshot {
                name: "ping".into(),
                proto: Proto::Udp,
                listen: Some(addr(8888)),
                strategy: "round-robin".into(),
                started: "2026-11-22T03:00:00.000Z".into(),
                http: None,
                udp: Some(UdpTotals { requests: 3 * n, replies: 2 * n, ..UdpTotals::default() }),
                backends: udp_backends,
            },
        ]
    }

    pub(crate) fn lab_state(color: bool) -> State {
        let mut s = State::new(&Options {
            command: "up",
            interval: Some(Duration::from_secs(1)),
            ifaces: vec![],
            color,
            log_pane: true,
            web: Some(SocketAddr::from(([127, 0, 16, 1], 9100))),
        });
        s.absorb(&lab_report());
        let t0 = Instant::now();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_316_645);
        s.take_balancers(&lab_balancers(100), t0, now);
        s.take_balancers(&lab_balancers(200), t0 + Duration::from_secs(10), now);
        s.set_log(vec![
            PaneLine { kind: LineKind::Info, text: "netpulse is up:".into() },
            PaneLine {
                kind: LineKind::Access,
                text: "2026-11-22T03:04:05.123Z http web 127.0.0.1:40000 \"GET / HTTP/1.1\" -> 127.0.16.1:8001 200"
                    .into(),
            },
            PaneLine {
                kind: LineKind::Warn,
                text: "2026-11-22T03:04:05.200Z  WARN udp balancer \"ping\": 127.0.16.1:2528 is down".into(),
            },
        ]);
        s
    }

    pub(crate) fn frame(s: &State, w: u16, h: u16) -> Buffer {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| draw(f, s)).unwrap();
        t.backend().buffer().clone()
    }

    pub(crate) fn text(b: &Buffer) -> String {
        let mut out = String::new();
        for y in 0..b.area.height {
            for x in 0..b.area.width {
                out.push_str(b[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    fn row_of(b: &Buffer, needle: &str) -> Option<u16> {
        let t = text(b);
        t.lines().position(|l| l.contains(needle)).map(|y| y as u16)
    }

    #[test]
    fn at_80x24_the_verdict_every_target_and_the_keys_show() {
        let s = lab_state(true);
        let b = frame(&s, 80, 24);
        let t = text(&b);
        assert!(t.contains("DEGRADED"), "{t}");
        assert!(t.contains("6/7 targets up"), "{t}");
        for name in HTTP.iter().chain(&UDP) {
            let short = name.split_once("://").unwrap().1.trim_end_matches('/');
            assert!(t.contains(short), "{short} missing:\n{t}");
        }
        assert!(t.contains("q quit"), "{t}");
        assert!(t.contains("RTT of http://127.0.16.1:8001/"), "the chart follows the selection:\n{t}");
        assert!(t.lines().all(|l| l.chars().count() == 80), "no line wraps");
        assert!(!t.contains('…'), "nothing cut:\n{t}");
        let head = t.lines().next().unwrap();
        assert!(head.trim_end().ends_with("web http://127.0.16.1:9100/"), "where the web dashboard is:\n{t}");
        let columns = t.lines().find(|l| l.contains("LOSS1m")).unwrap();
        assert!(columns.contains("TARGET") && columns.contains("STATE"), "every column has a name: {columns}");
        // Balancers: a line that ends whole (the total goes first), under their name.
        assert!(t.contains("web http 127.0.16.1:8000 round-robin · 40 req/s · 5xx 0% · 2 clients"), "{t}");
    }

    #[test]
    fn at_80x24_the_kind_tells_targets_on_one_port_apart() {
        let mut s = lab_state(true);
        let mut r = lab_report();
        let probes = [Some(0.3); 10];
        r.targets.push(target(7, "tcp://127.0.16.1:8001", ProbeKind::Tcp, &probes));
        r.targets.push(target(8, "127.0.16.1", ProbeKind::Icmp, &probes));
        s.absorb(&r);
        let t = text(&frame(&s, 80, 24));
        for (kind, name) in
            [("h", "127.0.16.1:8001 "), ("t", "127.0.16.1:8001 "), ("u", "127.0.16.1:2526 "), ("i", "127.0.16.1 ")]
        {
            assert!(t.contains(&format!("{kind} {name}")), "{kind} {name}:\n{t}");
        }
        // Wide enough, the names are whole and a KIND column says it.
        let t = text(&frame(&s, 120, 40));
        assert!(t.contains("http://127.0.16.1:8001/") && t.contains("tcp://127.0.16.1:8001 "), "{t}");
        assert!(t.contains("KIND"), "{t}");
    }

    #[test]
    fn unfocused_balancers_name_the_balancer_of_every_backend_row() {
        let mut s = lab_state(true);
        s.focus = crate::dashboard::tui::state::Panel::Interfaces;
        s.selected_backend = 6; // 127.0.16.1:2528, of "ping"
        let t = text(&frame(&s, 80, 24));
        let rows: Vec<&str> = t
            .lines()
            .skip_while(|l| !l.contains("BACKEND"))
            .skip(1)
            .take_while(|l| !l.starts_with(' ') || l.starts_with("  1") || l.starts_with("› "))
            .collect();
        assert!(!rows.is_empty(), "{t}");
        assert!(rows[0].starts_with("ping udp"), "the first row under the header names the balancer:\n{t}");
        for rows in [1u16, 2, 3, 4] {
            // However few rows the panel gets, a backend is never shown without its balancer.
            let lines: Vec<(usize, bool)> =
                [(0, true), (0, false), (0, false), (1, true), (1, false), (1, false)].into();
            for at in [1, 2, 4, 5] {
                let shown = balancer_rows(&lines, at, usize::from(rows));
                assert!(lines[shown[0]].1, "rows {rows}, selected {at}: {shown:?}");
                assert!(shown.len() == 1 || shown.contains(&at), "rows {rows}, selected {at}: {shown:?}");
            }
        }
    }

    #[test]
    fn the_header_keeps_the_pause_and_the_address_whole() {
        let mut s = lab_state(true);
        s.key(crossterm::event::KeyEvent::new(
            crossterm::event::KeyCode::Char('p'),
            crossterm::event::KeyModifiers::NONE,
        ));
        for _ in 0..3 {
            s.absorb(&lab_report());
        }
        for (w, paused) in
            [(80, "PAUSED (3 behind)"), (100, "PAUSED (3 reports behind)"), (160, "PAUSED (3 reports behind)")]
        {
            let t = text(&frame(&s, w, 30));
            let head = t.lines().next().unwrap();
            assert!(head.contains(paused), "{w} columns: {head}");
            assert!(head.trim_end().ends_with("http://127.0.16.1:9100/"), "{w} columns: {head}");
        }
        let mut one = lab_state(true);
        one.key(crossterm::event::KeyEvent::new(
            crossterm::event::KeyCode::Char('p'),
            crossterm::event::KeyModifiers::NONE,
        ));
        one.absorb(&lab_report());
        let t = text(&frame(&one, 160, 30));
        assert!(t.lines().next().unwrap().contains("PAUSED (1 report behind)"), "{t}");
    }

    #[test]
    fn the_chart_scales_to_the_probes_there_are() {
        // 30 s of probes at 1 s.
        let mut fresh = State::new(&Options {
            command: "up",
            interval: Some(Duration::from_secs(1)),
            ifaces: vec![],
            color: true,
            log_pane: true,
            web: None,
        });
        let mut r = lab_report();
        r.targets.truncate(1);
        r.targets[0] = target(0, HTTP[0], ProbeKind::Http, &[Some(0.5); 30]);
        fresh.absorb(&r);
        let b = frame(&fresh, 120, 40);
        let t = text(&b);
        assert!(t.contains("1 probe/column"), "{t}");
        let axis = t.lines().find(|l| l.trim_end().ends_with("now")).unwrap();
        assert!(axis.contains("-1m52s"), "the width at one probe a second: {axis}");
        // The 30 probes take the 30 rightmost columns.
        let median = row_of(&b, "0.50ms").unwrap();
        let marks: Vec<u16> = (0..b.area.width).filter(|&x| b[(x, median)].symbol() == "━").collect();
        assert_eq!(marks.len(), 30, "{t}");
        assert_eq!(*marks.last().unwrap(), b.area.width - 1, "{t}");
        // Ten minutes of probes: more to a column.
        let mut r = lab_report();
        r.targets.truncate(1);
        r.targets[0] = target(0, HTTP[0], ProbeKind::Http, &[Some(0.5); 600]);
        fresh.absorb(&r);
        let t = text(&frame(&fresh, 120, 40));
        assert!(t.contains("6 probes/column"), "{t}");
    }

    #[test]
    fn the_banner_stays_on_top_of_the_log_until_traffic_comes() {
        let mut s = State::new(&Options {
            command: "up",
            interval: Some(Duration::from_secs(1)),
            ifaces: vec![],
            color: true,
            log_pane: true,
            web: Some(SocketAddr::from(([127, 0, 16, 1], 9100))),
        });
        s.absorb(&lab_report());
        let t0 = Instant::now();
        s.take_balancers(&lab_balancers(0), t0, SystemTime::now());
        s.set_banner(BANNER);
        // A health line comes: at 80×24 the end of the banner (how to try it) stays, with the
        // newest line under it.
        s.set_log(vec![PaneLine { kind: LineKind::Warn, text: "127.0.16.1:2528 is down".into() }]);
        let t = text(&frame(&s, 80, 24));
        assert!(t.contains("  curl http://127.0.16.1:8000/"), "{t}");
        assert!(t.contains("  netpulse udp-ping 127.0.16.1 8888 -c 4"), "{t}");
        assert!(t.contains("127.0.16.1:2528 is down"), "{t}");
        assert!(t.contains("Log · the end of the start-up banner (Tab: all)"), "{t}");
        // Taller, all of it.
        let t = text(&frame(&s, 100, 40));
        for line in BANNER.lines() {
            let start: String = line.chars().take(70).collect();
            assert!(t.contains(&start), "{line:?} missing:\n{t}");
        }
        // Tab to the log: all of it at 80×24 too.
        s.focus = crate::dashboard::tui::state::Panel::Log;
        let t = text(&frame(&s, 80, 24));
        for line in BANNER.lines() {
            let start: String = line.chars().take(70).collect();
            assert!(t.contains(&start), "{line:?} missing:\n{t}");
        }
        // The first request: the log follows its newest lines again.
        s.focus = crate::dashboard::tui::state::Panel::Targets;
        s.take_balancers(&lab_balancers(1), t0 + Duration::from_secs(1), SystemTime::now());
        let t = text(&frame(&s, 80, 24));
        assert!(!t.contains("  curl http://127.0.16.1:8000/"), "{t}");
        assert!(t.contains("127.0.16.1:2528 is down"), "{t}");
    }

    const BANNER: &str = "netpulse is up:
  http backends  127.0.16.1:8001, 127.0.16.1:8002, 127.0.16.1:8003, 127.0.16.1:8004
  udp servers    127.0.16.1:2526, 127.0.16.1:2527, 127.0.16.1:2528 (simulated loss 20%)
  http balancer  \"web\" on 127.0.16.1:8000 -> 127.0.16.1:8001, 127.0.16.1:8002 (round-robin)
                 health: the monitor's probes, fall 3, rise 2
  udp balancer   \"ping\" on 127.0.16.1:8888 -> 127.0.16.1:2526, 127.0.16.1:2527 (round-robin)
                 health: the monitor's probes, fall 3, rise 2
  monitor        8 targets every 1s
  metrics        http://127.0.16.1:9100/metrics
  dashboard      http://127.0.16.1:9100/ (JSON: /api/v1/)
try:
  curl http://127.0.16.1:8000/
  netpulse udp-ping 127.0.16.1 8888 -c 4
";

    #[test]
    fn counts_of_one_are_singular() {
        let mut s = lab_state(true);
        let mut b = lab_balancers(200);
        b[0].http.as_mut().unwrap().clients_active = 1;
        b[1].udp.as_mut().unwrap().flows_open = 1;
        s.take_balancers(&b, Instant::now() + Duration::from_secs(11), SystemTime::now());
        let t = text(&frame(&s, 160, 48));
        assert!(t.contains("· 1 client") && !t.contains("1 clients"), "{t}");
        assert!(t.contains("· 1 flow") && !t.contains("1 flows"), "{t}");
        s.focus = crate::dashboard::tui::state::Panel::Log;
        s.key(crossterm::event::KeyEvent::new(crossterm::event::KeyCode::Up, crossterm::event::KeyModifiers::NONE));
        let t = text(&frame(&s, 160, 48));
        assert!(t.contains("Log · 1 line back"), "{t}");
    }

    #[test]
    fn at_160x48_everything_is_on_one_screen_with_the_round_robin_visible() {
        let s = lab_state(true);
        let b = frame(&s, 160, 48);
        let t = text(&b);
        for name in HTTP.iter().chain(&UDP) {
            assert!(t.contains(name), "{name} missing:\n{t}");
        }
        for port in [8001, 8002, 8003, 8004, 2526, 2527, 2528] {
            assert!(t.contains(&format!("127.0.16.1:{port} ")), "backend {port} missing:\n{t}");
        }
        // Each HTTP backend took a quarter of the requests, each UDP one a third.
        let web = t.lines().filter(|l| l.contains("127.0.16.1:800") && l.trim_end().ends_with("25%")).count();
        assert_eq!(web, 4, "{t}");
        let ping = t.lines().filter(|l| l.contains("127.0.16.1:252") && l.trim_end().ends_with("33%")).count();
        assert_eq!(ping, 3, "{t}");
        let silent = t.lines().find(|l| l.contains("127.0.16.1:2528 ")).unwrap();
        assert!(silent.contains("down") && silent.contains("100%"), "no replies: 100% errors: {silent}");
        assert!(t.contains("· 40 req/s ·"), "{t}");
        assert!(t.contains("Balancers (2) · last 10 s"), "the span of the figures, as on the web page:\n{t}");
        assert!(t.contains("ERR%/NOREPLY%"), "{t}");
        assert!(t.contains("no reply 33%"), "a third of the datagrams got no reply:\n{t}");
        assert!(t.contains("web dashboard http://127.0.16.1:9100/"), "{t}");
        assert!(t.contains("Mbit/s"), "human rates:\n{t}");
        assert!(t.contains("03:04:05 http web"), "the log pane, times shortened:\n{t}");
        assert!(t.contains("Interfaces 2/3 up"), "{t}");
    }

    #[test]
    fn a_lost_probe_is_drawn_differently_from_a_slow_one() {
        let mut s = lab_state(true);
        let mut r = lab_report();
        // The first target: fast, then one slow probe, then one lost.
        let mut probes = vec![Some(0.2); 20];
        probes.extend([Some(40.0), None]);
        r.targets[0] = target(0, HTTP[0], ProbeKind::Http, &probes);
        s.absorb(&r);
        let b = frame(&s, 120, 40);
        let y = row_of(&b, "127.0.16.1:8001/").unwrap();
        let right = (0..b.area.width).rev().find(|&x| b[(x, y)].symbol() != " ").unwrap();
        let lost = &b[(right, y)];
        let slow = &b[(right - 1, y)];
        let fast = &b[(right - 2, y)];
        assert_eq!(lost.symbol(), "×");
        assert_eq!(lost.fg, Color::Red);
        assert_eq!(slow.symbol(), "█", "the slow probe is the tallest bar");
        assert_eq!(slow.fg, Color::Green);
        assert_eq!(fast.symbol(), "▁");
        // The chart marks the lost probe over its column.
        let chart_top = row_of(&b, "RTT of").unwrap() + 1;
        let marks = (0..b.area.width).filter(|&x| b[(x, chart_top)].symbol() == "×").count();
        assert!(marks >= 1, "{}", text(&b));
        // A target that lost everything is a wall of × in the chart.
        s.selected_target = 6;
        let b = frame(&s, 120, 40);
        let t = text(&b);
        assert!(t.contains("RTT of udp://127.0.16.1:2528"), "{t}");
        let top = row_of(&b, "RTT of").unwrap() + 1;
        let wall =
            (0..b.area.width).filter(|&x| b[(x, top)].symbol() == "×" && b[(x, top + 3)].symbol() == "×").count();
        assert!(wall >= 1, "{t}");
    }

    #[test]
    fn no_color_gives_no_colours_and_keeps_the_marks() {
        let s = lab_state(false);
        for (w, h) in [(80, 24), (160, 48)] {
            let b = frame(&s, w, h);
            for y in 0..h {
                for x in 0..w {
                    let c = &b[(x, y)];
                    assert!(c.fg == Color::Reset && c.bg == Color::Reset, "colour at {x},{y}: {c:?}");
                }
            }
            assert!(text(&b).contains('×'), "lost probes still show");
        }
    }

    #[test]
    fn help_pause_and_the_log_focus_show() {
        let mut s = lab_state(true);
        s.help = true;
        let t = text(&frame(&s, 80, 24));
        assert!(t.contains("Help") && t.contains("q  Ctrl-C"), "{t}");
        assert!(t.contains("SHARE: of the balancer's traffic."), "the help fits 80×24 whole:\n{t}");
        s.help = false;
        s.key(crossterm::event::KeyEvent::new(
            crossterm::event::KeyCode::Char('p'),
            crossterm::event::KeyModifiers::NONE,
        ));
        let t = text(&frame(&s, 80, 24));
        assert!(t.lines().next().unwrap().contains("PAUSED"), "{t}");
        s.focus = crate::dashboard::tui::state::Panel::Balancers;
        let t = text(&frame(&s, 80, 24));
        for port in [8001, 8002, 8003, 8004, 2526, 2527, 2528] {
            assert!(t.contains(&format!("127.0.16.1:{port} ")), "Tab to the balancers shows {port}:\n{t}");
        }
        assert!(t.contains("127.0.16.1:8001: no change since the start · 200 sent in all"), "{t}");
    }

    #[test]
    fn a_thousand_targets_draw_only_what_fits() {
        let mut s = lab_state(true);
        let mut r = lab_report();
        let probes: Vec<Option<f64>> = (0..60).map(|i| if i % 10 == 0 { None } else { Some(1.0) }).collect();
        r.targets = (0..1000)
            .map(|i| target(i, &format!("tcp://127.0.{}.{}:80", i / 250, i % 250), ProbeKind::Tcp, &probes))
            .collect();
        s.absorb(&r);
        s.selected_target = 999;
        let start = Instant::now();
        let b = frame(&s, 160, 48);
        let took = start.elapsed();
        let t = text(&b);
        assert!(t.contains("127.0.3.249:80"), "the selected (last) target is on screen:\n{t}");
        assert!(t.contains("of 1000"), "{t}");
        println!("a frame of 1000 targets at 160x48: {took:?}");
    }

    #[test]
    fn measured_weights_show_in_a_weight_column_and_the_selected_backend_says_why() {
        let mut s = lab_state(true);
        s.focus = crate::dashboard::tui::state::Panel::Balancers;
        // Round robin everywhere: no WEIGHT column.
        assert!(!text(&frame(&s, 100, 36)).contains("WEIGHT"));
        let why = "weight 0.07: rtt 21 ms (34× the median), no loss";
        let weighed = |n: u64| {
            let mut b = lab_balancers(n);
            b[0].strategy = "measured".into();
            for (i, be) in b[0].backends.iter_mut().enumerate() {
                be.weight_why = Some("weight 1: best (rtt 0.6 ms, no loss)".into());
                if i == 1 {
                    (be.measured, be.effective_weight, be.weight_why) = (0.07, 0.07, Some(why.into()));
                }
            }
            b
        };
        let t0 = Instant::now();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_316_645);
        s.take_balancers(&weighed(300), t0 + Duration::from_secs(20), now);
        s.take_balancers(&weighed(400), t0 + Duration::from_secs(30), now);
        s.selected_backend = 1;
        for (w, h) in [(80, 24), (100, 36)] {
            let t = text(&frame(&s, w, h));
            assert!(t.contains("WEIGHT"), "{w}x{h}:\n{t}");
            // A backend's row (not the target of the same address).
            let row_of = |addr: &str| {
                t.lines()
                    .find(|l| l.trim_start_matches(['›', ' ']).starts_with(addr))
                    .unwrap_or_else(|| panic!("{w}x{h}: no row of {addr}:\n{t}"))
            };
            let row = row_of("127.0.16.1:8002 ");
            assert!(row.contains(" 0.07 "), "{w}x{h}: {row}");
            let other = row_of("127.0.16.1:8001 ");
            assert!(other.contains(" 1 "), "{w}x{h}: {other}");
            assert!(t.contains(&format!("127.0.16.1:8002: {why}")), "{w}x{h}: the reason on the detail line:\n{t}");
        }
    }
}
