//! The balancers' series, from their statistics snapshots: `netpulse_backend_*` for what every
//! backend has (labelled `balancer`, `backend` and `proto`), `netpulse_http_*` and
//! `netpulse_udp_*` for the rest (labelled `balancer`, and `backend` for a backend's own).

use super::text::{Kind, Labels, Page, ms_as_seconds_label};
use crate::stats::traffic::{
    BackendSnapshot, BackendState, BalancerSnapshot, HttpBackendCounts, HttpTotals, LATENCY_BOUNDS_MS,
    UdpBackendCounts, UdpTotals,
};

fn balancer(b: &BalancerSnapshot) -> Labels {
    Labels::new().with("balancer", &b.name)
}

fn backend(b: &BalancerSnapshot, be: &BackendSnapshot) -> Labels {
    balancer(b).with("backend", be.addr)
}

/// Seconds since the Unix epoch of an RFC 3339 time as the snapshots write it.
fn unix_seconds(rfc3339: &str) -> Option<f64> {
    let t: jiff::Timestamp = rfc3339.parse().ok()?;
    Some(t.as_millisecond() as f64 / 1000.0)
}

pub(super) fn write(page: &mut Page, balancers: &[BalancerSnapshot]) {
    common(page, balancers);
    http(page, balancers);
    udp(page, balancers);
}

/// What every balancer and every backend has, HTTP or UDP.
fn common(page: &mut Page, balancers: &[BalancerSnapshot]) {
    let backends = || balancers.iter().flat_map(|b| b.backends.iter().map(move |be| (b, be)));
    let labels = |b: &BalancerSnapshot, be: &BackendSnapshot| backend(b, be).with("proto", b.proto);

    let mut f = page.family(
        "netpulse_balancer_info",
        Kind::Gauge,
        "A balancer: its protocol, listening address and strategy (always 1).",
    );
    for b in balancers {
        let listen = b.listen.map(|a| a.to_string()).unwrap_or_default();
        f.sample(&balancer(b).with("proto", b.proto).with("listen", listen).with("strategy", &b.strategy), 1u64);
    }
    let mut f = page.family(
        "netpulse_balancer_start_time_seconds",
        Kind::Gauge,
        "When the balancer started, in seconds since the Unix epoch.",
    );
    for b in balancers {
        if let Some(t) = unix_seconds(&b.started) {
            f.sample(&balancer(b).with("proto", b.proto), t);
        }
    }

    let mut f = page.family("netpulse_backend_up", Kind::Gauge, "Whether the backend is in rotation (1) or not (0).");
    for (b, be) in backends() {
        f.sample(&labels(b, be), be.state == BackendState::Up);
    }
    let mut f = page.family(
        "netpulse_backend_state",
        Kind::Gauge,
        "The backend's state, one series per state: up (in rotation), down (failed its health checks), ejected (failed on the data path, out for a while), draining or disabled (by an operator).",
    );
    for (b, be) in backends() {
        for (name, state) in [
            ("up", BackendState::Up),
            ("down", BackendState::Down),
            ("ejected", BackendState::Ejected),
            ("draining", BackendState::Draining),
            ("disabled", BackendState::Disabled),
        ] {
            f.sample(&labels(b, be).with("state", name), be.state == state);
        }
    }
    let mut f = page.family(
        "netpulse_backend_weight",
        Kind::Gauge,
        "The weight the balancer's strategy gives the backend now: its configured weight times its measured factor.",
    );
    for (b, be) in backends() {
        f.sample(&labels(b, be), be.effective_weight);
    }
    let mut f = page.family(
        "netpulse_backend_measured_factor",
        Kind::Gauge,
        "The factor (0.05 to 1) the measured strategy applies to the backend's weight, from its probes' round trip and loss (1 under other strategies).",
    );
    for (b, be) in backends() {
        f.sample(&labels(b, be), be.measured);
    }
    let mut f = page.family(
        "netpulse_backend_state_change_timestamp_seconds",
        Kind::Gauge,
        "When the backend last changed state (or its balancer started, if it never did), in seconds since the Unix epoch.",
    );
    for (b, be) in backends() {
        if let Some(t) = unix_seconds(&be.since) {
            f.sample(&labels(b, be), t);
        }
    }

    type Count = fn(&BackendSnapshot) -> Option<u64>;
    let counts: [(&str, &str, Count); 3] = [
        (
            "netpulse_backend_requests_total",
            "Requests sent to the backend: HTTP requests (a retried one counts at each backend it tried), UDP datagrams.",
            |be| be.http.as_ref().map(|h| h.requests).or(be.udp.as_ref().map(|u| u.datagrams_sent)),
        ),
        (
            "netpulse_backend_sent_bytes_total",
            "Bytes sent to the backend (HTTP heads and bodies, UDP payloads).",
            |be| be.http.as_ref().map(|h| h.bytes_sent).or(be.udp.as_ref().map(|u| u.bytes_sent)),
        ),
        (
            "netpulse_backend_received_bytes_total",
            "Bytes received from the backend and relayed (HTTP heads and bodies, UDP payloads).",
            |be| be.http.as_ref().map(|h| h.bytes_received).or(be.udp.as_ref().map(|u| u.bytes_received)),
        ),
    ];
    for (name, help, get) in counts {
        let mut f = page.family(name, Kind::Counter, help);
        for (b, be) in backends() {
            if let Some(v) = get(be) {
                f.sample(&labels(b, be), v);
            }
        }
    }
}

fn http(page: &mut Page, balancers: &[BalancerSnapshot]) {
    let totals = || balancers.iter().filter_map(|b| b.http.as_ref().map(|t| (b, t)));
    type Total = fn(&HttpTotals) -> u64;
    let counts: [(&str, &str, Total); 6] = [
        ("netpulse_http_client_connections_accepted_total", "Client connections accepted.", |t| t.clients_accepted),
        ("netpulse_http_requests_total", "Requests from clients.", |t| t.requests),
        ("netpulse_http_no_backend_total", "Requests no backend could take (answered 503).", |t| t.no_backend),
        (
            "netpulse_http_refused_total",
            "Requests refused before any backend saw them (malformed, too large, too slow).",
            |t| t.refused,
        ),
        ("netpulse_http_client_aborts_total", "Clients that left before their answer was complete.", |t| {
            t.client_aborts
        }),
        ("netpulse_http_retries_total", "Requests sent again to another backend.", |t| t.retries),
    ];
    let mut f = page.family("netpulse_http_client_connections", Kind::Gauge, "Client connections open now.");
    for (b, t) in totals() {
        f.sample(&balancer(b), t.clients_active);
    }
    for (name, help, get) in counts {
        let mut f = page.family(name, Kind::Counter, help);
        for (b, t) in totals() {
            f.sample(&balancer(b), get(t));
        }
    }
    let mut f = page.family(
        "netpulse_http_responses_total",
        Kind::Counter,
        "Responses to clients by status class (the balancer's own 502, 503 and 504 included).",
    );
    for (b, t) in totals() {
        for (class, n) in t.responses.pairs() {
            f.sample(&balancer(b).with("code", class), n);
        }
    }

    let backends =
        || balancers.iter().flat_map(|b| b.backends.iter().filter_map(move |be| be.http.as_ref().map(|h| (b, be, h))));
    let mut f = page.family(
        "netpulse_http_backend_responses_total",
        Kind::Counter,
        "Responses from the backend by status class.",
    );
    for (b, be, h) in backends() {
        for (class, n) in h.responses.pairs() {
            f.sample(&backend(b, be).with("code", class), n);
        }
    }
    let mut f = page.family(
        "netpulse_http_backend_errors_total",
        Kind::Counter,
        "Requests to the backend that got no response, by cause.",
    );
    for (b, be, h) in backends() {
        for (cause, n) in &h.errors {
            f.sample(&backend(b, be).with("cause", cause), *n);
        }
    }
    let mut f = page.family(
        "netpulse_http_backend_retried_total",
        Kind::Counter,
        "Requests to the backend that failed and were retried on another.",
    );
    for (b, be, h) in backends() {
        f.sample(&backend(b, be), h.retried);
    }
    type Level = fn(&HttpBackendCounts) -> i64;
    let levels: [(&str, &str, Level); 2] = [
        ("netpulse_http_backend_connections", "Connections open to the backend, busy or idle.", |h| h.connections),
        ("netpulse_http_backend_idle_connections", "Connections to the backend idle in the keep-alive pool.", |h| {
            h.idle
        }),
    ];
    for (name, help, get) in levels {
        let mut f = page.family(name, Kind::Gauge, help);
        for (b, be, h) in backends() {
            f.sample(&backend(b, be), get(h));
        }
    }
    let le: Vec<String> = LATENCY_BOUNDS_MS.iter().map(|&ms| ms_as_seconds_label(ms)).collect();
    let mut f = page.family(
        "netpulse_http_backend_latency_seconds",
        Kind::Histogram,
        "Time from sending a request to the backend to its response head.",
    );
    for (b, be, h) in backends() {
        f.histogram(&backend(b, be), &le, &h.latency.counts, h.latency.sum_ms / 1000.0);
    }
}

fn udp(page: &mut Page, balancers: &[BalancerSnapshot]) {
    let totals = || balancers.iter().filter_map(|b| b.udp.as_ref().map(|t| (b, t)));
    let mut f = page.family("netpulse_udp_flows", Kind::Gauge, "Client flows open now.");
    for (b, t) in totals() {
        f.sample(&balancer(b), t.flows_open);
    }
    type Total = fn(&UdpTotals) -> u64;
    let counts: [(&str, &str, Total); 5] = [
        ("netpulse_udp_requests_total", "Datagrams from clients.", |t| t.requests),
        ("netpulse_udp_replies_total", "Datagrams relayed back to clients.", |t| t.replies),
        ("netpulse_udp_flows_opened_total", "Client flows opened.", |t| t.flows_opened),
        (
            "netpulse_udp_flows_evicted_total",
            "Client flows closed to make room for a new one (the table was full).",
            |t| t.flows_evicted,
        ),
        ("netpulse_udp_flows_expired_total", "Client flows closed after being idle.", |t| t.flows_expired),
    ];
    for (name, help, get) in counts {
        let mut f = page.family(name, Kind::Counter, help);
        for (b, t) in totals() {
            f.sample(&balancer(b), get(t));
        }
    }
    let mut f = page.family("netpulse_udp_drops_total", Kind::Counter, "Datagrams dropped, by reason.");
    for (b, t) in totals() {
        for (reason, n) in &t.drops {
            f.sample(&balancer(b).with("reason", reason), *n);
        }
    }

    let backends =
        || balancers.iter().flat_map(|b| b.backends.iter().filter_map(move |be| be.udp.as_ref().map(|u| (b, be, u))));
    type Backend = fn(&UdpBackendCounts) -> u64;
    let counts: [(&str, &str, Backend); 2] = [
        ("netpulse_udp_backend_replies_total", "Datagrams received from the backend.", |u| u.datagrams_received),
        (
            "netpulse_udp_backend_unanswered_total",
            "Datagrams sent to the backend that got no reply before their flow closed or a later one replaced them.",
            |u| u.unanswered,
        ),
    ];
    for (name, help, get) in counts {
        let mut f = page.family(name, Kind::Counter, help);
        for (b, be, u) in backends() {
            f.sample(&backend(b, be), get(u));
        }
    }
}
