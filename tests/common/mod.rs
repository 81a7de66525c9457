//! Helpers for the integration tests: run the real binary, wait for it to listen, and talk to
//! it over loopback. Each test uses its own 127.x.y.z address so tests never share a port.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Polls `f` every 10 ms until it gives `Some`, and returns that; panics naming `what` after
/// `limit` (`what` is formatted only then, so it can show the state at the time of giving up).
/// The one way the tests wait for something to happen.
pub fn wait_until<T>(what: impl fmt::Display, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < deadline, "gave up after {limit:?} waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// The binary under test, with a data directory of its own (`XDG_DATA_HOME`), so that the
/// history it records never touches the user's and no two runs share a file.
pub fn netpulse() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_netpulse"));
    cmd.env("XDG_DATA_HOME", data_home());
    cmd
}

/// A fresh directory for one run's data, under one directory per test process.
pub fn data_home() -> std::path::PathBuf {
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("netpulse-test-data-{}", std::process::id())).join(n.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A running `netpulse` whose output is collected; killed when dropped.
pub struct Proc {
    child: Child,
    out: Arc<Mutex<String>>,
    /// The threads copying stdout and stderr into `out`; they end at EOF, when the child exits.
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    /// Starts `netpulse ARGS` and waits until it says it is up.
    pub fn up(args: &[&str]) -> Proc {
        let p = Proc::spawn(args);
        p.wait_for("Ctrl-C stops it.", Duration::from_secs(10));
        p
    }

    /// Starts `cmd` (see [`Proc::spawn_command`]) and waits until netpulse says it is up.
    pub fn up_command(cmd: Command) -> Proc {
        let p = Proc::spawn_command(cmd);
        p.wait_for("Ctrl-C stops it.", Duration::from_secs(10));
        p
    }

    pub fn spawn(args: &[&str]) -> Proc {
        let mut cmd = netpulse();
        cmd.args(args);
        Proc::spawn_command(cmd)
    }

    /// Starts `cmd` (which ends by running netpulse, e.g. under `ip netns exec`) with its output
    /// collected.
    pub fn spawn_command(mut cmd: Command) -> Proc {
        if !cmd.get_envs().any(|(k, _)| k == "XDG_DATA_HOME") {
            cmd.env("XDG_DATA_HOME", data_home());
        }
        let mut child =
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start netpulse");
        let out = Arc::new(Mutex::new(String::new()));
        let readers =
            [Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>, Box::new(child.stderr.take().unwrap())]
                .into_iter()
                .map(|stream| {
                    let out = out.clone();
                    thread::spawn(move || {
                        for line in BufReader::new(stream).lines() {
                            let Ok(line) = line else { break };
                            let mut o = out.lock().unwrap();
                            o.push_str(&line);
                            o.push('\n');
                        }
                    })
                })
                .collect();
        Proc { child, out, readers }
    }

    /// Everything printed so far (stdout and stderr).
    pub fn output(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    /// The output as of when it is displayed, for the message of a [`wait_until`] that gives up.
    pub fn printed(&self) -> impl fmt::Display + '_ {
        Printed(&self.out)
    }

    /// Waits until the output contains `text`; panics with the output after `limit`.
    pub fn wait_for(&self, text: &str, limit: Duration) {
        wait_until(format_args!("netpulse to print {text:?}; output:\n{}", self.printed()), limit, || {
            self.output().contains(text).then_some(())
        });
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (e.g. "TERM") and waits up to `limit` for the exit status.
    pub fn signal_and_wait(&mut self, signal: &str, limit: Duration) -> ExitStatus {
        let ok = Command::new("kill").args([&format!("-{signal}"), &self.pid().to_string()]).status().unwrap();
        assert!(ok.success());
        self.wait(limit)
    }

    /// Waits up to `limit` for the exit status, then for the reader threads to reach EOF, so
    /// that [`Proc::output`] holds everything the process printed.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let child = &mut self.child;
        let status = wait_until(format_args!("netpulse to exit; output:\n{}", Printed(&self.out)), limit, || {
            child.try_wait().unwrap()
        });
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
        status
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a [`Proc`] printed, read when displayed.
struct Printed<'a>(&'a Mutex<String>);

impl fmt::Display for Printed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.lock().unwrap())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `netpulse ARGS` to completion (at most `limit`); returns the exit code and everything
/// it printed (stdout and stderr).
pub fn run(args: &[&str], limit: Duration) -> (i32, String) {
    let mut p = Proc::spawn(args);
    let status = p.wait(limit);
    (status.code().unwrap_or(-1), p.output())
}

/// An HTTP response as the tests see it.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 client connection that keeps the connection open between requests.
pub struct Http {
    reader: BufReader<TcpStream>,
}

impl Http {
    pub fn connect(addr: SocketAddr) -> Http {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Http { reader: BufReader::new(s) }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.reader.get_ref().local_addr().unwrap()
    }

    /// Sends raw bytes and reads one response.
    pub fn raw(&mut self, request: &[u8]) -> Resp {
        self.reader.get_mut().write_all(request).unwrap();
        self.read_response()
    }

    pub fn get(&mut self, path: &str) -> Resp {
        self.raw(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
    }

    /// Sends a HEAD request and reads the response, which has no body whatever it announces.
    pub fn head(&mut self, path: &str) -> Resp {
        self.reader.get_mut().write_all(format!("HEAD {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes()).unwrap();
        self.read_response_head()
    }

    pub fn read_response(&mut self) -> Resp {
        let mut resp = self.read_response_head();
        if (100..200).contains(&resp.status) || resp.status == 204 || resp.status == 304 {
            return resp;
        }
        self.read_body(&mut resp);
        resp
    }

    fn read_response_head(&mut self) -> Resp {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("status line");
        let status: u16 =
            line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap();
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        Resp { status, headers, body: String::new() }
    }

    fn read_body(&mut self, resp: &mut Resp) {
        if let Some(len) = resp.header("content-length") {
            let mut body = vec![0u8; len.parse().unwrap()];
            self.reader.read_exact(&mut body).unwrap();
            resp.body = String::from_utf8_lossy(&body).into_owned();
        } else if resp.header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            let mut body = Vec::new();
            loop {
                let mut size = String::new();
                self.reader.read_line(&mut size).unwrap();
                let n = usize::from_str_radix(size.trim(), 16).unwrap();
                let mut chunk = vec![0u8; n + 2];
                self.reader.read_exact(&mut chunk).unwrap();
                body.extend_from_slice(&chunk[..n]);
                if n == 0 {
                    break;
                }
            }
            resp.body = String::from_utf8_lossy(&body).into_owned();
        }
    }
}

/// One GET on a fresh connection.
pub fn get(addr: SocketAddr, path: &str) -> Resp {
    Http::connect(addr).get(path)
}

/// Waits until a TCP port accepts connections.
pub fn wait_tcp(addr: SocketAddr) {
    wait_until(format_args!("{addr} to accept"), Duration::from_secs(10), || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
    });
}

/// A UDP socket on `ip` with a read timeout, for talking to balancers.
pub fn udp_client(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind(format!("{ip}:0")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The names in `a="x",b="y\"z"`.
pub fn label_names(labels: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = labels;
    while let Some((name, after)) = rest.split_once("=\"") {
        names.push(name.trim_start_matches(',').to_string());
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        rest = &after[(end + 1).min(after.len())..];
    }
    names
}
