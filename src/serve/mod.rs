//! The lab: mock HTTP backends, classic UDP ping servers and an ICMP echo responder with
//! injected faults (`netpulse serve`).

pub mod http;
pub mod icmp;
pub mod udp;

/// A short printable form of a datagram for log lines: lossy UTF-8, at most 64 characters.
pub(crate) fn printable(payload: &[u8]) -> String {
    const SHOWN: usize = 64;
    let text = String::from_utf8_lossy(&payload[..payload.len().min(SHOWN)]);
    let text: String = text.chars().map(|c| if c.is_control() { '.' } else { c }).collect();
    if payload.len() > SHOWN { format!("{text}... ({} bytes)", payload.len()) } else { text }
}
