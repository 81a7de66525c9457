//! The terminal dashboard, driven like a person would: the real binary in a real terminal
//! (tmux), keys sent, the screen read back. Addresses: 127.0.16.x.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{addr, get, wait_until};

const SCREEN: Duration = Duration::from_secs(15);

/// A tmux server of the test's own (its own socket: no user's session is touched), with one
/// 100×30 window running `sh`.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(tag: &str) -> Tmux {
        let t = Tmux { socket: format!("netpulse-test-{}-{tag}", std::process::id()) };
        let ok = t.cmd(&["new-session", "-d", "-x", "100", "-y", "30", "-s", "main", "sh"]).status().unwrap();
        assert!(ok.success(), "tmux new-session failed (is tmux installed?)");
        t
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket, "-f", "/dev/null"]).args(args);
        c
    }

    /// Types `keys` (tmux key names: "Down", "Tab", "C-c", or text).
    fn send(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "main"];
        args.extend(keys);
        assert!(self.cmd(&args).status().unwrap().success());
    }

    /// Makes the window `w`×`h`.
    fn resize(&self, w: u16, h: u16) {
        let (w, h) = (w.to_string(), h.to_string());
        assert!(self.cmd(&["resize-window", "-t", "main", "-x", &w, "-y", &h]).status().unwrap().success());
    }

    /// Types a shell command line and Enter.
    fn run(&self, line: &str) {
        self.send(&["-l", line]);
        self.send(&["Enter"]);
    }

    /// The screen as text (`escapes`: with the SGR sequences of colours and attributes).
    fn screen_with(&self, escapes: bool) -> String {
        let mut args = vec!["capture-pane", "-p", "-t", "main"];
        if escapes {
            args.push("-e");
        }
        let out = self.cmd(&args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.screen_with(false)
    }

    /// Waits until the screen satisfies `ok`, and returns it.
    fn wait(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        wait_until(format_args!("{what}; the screen:\n{}", Shown(&self.socket)), SCREEN, || {
            last = self.screen();
            ok(&last).then(|| last.clone())
        })
    }
}

/// The screen of a tmux server, read when displayed (for the message of a test that gives up).
struct Shown<'a>(&'a str);

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let out = Command::new("tmux")
            .args(["-L", self.0, "-f", "/dev/null", "capture-pane", "-p", "-t", "main"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        f.write_str(&out)
    }
}

impl Drop for Tmux {
    /// Kills what the shell still runs (netpulse keeps running on SIGHUP, which is all that
    /// closing the window sends it), then the server.
    fn drop(&mut self) {
        if let Ok(out) = self.cmd(&["list-panes", "-t", "main", "-F", "#{pane_pid}"]).output() {
            for shell in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"));
                for child in children.unwrap_or_default().split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", child]).status();
                }
            }
        }
        let _ = self.cmd(&["kill-server"]).status();
    }
}

/// A scratch directory for the test's files.
fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("netpulse-tui-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `BIN ARGS; echo exit=$?`, with the terminal's settings saved before and compared after (a
/// dashboard that left raw mode on would fail the comparison).
fn command_line(dir: &Path, env: &str, args: &str) -> String {
    let before = dir.join("stty-before");
    // History and the rotation go to the test's directory, not the user's ~/.local/share.
    format!(
        "stty -g > {b}; XDG_DATA_HOME={data} {env} {bin} {args}; echo exit=$?; stty -g | cmp -s - {b} && echo tty-restored",
        b = before.display(),
        data = dir.join("data").display(),
        bin = env!("CARGO_BIN_EXE_netpulse"),
    )
}

/// SGR colour codes (foreground or background, 8, 16, 256 or RGB colours) in captured text.
fn colours(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for seq in text.split("\x1b[").skip(1) {
        let Some(end) = seq.find('m') else { continue };
        let params: Vec<&str> = seq[..end].split(';').collect();
        let mut i = 0;
        while i < params.len() {
            match params[i].parse::<u16>().unwrap_or(0) {
                38 | 48 => {
                    found.push(seq[..end].to_string());
                    break;
                }
                30..=37 | 40..=47 | 90..=97 | 100..=107 => found.push(params[i].to_string()),
                _ => {}
            }
            i += 1;
        }
    }
    found
}

const LAB: &str = r#"
[serve.http]
bind = "127.0.16.1"
ports = "18001-18004"

[serve.udp]
bind = "127.0.16.1"
ports = "12526-12528"

[[balance.http]]
name = "web"
listen = "127.0.16.1:18000"
# The fifth backend does not exist: its health checks fail and say so.
backends = ["127.0.16.1:18001", "127.0.16.1:18002", "127.0.16.1:18003", "127.0.16.1:18004", "127.0.16.1:18005"]

[[balance.udp]]
name = "ping"
listen = "127.0.16.1:18888"
backends = ["127.0.16.1:12526", "127.0.16.1:12527", "127.0.16.1:12528"]

[monitor]
interval = "200ms"
targets = ["tcp://127.0.16.9:9"]
metrics = "127.0.16.1:19100"
"#;

#[test]
fn up_draws_the_dashboard_follows_keys_and_gives_the_terminal_back_on_q() {
    let dir = scratch("up");
    let config = dir.join("lab.toml");
    std::fs::write(&config, LAB).unwrap();
    let tmux = Tmux::start("up");
    tmux.run(&command_line(&dir, "", &format!("up -c {}", config.display())));

    // The dashboard: the verdict, every target, keys.
    let screen = tmux.wait("the dashboard with every target and a degraded verdict", |s| {
        s.contains("DEGRADED") && s.contains("tcp://127.0.16.9:9") && s.contains("udp://127.0.16.1:12528")
    });
    for port in 18001..=18005 {
        assert!(screen.contains(&format!("http://127.0.16.1:{port}/")), "target {port}:\n{screen}");
    }
    let header = screen.lines().next().unwrap();
    assert!(header.starts_with(" netpulse up"), "{screen}");
    assert!(header.trim_end().ends_with("http://127.0.16.1:19100/"), "the web dashboard's address on top:\n{screen}");
    assert!(screen.contains("q quit"), "{screen}");
    // Until traffic comes, the log pane shows how to try it (the end of the banner).
    assert!(
        screen.contains("try:") && screen.contains("  curl http://127.0.16.1:18000/"),
        "the banner in the log pane:\n{screen}"
    );
    assert!(screen.contains("RTT of http://127.0.16.1:18001/"), "the chart shows the first target:\n{screen}");
    // The dead backend's probes are lost: the sparkline marks them.
    let dead = screen.lines().find(|l| l.contains("http://127.0.16.1:18005/")).unwrap();
    assert!(dead.contains("down") && dead.contains('×'), "{dead}");

    // ↓ selects the next target, and the chart follows it.
    tmux.send(&["Down"]);
    tmux.wait("the chart of the second target", |s| s.contains("RTT of http://127.0.16.1:18002/"));

    // p pauses, p resumes.
    tmux.send(&["p"]);
    tmux.wait("PAUSED in the header", |s| s.lines().next().is_some_and(|l| l.contains("PAUSED")));
    tmux.send(&["p"]);
    tmux.wait("the pause to end", |s| s.lines().next().is_some_and(|l| !l.contains("PAUSED")));

    // ? shows the help, any key closes it.
    tmux.send(&["?"]);
    tmux.wait("the help", |s| s.contains("Help") && s.contains("Tab Shift-Tab"));
    tmux.send(&["Escape"]);
    tmux.wait("the help to close", |s| !s.contains("Tab Shift-Tab"));

    // Tab to the balancers: every backend, with its state.
    tmux.send(&["Tab"]);
    let screen = tmux.wait("the balancers panel focused", |s| s.contains("Tab panel: balancers"));
    for port in [18001, 18002, 18003, 18004, 18005, 12526, 12527, 12528] {
        assert!(screen.contains(&format!("127.0.16.1:{port} ")), "backend {port}:\n{screen}");
    }

    // A request's access-log line and the health warning go to the log pane, not over the
    // screen.
    let resp = get(addr("127.0.16.1:18000"), "/");
    assert_eq!(resp.status, 200);
    tmux.send(&["Tab", "Tab"]);
    let screen = tmux.wait("the access-log line and the health warning in the log pane", |s| {
        s.contains("Tab panel: log")
            && s.contains("http web")
            && s.contains("\"GET /\" -> 127.0.16.1:1800")
            && s.contains("127.0.16.1:18005 is down")
    });
    let lines: Vec<&str> = screen.lines().collect();
    assert!(lines[0].starts_with(" netpulse up"), "the header stays on top:\n{screen}");
    assert!(lines.iter().any(|l| l.starts_with(" ↑↓ select")), "the key line stays:\n{screen}");

    // At 80×24: names without their scheme keep a letter for the kind; the address and the
    // pause are whole.
    tmux.resize(80, 24);
    tmux.send(&["Tab", "p"]);
    let screen = tmux.wait("the dashboard at 80×24, paused", |s| {
        s.contains("h 127.0.16.1:18001 ") && s.contains("t 127.0.16.9:9 ") && s.contains("PAUSED")
    });
    let header = screen.lines().next().unwrap();
    assert!(header.trim_end().ends_with("http://127.0.16.1:19100/"), "{screen}");
    assert!(header.contains("PAUSED (") == header.contains(')'), "{header}");
    assert!(!screen.contains('…'), "nothing cut:\n{screen}");

    // q quits: the terminal is back as it was, with what stopping said, and exit status 0.
    tmux.send(&["q"]);
    let screen = tmux.wait("the shell after netpulse exits", |s| s.contains("exit=0") && s.contains("tty-restored"));
    assert!(!screen.contains("Tab panel"), "the dashboard is gone:\n{screen}");
    assert!(screen.contains("http balancer \"web\" stopped: "), "the stop summary:\n{screen}");
    assert!(
        screen.contains("127.0.16.1:18005 is down"),
        "diagnostics are printed again after the dashboard:\n{screen}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn monitor_honours_no_color_and_iface_and_ctrl_c_stops_it() {
    let listener = std::net::TcpListener::bind("127.0.16.2:18080").unwrap();
    let dir = scratch("monitor");
    let tmux = Tmux::start("monitor");
    let args = "monitor --interval 200ms --iface lo --web 127.0.16.2:19101 tcp://127.0.16.2:18080 tcp://127.0.16.3:9";
    tmux.run(&command_line(&dir, "NO_COLOR=1", args));
    let screen = tmux.wait("the dashboard of two targets, one down", |s| {
        s.contains("DEGRADED") && s.contains("Interfaces 1/1 up") && s.contains("×")
    });
    assert!(screen.contains("netpulse monitor"), "{screen}");
    let header = screen.lines().next().unwrap();
    assert!(header.trim_end().ends_with("web dashboard http://127.0.16.2:19101/"), "--web's address: {header}");
    // --iface lo: one interface of the machine's several.
    assert!(screen.lines().any(|l| l.starts_with("  lo ") || l.starts_with("› lo ")), "lo listed:\n{screen}");
    let colours = colours(&tmux.screen_with(true));
    assert!(colours.is_empty(), "NO_COLOR, yet colours: {colours:?}");

    // Ctrl-C is a key in raw mode: it stops the monitor as SIGINT does.
    tmux.send(&["C-c"]);
    let screen = tmux.wait("the shell after netpulse exits", |s| s.contains("exit=0") && s.contains("tty-restored"));
    assert!(!screen.contains("Interfaces 1/1"), "the dashboard is gone:\n{screen}");

    // --no-tui on a terminal: today's table.
    tmux.run(&format!(
        "clear; XDG_DATA_HOME={} {} monitor --no-tui --interval 100ms --count 2 tcp://127.0.16.2:18080",
        dir.join("data").display(),
        env!("CARGO_BIN_EXE_netpulse")
    ));
    let screen = tmux.wait("the plain table", |s| s.contains("TARGET") && s.contains("MDEV ms"));
    assert!(!screen.contains("Tab panel"), "{screen}");
    drop(listener);
    let _ = std::fs::remove_dir_all(dir);
}
