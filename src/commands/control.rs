//! `netpulse reload` and `netpulse backend drain|disable|enable|weight`: ask a running `up` over
//! its admin API (on its metrics address, from this host) and print its answer. A plain
//! HTTP/1.1 exchange over one connection: the answer is short, and it must work where nothing
//! else is installed.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};

use super::{UsageError, say};
use crate::cli::{BackendCommand, ControlArgs};
use crate::config::Config;

/// Time to connect to the running `up`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time for its answer (a reload binds sockets and may resolve names).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(40);
/// The longest answer read.
const MAX_ANSWER: u64 = 1 << 20;

pub(super) fn reload(at: &ControlArgs) -> Result<ExitCode> {
    ask(at, "POST", "/api/v1/admin/reload", "")
}

pub(super) fn backend(cmd: BackendCommand) -> Result<ExitCode> {
    let (t, action, body) = match cmd {
        BackendCommand::Drain(t) => (t, "drain", String::new()),
        BackendCommand::Disable(t) => (t, "disable", String::new()),
        BackendCommand::Enable(t) => (t, "enable", String::new()),
        BackendCommand::Weight(w) => {
            let t = crate::cli::BackendTarget { balancer: w.balancer, backend: w.backend, at: w.at };
            (t, "weight", w.weight.to_string())
        }
    };
    let path =
        format!("/api/v1/admin/balancers/{}/backends/{}/{action}", encode(&t.balancer), encode(t.backend.trim()));
    let method = if action == "weight" { "PUT" } else { "POST" };
    ask(&t.at, method, &path, &body)
}

/// The admin address: `--metrics`, else the config's `[monitor] metrics`.
fn address(at: &ControlArgs) -> Result<SocketAddr> {
    if let Some(a) = at.metrics {
        return Ok(a.0);
    }
    let (config, named) = match &at.config {
        Some(path) => (Config::load(path)?, path.display().to_string()),
        None => (Config::embedded_default(), "the embedded default config".to_string()),
    };
    config.monitor.and_then(|m| m.metrics).map(|a| a.0).ok_or_else(|| {
        UsageError(format!(
            "{named} has no [monitor] metrics address, so `netpulse up` serves no admin API there; \
             give --metrics ADDR, or send the process SIGHUP to reload (kill -HUP PID)"
        ))
        .into()
    })
}

/// Sends one request and prints the answer's message; an answer that refuses is the error.
fn ask(at: &ControlArgs, method: &str, path: &str, body: &str) -> Result<ExitCode> {
    let addr = address(at)?;
    let down = |e: std::io::Error| {
        anyhow!(
            "nothing answers at {addr} ({e}): is `netpulse up` running with its metrics there? \
             (give --metrics ADDR or --config FILE)"
        )
    };
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(down)?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).context("cannot set a read timeout")?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).with_context(|| format!("cannot send to {addr}"))?;
    let mut answer = Vec::new();
    stream.take(MAX_ANSWER).read_to_end(&mut answer).with_context(|| format!("no answer from {addr}"))?;
    let (status, text) = parse(&answer).ok_or_else(|| anyhow!("{addr} answered something that is not HTTP"))?;
    let json: serde_json::Value = serde_json::from_str(text).unwrap_or(serde_json::Value::Null);
    match (status, json["message"].as_str(), json["error"].as_str()) {
        (200, Some(message), _) => {
            say(&format!("{message}\n"))?;
            Ok(ExitCode::SUCCESS)
        }
        (_, _, Some(error)) => Err(anyhow!("{error}")),
        (404, ..) => Err(anyhow!("{addr} has no admin API (is it an older netpulse, or not netpulse?)")),
        _ => Err(anyhow!("{addr} answered {status}: {}", text.trim())),
    }
}

/// The status and body of an HTTP/1.1 answer read to its end.
fn parse(answer: &[u8]) -> Option<(u16, &str)> {
    let text = std::str::from_utf8(answer).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body))
}

/// Percent-encodes a path segment (everything but unreserved characters and `:`).
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_encoded_and_answers_parsed() {
        assert_eq!(encode("[::1]:8001"), "%5B%3A%3A1%5D%3A8001".replace("%3A", ":"));
        assert_eq!(encode("my web/1"), "my%20web%2F1");
        assert_eq!(
            parse(b"HTTP/1.1 403 Forbidden\r\nx: y\r\n\r\n{\"error\":\"no\"}"),
            Some((403, "{\"error\":\"no\"}"))
        );
        assert_eq!(parse(b"garbage"), None);
    }
}
