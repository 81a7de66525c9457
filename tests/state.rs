//! A rotation that survives restarts: after `up` stops (or is killed) and starts again, the
//! next request goes to the backend after the last one served, as the classic lab promises
//! within one run. Addresses 127.0.31.x.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Proc, addr, get, netpulse};

fn config(dir: &Path, ip: &str, keep: bool) -> std::path::PathBuf {
    let file = dir.join(format!("state-{ip}-{keep}.toml"));
    std::fs::write(
        &file,
        format!(
            r#"
[serve.http]
bind = "{ip}"
ports = "8001-8004"

[[balance.http]]
name = "web"
listen = "{ip}:8000"
backends = ["{ip}:8001", "{ip}:8002", "{ip}:8003", "{ip}:8004"]
access_log = false
[balance.http.health]
check = "none"

[state]
rotation = {keep}
"#
        ),
    )
    .unwrap();
    file
}

fn up(file: &Path, data: &Path) -> Proc {
    let mut cmd = netpulse();
    cmd.env("XDG_DATA_HOME", data).args(["up", "--no-tui", "--config"]).arg(file);
    Proc::up_command(cmd)
}

/// The port that answered `n` requests, one connection each.
fn ports(front: &str, n: usize) -> Vec<u16> {
    (0..n)
        .map(|_| {
            let r = get(addr(front), "/");
            assert_eq!(r.status, 200, "{}", r.body);
            r.body.rsplit(' ').next().unwrap().trim().parse().unwrap()
        })
        .collect()
}

#[test]
fn after_a_stop_or_a_kill_the_rotation_resumes_where_it_left_off() {
    let data = common::data_home();
    let file = config(&data, "127.0.31.1", true);
    let front = "127.0.31.1:8000";

    let mut first = up(&file, &data);
    assert!(first.output().contains("rotation kept"), "the banner says where: {}", first.output());
    assert_eq!(ports(front, 5), vec![8001, 8002, 8003, 8004, 8001]);
    assert!(first.signal_and_wait("TERM", Duration::from_secs(10)).success());

    let mut second = up(&file, &data);
    assert!(second.output().contains("rotation resumed"), "{}", second.output());
    assert_eq!(ports(front, 2), vec![8002, 8003], "the next request goes to the server after the last one");
    // Killed outright: what was saved (every second while the rotation moves) is kept.
    std::thread::sleep(save_wait());
    second.kill();

    let _third = up(&file, &data);
    assert_eq!(ports(front, 1), vec![8004]);
}

/// Longer than one save period, so a kill after it loses nothing.
fn save_wait() -> Duration {
    Duration::from_millis(1500)
}

#[test]
fn with_rotation_off_or_other_backends_it_starts_afresh() {
    let data = common::data_home();
    let off = config(&data, "127.0.31.2", false);
    let front = "127.0.31.2:8000";
    let mut first = up(&off, &data);
    assert_eq!(ports(front, 3), vec![8001, 8002, 8003]);
    assert!(first.signal_and_wait("TERM", Duration::from_secs(10)).success());
    let mut second = up(&off, &data);
    assert!(!second.output().contains("rotation kept"));
    assert_eq!(ports(front, 1), vec![8001], "rotation = false starts afresh");
    assert!(second.signal_and_wait("TERM", Duration::from_secs(10)).success());

    // Kept, then the backend list changes: a saved position over other backends means nothing.
    let on = config(&data, "127.0.31.2", true);
    let mut third = up(&on, &data);
    assert_eq!(ports(front, 3), vec![8001, 8002, 8003]);
    assert!(third.signal_and_wait("TERM", Duration::from_secs(10)).success());
    let text = std::fs::read_to_string(&on).unwrap().replace(", \"127.0.31.2:8004\"]", "]");
    std::fs::write(&on, text).unwrap();
    let fourth = up(&on, &data);
    assert!(fourth.output().contains("starts afresh"), "{}", fourth.output());
    assert_eq!(ports(front, 1), vec![8001]);
}

#[test]
fn a_corrupt_state_file_is_one_warning_and_the_rotation_starts_afresh() {
    let data = common::data_home();
    let file = config(&data, "127.0.31.3", true);
    let dir = data.join("netpulse/rotation");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("http-127.0.31.3-8000.json"), b"\x00garbage{").unwrap();
    let p = up(&file, &data);
    let out = p.output();
    assert_eq!(out.matches("ignoring the saved rotation").count(), 1, "{out}");
    assert_eq!(ports("127.0.31.3:8000", 2), vec![8001, 8002]);
}

/// The backends the UDP balancer's access log says the datagrams went to, in order.
fn udp_backends(out: &str) -> Vec<u16> {
    out.lines()
        .filter(|l| l.contains(" udp ping ") && l.contains(" -> "))
        .filter_map(|l| l.split(" -> ").nth(1)?.split(' ').next()?.rsplit(':').next()?.parse().ok())
        .collect()
}

#[test]
fn the_classic_udp_ping_continues_on_the_next_server_after_a_restart() {
    let data = common::data_home();
    let ip = "127.0.31.4";
    let file = data.join("udp.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[serve.udp]
bind = "{ip}"
ports = "2526-2528"

[[balance.udp]]
name = "ping"
listen = "{ip}:8888"
backends = ["{ip}:2526", "{ip}:2527", "{ip}:2528"]
[balance.udp.health]
check = "none"
"#
        ),
    )
    .unwrap();
    let ping = |n: &str| {
        let (code, out) = common::run(&["udp-ping", ip, "8888", "-c", n, "-i", "0.05"], Duration::from_secs(10));
        assert_eq!(code, 0, "{out}");
    };
    let mut first = up(&file, &data);
    ping("4");
    common::wait_until(format_args!("4 access log lines: {}", first.printed()), Duration::from_secs(5), || {
        (udp_backends(&first.output()).len() == 4).then_some(())
    });
    assert!(first.signal_and_wait("INT", Duration::from_secs(10)).success());
    assert_eq!(udp_backends(&first.output()), vec![2526, 2527, 2528, 2526]);

    let second = up(&file, &data);
    ping("2");
    common::wait_until(format_args!("2 access log lines: {}", second.printed()), Duration::from_secs(5), || {
        (udp_backends(&second.output()).len() == 2).then_some(())
    });
    assert_eq!(udp_backends(&second.output()), vec![2527, 2528], "ping 5 goes to the server after ping 4's");
}

#[test]
fn a_reload_keeps_the_rotation_going_and_the_saved_place_follows_it() {
    let data = common::data_home();
    let file = config(&data, "127.0.31.5", true);
    let front = "127.0.31.5:8000";
    let mut p = up(&file, &data);
    assert_eq!(ports(front, 3), vec![8001, 8002, 8003]);
    // Same backends, another timeout: the next generation takes the rotation over.
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("access_log = false", "access_log = false\ntimeout = \"5s\"")).unwrap();
    let pid = p.pid().to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    p.wait_for("reloaded", Duration::from_secs(10));
    assert_eq!(ports(front, 2), vec![8004, 8001], "the rotation went on through the reload");
    // Another backend list: the rotation's place carries on over the new list, and is what a
    // restart resumes.
    let text = std::fs::read_to_string(&file).unwrap().replace(", \"127.0.31.5:8004\"]", "]");
    std::fs::write(&file, text).unwrap();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    common::wait_until(format_args!("a second reload: {}", p.printed()), Duration::from_secs(10), || {
        (p.output().matches("reloaded").count() >= 2).then_some(())
    });
    let served = ports(front, 1);
    assert!(p.signal_and_wait("TERM", Duration::from_secs(10)).success());
    let again = up(&file, &data);
    assert!(again.output().contains("rotation resumed"), "{}", again.output());
    let next = ports(front, 1)[0];
    let order = [8001, 8002, 8003];
    let after = order[(order.iter().position(|&x| x == served[0]).unwrap() + 1) % 3];
    assert_eq!(next, after, "after a restart, the server after the last one served ({})", served[0]);
}
