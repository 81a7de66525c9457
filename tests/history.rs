//! History: what `up` and `monitor` record and `netpulse history` reads back, and the faults
//! that must not stop monitoring (a killed process, a corrupt file, an unwritable path, a
//! second writer, a full disk). Addresses 127.0.18.x.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Proc, get, run, wait_until};
use serde_json::Value;

const QUICK: Duration = Duration::from_secs(10);

/// A fresh directory of this test's own.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("netpulse-history-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `netpulse history --history FILE ARGS`: exit code and output.
fn history(file: &Path, args: &[&str]) -> (i32, String) {
    let mut all = vec!["history", "--history", file.to_str().unwrap()];
    all.extend(args);
    run(&all, QUICK)
}

/// `netpulse history ... --format json` for one target, parsed.
fn history_json(file: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--format", "json", "--since", "1h"];
    all.extend(args);
    let (code, out) = history(file, &all);
    assert_eq!(code, 0, "{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The JSON reports a `monitor --format json` printed so far.
fn reports(p: &Proc) -> Vec<Value> {
    p.output().lines().filter(|l| l.starts_with('{')).filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// `netpulse monitor TARGET --count N` recording into `file` (100 ms apart, JSON lines): exit
/// code and output.
fn monitor_reports(file: &Path, target: &str, count: &str) -> (i32, String) {
    let args = ["monitor", target, "--interval", "100ms", "--count", count, "--format", "json", "--history"];
    let mut all = args.to_vec();
    all.push(file.to_str().unwrap());
    run(&all, QUICK)
}

fn monitor(file: &Path, targets: &[&str]) -> Proc {
    let mut args = vec!["monitor", "--interval", "100ms", "--format", "json", "--history", file.to_str().unwrap()];
    args.extend(targets);
    Proc::spawn(&args)
}

/// Waits until the monitor has printed `n` reports more than `after`, the last `n` of them
/// with the first target `up` (if given).
fn wait_reports(p: &Proc, after: usize, n: usize, up: Option<bool>) -> usize {
    wait_until(format_args!("{n} more reports (up: {up:?}); output:\n{}", p.printed()), QUICK, || {
        let r = reports(p);
        let fits =
            r.len() >= after + n && up.is_none_or(|up| r[r.len() - n..].iter().all(|x| x["targets"][0]["up"] == up));
        fits.then_some(r.len())
    })
}

fn udp_server(ip: &str) -> Proc {
    Proc::up(&["serve", "udp", "--bind", ip, "--ports", "2526", "-q"])
}

#[test]
fn history_counts_every_probe_the_monitor_did_and_the_outage_between() {
    let dir = scratch("outage");
    let file = dir.join("h.db");
    let server = udp_server("127.0.18.1");
    let mut mon = monitor(&file, &["udp://127.0.18.1:2526"]);
    let seen = wait_reports(&mon, 0, 5, Some(true));
    drop(server);
    let seen = wait_reports(&mon, seen, 3, Some(false));
    let _server = udp_server("127.0.18.1");
    wait_reports(&mon, seen, 5, Some(true));
    assert!(mon.signal_and_wait("TERM", QUICK).success());
    let last = reports(&mon).pop().unwrap();
    let (sent, received) = (&last["targets"][0]["sent_total"], &last["targets"][0]["received_total"]);

    // (The outage is short: --min-outage 0s lists it.)
    let doc = history_json(&file, &["udp://127.0.18.1:2526", "--step", "1s", "--min-outage", "0s"]);
    let t = &doc["targets"][0];
    assert_eq!((&t["sent"], &t["received"]), (sent, received), "every probe the monitor counted");
    let outages = t["outages"].as_array().unwrap();
    assert_eq!(outages.len(), 1, "{outages:?}");
    let o = &outages[0];
    assert_eq!(
        (o["loss_pct"].as_f64(), o["ended_by"].as_str(), o["ongoing"].as_bool()),
        (Some(100.0), Some("up"), Some(false)),
        "{o}"
    );
    assert!(o["sent"].as_u64().unwrap() >= 1 && o["duration_s"].as_f64().unwrap() > 0.0, "{o}");
    assert!(t["uptime_pct"].as_f64().unwrap() < 100.0 && t["loss_pct"].as_f64().unwrap() > 0.0, "{}", t["uptime_pct"]);
    let series = t["series"].as_array().unwrap();
    let in_series: u64 = series.iter().map(|p| p["sent"].as_u64().unwrap()).sum();
    assert_eq!(Some(in_series), sent.as_u64(), "the per-step series adds up to the total");

    // What a person reads: the outage with its loss, and the events.
    let (code, out) = history(&file, &["--since", "1h", "--events", "--min-outage", "0s"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("udp://127.0.18.1:2526") && out.contains("  outage ") && out.contains("loss 100% of"),
        "{out}"
    );
    for kind in ["start", "target_down", "target_up", "stop"] {
        assert!(out.contains(&format!("  {kind} ")), "no {kind} event: {out}");
    }
    let (code, out) = history(&file, &["--since", "1h", "--format", "csv", "--step", "1m"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("target,time,sent,received,loss_pct,rtt_min_ms,"), "{out}");
    assert!(out.lines().skip(1).all(|l| l.starts_with("udp://127.0.18.1:2526,")), "{out}");
    // The minutes the hour touches: 60 whole ones, or 59 and the two it cuts at its ends.
    let steps = out.lines().count() - 1;
    assert!(steps == 61 || steps == 60, "a header and the hour's minutes: {out}");
}

#[test]
fn a_killed_monitor_loses_at_most_its_last_interval_and_the_file_opens_cleanly() {
    let dir = scratch("kill9");
    let file = dir.join("h.db");
    let _server = udp_server("127.0.18.2");
    let mut mon = monitor(&file, &["udp://127.0.18.2:2526"]);
    wait_reports(&mon, 0, 15, None);
    mon.kill(); // SIGKILL
    let printed = reports(&mon);
    let before_last = printed[printed.len() - 2]["targets"][0]["sent_total"].as_u64().unwrap();
    let doc = history_json(&file, &[]);
    let sent = doc["targets"][0]["sent"].as_u64().unwrap();
    assert!(
        sent >= before_last,
        "history has {sent} probes; the monitor had printed {before_last} an interval before it died"
    );

    // The next run packs what the killed one left and notes where it ended.
    let (code, out) = monitor_reports(&file, "udp://127.0.18.2:2526", "3");
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("history:"), "no warning: {out}");
    let (code, out) = history(&file, &["--since", "1h", "--events"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("recording ended without a stop (killed or crashed)"), "{out}");
    let doc = history_json(&file, &[]);
    assert!(doc["targets"][0]["sent"].as_u64().unwrap() >= sent + 3, "{doc}");
}

#[test]
fn a_corrupt_file_is_one_warning_and_left_alone_while_monitoring_goes_on() {
    let dir = scratch("corrupt");
    let file = dir.join("h.db");
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, &garbage).unwrap();
    let (code, out) = monitor_reports(&file, "tcp://127.0.18.3:9", "3");
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with('{')).count(), 3, "{out}");
    let warnings: Vec<&str> = out.lines().filter(|l| l.contains("history:")).collect();
    assert_eq!(warnings.len(), 1, "{out}");
    assert!(warnings[0].contains("is not a netpulse history file") && warnings[0].contains("--history"), "{out}");
    assert_eq!(std::fs::read(&file).unwrap(), garbage, "the file is not overwritten");
    let (code, out) = history(&file, &[]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(out.lines().count(), 1, "one line: {out}");
    assert!(out.contains("is not a netpulse history file"), "{out}");
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, options: &str) -> Tmpfs {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs", dir.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(ok.success(), "mount -t tmpfs (the tests run as root)");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn an_unwritable_path_is_one_warning_and_up_serves_without_history() {
    let dir = scratch("unwritable");
    // A read-only file system...
    let ro = dir.join("ro");
    std::fs::create_dir_all(&ro).unwrap();
    let _ro = Tmpfs::mount(&ro, "ro,size=1m");
    // ...and a "directory" that is a file.
    std::fs::write(dir.join("file"), "x").unwrap();
    for (n, path, why) in
        [(4, ro.join("h.db"), "Read-only file system"), (5, dir.join("file/h.db"), "cannot create the directory")]
    {
        let ip = format!("127.0.18.{n}");
        let config = dir.join(format!("{n}.toml"));
        std::fs::write(
            &config,
            format!(
                "[serve.http]\nbind = \"{ip}\"\nports = \"8001\"\n[[balance.http]]\nlisten = \"{ip}:8000\"\n\
                 backends = [\"{ip}:8001\"]\naccess_log = false\n[monitor]\ninterval = \"100ms\"\n\
                 [history]\npath = \"{}\"\n",
                path.display()
            ),
        )
        .unwrap();
        let mut up = Proc::up(&["up", "--config", config.to_str().unwrap(), "-q"]);
        let out = up.output();
        assert!(out.contains(&format!("  history        off (cannot use {})", path.display())), "{out}");
        let warnings: Vec<&str> = out.lines().filter(|l| l.contains("history:")).collect();
        assert_eq!(warnings.len(), 1, "{out}");
        assert!(warnings[0].contains(why) && warnings[0].contains("running without history"), "{out}");
        assert_eq!(get(common::addr(&format!("{ip}:8000")), "/").status, 200, "balancing goes on");
        assert!(up.signal_and_wait("TERM", QUICK).success());
    }
}

#[test]
fn a_second_writer_is_told_and_readers_share_the_file() {
    let dir = scratch("two");
    let file = dir.join("h.db");
    let mut first = monitor(&file, &["tcp://127.0.18.6:9"]);
    wait_reports(&first, 0, 3, None);
    let (code, out) = monitor_reports(&file, "tcp://127.0.18.6:9", "2");
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with('{')).count(), 2, "the second monitor still monitors: {out}");
    let warnings: Vec<&str> = out.lines().filter(|l| l.contains("history:")).collect();
    assert_eq!(warnings.len(), 1, "{out}");
    assert!(warnings[0].contains("is being recorded by another netpulse"), "{out}");
    // Reading while the first one writes.
    let doc = history_json(&file, &[]);
    assert!(doc["targets"][0]["sent"].as_u64().unwrap() >= 2, "{doc}");
    assert!(first.signal_and_wait("TERM", QUICK).success());
}

#[test]
fn a_full_disk_is_one_warning_and_recording_resumes_when_there_is_room() {
    let dir = scratch("full");
    let _fs = Tmpfs::mount(&dir, "size=4m");
    let file = dir.join("h.db");
    let mut mon = monitor(&file, &["tcp://127.0.18.8:9", "tcp://127.0.18.8:10"]);
    let seen = wait_reports(&mon, 0, 3, None);
    // Fill the file system.
    let filler = dir.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).and_then(|()| f.sync_all()).is_ok() {}
        let small = [0u8; 512];
        while f.write_all(&small).and_then(|()| f.sync_all()).is_ok() {}
    }
    mon.wait_for("history: cannot write", QUICK);
    let seen = wait_reports(&mon, seen, 5, None);
    std::fs::remove_file(&filler).unwrap();
    mon.wait_for("history: recording into", QUICK);
    wait_reports(&mon, seen, 3, None);
    assert!(mon.signal_and_wait("TERM", QUICK).success());
    let out = mon.output();
    assert_eq!(out.matches("history: cannot write").count(), 1, "one warning: {out}");
    let doc = history_json(&file, &[]);
    assert!(doc["targets"][0]["sent"].as_u64().unwrap() >= 6, "recorded before and after: {doc}");
}

#[test]
fn up_records_backends_leaving_and_rejoining_the_rotation() {
    let dir = scratch("up");
    let file = dir.join("h.db");
    let ip = "127.0.18.7";
    let _one = Proc::up(&["serve", "http", "--bind", ip, "--ports", "8001", "-q"]);
    let two = Proc::up(&["serve", "http", "--bind", ip, "--ports", "8002", "-q"]);
    let config = dir.join("up.toml");
    std::fs::write(
        &config,
        format!(
            "[[balance.http]]\nname = \"web\"\nlisten = \"{ip}:8000\"\nbackends = [\"{ip}:8001\", \"{ip}:8002\"]\n\
             access_log = false\n[monitor]\ninterval = \"100ms\"\n"
        ),
    )
    .unwrap();
    let mut up = Proc::up(&["up", "--config", config.to_str().unwrap(), "--history", file.to_str().unwrap()]);
    assert!(
        up.output().contains(&format!("  history        {} (kept: intervals 2d", file.display())),
        "{}",
        up.output()
    );
    let events = |kind: &str| {
        let (code, out) = history(&file, &["--since", "1h", "--events", "--format", "csv"]);
        assert_eq!(code, 0, "{out}");
        out.lines().filter(|l| l.contains(&format!(",{kind},"))).map(String::from).collect::<Vec<_>>()
    };
    drop(two);
    let out = wait_until("a backend_out event", QUICK, || events("backend_out").pop());
    assert!(out.contains(&format!("web/{ip}:8002")), "{out}");
    let _two = Proc::up(&["serve", "http", "--bind", ip, "--ports", "8002", "-q"]);
    let back = wait_until("a backend_in event", QUICK, || events("backend_in").pop());
    assert!(back.contains(&format!("web/{ip}:8002")), "{back}");
    assert!(up.signal_and_wait("TERM", QUICK).success());
    let doc = history_json(&file, &["--min-outage", "0s"]);
    let names: Vec<&str> = doc["targets"].as_array().unwrap().iter().map(|t| t["target"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 2, "both backends are recorded targets: {names:?}");
    let down =
        doc["targets"].as_array().unwrap().iter().find(|t| t["target"].as_str().unwrap().contains(":8002")).unwrap();
    assert_eq!(down["outages"].as_array().unwrap().len(), 1, "{}", down["outages"]);
    // Each backend's counters are recorded too, and the time it was out of rotation.
    let counters = doc["counters"].as_array().unwrap();
    let backend = |port: u16| {
        let name = format!("web/{ip}:{port}");
        counters.iter().find(|c| c["name"] == name.as_str()).unwrap_or_else(|| panic!("no {name}: {counters:?}"))
    };
    assert_eq!(backend(8001)["kind"], "http_backend");
    assert!(backend(8001)["counts"]["requests"].is_u64(), "{}", backend(8001));
    assert!(backend(8002)["down_s"].as_f64().unwrap() > 0.0, "{}", backend(8002));
    assert_eq!(backend(8001)["down_s"].as_f64(), Some(0.0), "{}", backend(8001));
}

#[test]
fn bad_history_queries_get_one_clear_line() {
    let dir = scratch("usage");
    let file = dir.join("h.db");
    let (code, out) = history(&file, &[]);
    assert_eq!((code, out.lines().count()), (1, 1), "{out}");
    assert!(out.contains("no history at") && out.contains("h.db"), "{out}");
    let (code, out) = monitor_reports(&file, "tcp://127.0.18.9:9", "2");
    assert_eq!(code, 0, "{out}");
    for (args, says) in [
        (vec!["--since", "yesterday"], "is not a time"),
        (vec!["--since", "1h", "--until", "2h"], "is not before --until"),
        (vec!["tcp://127.0.18.9:10"], "recorded targets: tcp://127.0.18.9:9"),
        (vec!["--step", "1s", "--since", "2000d"], "points over this range"),
    ] {
        let (code, out) = history(&file, &args);
        assert_eq!(code, 2, "{args:?}: {out}");
        // One line (clap adds its usual pointer to --help).
        let lines: Vec<&str> =
            out.lines().filter(|l| !l.is_empty() && !l.starts_with("For more information")).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {out}");
        assert!(lines[0].contains(says), "{args:?}: {out}");
    }
    // A plot is as wide as asked (COLUMNS when not on a terminal).
    let mut cmd = common::netpulse();
    cmd.env("COLUMNS", "100").args(["history", "--history", file.to_str().unwrap(), "--since", "10m", "--plot"]);
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let axis = text.lines().find(|l| l.contains('└')).unwrap();
    assert!(axis.chars().count() <= 100 && axis.chars().count() > 60, "{axis}");
}

#[test]
fn a_database_of_another_program_is_left_alone() {
    let dir = scratch("foreign");
    let file = dir.join("other.db");
    let made = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('create table notes(x)'); c.commit()",
        ])
        .arg(&file)
        .status()
        .unwrap();
    assert!(made.success());
    let before = std::fs::read(&file).unwrap();
    let (code, out) = monitor_reports(&file, "tcp://127.0.18.11:9", "2");
    assert_eq!(code, 0, "{out}");
    let warnings: Vec<&str> = out.lines().filter(|l| l.contains("history:")).collect();
    assert_eq!(warnings.len(), 1, "{out}");
    assert!(warnings[0].contains("is a database of another program"), "{out}");
    assert_eq!(std::fs::read(&file).unwrap(), before, "not a byte changed");
}

#[test]
fn a_writer_held_up_by_a_lock_never_holds_up_the_monitor() {
    let dir = scratch("locked");
    let file = dir.join("h.db");
    let mut mon = monitor(&file, &["tcp://127.0.18.12:9"]);
    let seen = wait_reports(&mon, 0, 3, None);
    // Another process takes the file's write lock and keeps it.
    let script = "import sqlite3,sys,time; c=sqlite3.connect(sys.argv[1], isolation_level=None); \
                  c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(60)";
    let mut holder =
        Command::new("python3").args(["-c", script]).arg(&file).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(holder.stdout.take().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "locked");
    // The writer waits for the lock (5 s), gives up on that interval with one warning...
    mon.wait_for("history: cannot write", QUICK);
    // ...while the monitor went on reporting every interval.
    wait_reports(&mon, seen, 20, None);
    assert!(holder.try_wait().unwrap().is_none(), "the lock was held all along");
    holder.kill().unwrap();
    holder.wait().unwrap();
    mon.wait_for("history: recording into", QUICK);
    assert!(mon.signal_and_wait("TERM", QUICK).success());
    assert_eq!(mon.output().matches("history: cannot write").count(), 1, "{}", mon.output());
}

#[test]
fn a_history_on_a_read_only_mount_can_still_be_read() {
    let dir = scratch("read-only");
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let _fs = Tmpfs::mount(&mnt, "size=8m");
    let file = mnt.join("h.db");
    let mut m = monitor(&file, &["tcp://127.0.18.40:9"]);
    wait_reports(&m, 0, 5, Some(false));
    m.signal_and_wait("TERM", QUICK);
    // The recorder has stopped; the file now sits where nothing may be written (a backup, a
    // read-only mount, a directory of root's read by another user).
    let ok = Command::new("mount").args(["-o", "remount,ro", mnt.to_str().unwrap()]).status().unwrap();
    assert!(ok.success(), "remount read-only");
    let (code, out) = history(&file, &["--format", "json", "--since", "1h"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("tcp://127.0.18.40:9"), "{out}");
}

// ---- queries: aligned steps, bounded output, times, what is listed (addresses 127.0.26.x) ------

/// `netpulse history --history FILE ARGS` with its stdout alone (stderr apart): exit code,
/// stdout, stderr.
fn history_out(file: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = common::netpulse();
    cmd.args(["history", "--history", file.to_str().unwrap()]).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// `netpulse history --format json ARGS`, parsed.
fn doc(file: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--format", "json"];
    all.extend(args);
    let (code, out, err) = history_out(file, &all, &[]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Now, to the millisecond, as RFC 3339.
fn now_rfc3339() -> String {
    jiff::Timestamp::now().round(jiff::Unit::Millisecond).unwrap().to_string()
}

fn ms_of(rfc3339: &str) -> i64 {
    rfc3339.parse::<jiff::Timestamp>().unwrap().as_millisecond()
}

#[test]
fn steps_start_on_whole_minutes_and_hours_and_the_ends_the_range_cuts_say_so() {
    let dir = scratch("aligned");
    let file = dir.join("h.db");
    let (code, out) = monitor_reports(&file, "tcp://127.0.26.20:9", "3");
    assert_eq!(code, 0, "{out}");
    let (code, csv, _) = history_out(&file, &["--since", "10m", "--step", "1m", "--format", "csv"], &[]);
    assert_eq!(code, 0, "{csv}");
    let rows: Vec<Vec<&str>> = csv.lines().skip(1).map(|l| l.split(',').collect()).collect();
    let partial = |r: &Vec<&str>| *r.last().unwrap() == "true";
    for r in &rows {
        assert!(r[1].ends_with(":00Z"), "a step starts on a whole minute: {r:?}");
    }
    // Ten minutes from a time inside a minute: a cut minute at each end, nine whole ones.
    if rows.len() == 11 {
        assert!(partial(&rows[0]) && partial(&rows[10]), "{csv}");
        assert!(rows[1..10].iter().all(|r| !partial(r)), "{csv}");
    } else {
        assert_eq!(rows.len(), 10, "the range began on a whole minute: {csv}");
    }
    assert_eq!(rows.iter().map(|r| r[2].parse::<u64>().unwrap()).sum::<u64>(), 3, "every probe, once: {csv}");
    let doc = doc(&file, &["--since", "3h", "--step", "1h"]);
    let series = doc["targets"][0]["series"].as_array().unwrap();
    assert!(series.iter().all(|p| p["t_ms"].as_i64().unwrap() % 3_600_000 == 0), "whole hours: {series:?}");
    assert!(series.iter().all(|p| p["time"].as_str().unwrap().ends_with(":00:00Z")), "{series:?}");
}

/// The process's peak resident memory so far, in MiB (`None` once it has exited).
fn peak_mib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches(" kB").parse().ok()?;
    Some(kb / 1024)
}

#[test]
fn a_long_fine_series_is_streamed_in_bounded_memory_and_a_closed_pipe_ends_it_quietly() {
    use std::io::{BufRead, BufReader};
    let dir = scratch("stream");
    let file = dir.join("h.db");
    let target = "tcp://127.0.26.21:9";
    let (code, out) = monitor_reports(&file, target, "3");
    assert_eq!(code, 0, "{out}");
    // Six days at a second: 518,400 rows and more (about 33 MB of CSV), read as they come.
    let spawn = || {
        let mut cmd = common::netpulse();
        cmd.args(["history", "--history", file.to_str().unwrap(), target]);
        cmd.args(["--since", "6d", "--step", "1s", "--format", "csv"]);
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
    };
    let mut child = spawn();
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut rows, mut peak, mut sent) = (0u64, 0, 0);
    for line in lines.by_ref() {
        let line = line.unwrap();
        rows += 1;
        if rows % 100_000 == 0 {
            peak = peak.max(peak_mib(pid).unwrap_or(0));
        }
        if rows > 1 {
            sent += line.split(',').nth(2).unwrap().parse::<u64>().unwrap();
        }
    }
    assert!(child.wait().unwrap().success());
    assert!((518_401..=518_402).contains(&rows), "a header and a row a second: {rows}");
    assert_eq!(sent, 3, "every probe, once");
    assert!(peak > 0 && peak < 64, "peak resident memory {peak} MiB while printing {rows} rows");

    // `| head -3`: the reader goes away after three lines; netpulse stops, says nothing, exit 0.
    let mut child = spawn();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    for _ in 0..3 {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(!line.is_empty());
    }
    drop(out);
    let status = wait_until("netpulse history to stop at the closed pipe", QUICK, || child.try_wait().unwrap());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success() && err.is_empty(), "{status}: {err}");

    // Past a million rows it is refused before anything is read, naming a step that fits.
    let (code, out, err) = history_out(&file, &[target, "--since", "12d", "--step", "1s", "--format", "csv"], &[]);
    assert_eq!((code, out.as_str()), (2, ""), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("points over this range, more than the 1000000 rows") && err.contains("use --step 2s or coarser"),
        "{err}"
    );
    let (code, _, err) = history_out(&file, &["--since", "30d", "--step", "10s", "--format", "json"], &[]);
    assert_eq!(code, 0, "259,201 rows of one target are fine: {err}");
}

#[test]
fn since_and_until_take_weeks_years_and_local_times() {
    let dir = scratch("times");
    let file = dir.join("h.db");
    let (code, out) = monitor_reports(&file, "tcp://127.0.26.22:9", "2");
    assert_eq!(code, 0, "{out}");
    let hour = 3_600_000;
    for (since, hours) in [("2w", 14 * 24), ("1y", 365 * 24), ("1.5w", 252)] {
        let before = ms_of(&now_rfc3339());
        let doc = doc(&file, &["--since", since, "--step", "1d"]);
        let after = ms_of(&now_rfc3339());
        let from = ms_of(doc["since"].as_str().unwrap());
        // (`since` is printed to the second.)
        assert!(
            from >= before - hours * hour - 1000 && from <= after - hours * hour,
            "--since {since}: {}",
            doc["since"]
        );
    }
    // A local time, in the zone TZ names (here two hours east of UTC), in the forms people type.
    let zone = [("TZ", "<+02>-2")];
    for (since, until) in [("2026-11-22 03:00", "2026-11-22 05:30:15"), ("2026-11-22T03:00", "2026-11-22T05:30:15")] {
        let (code, out, err) = history_out(&file, &["--since", since, "--until", until, "--format", "json"], &zone);
        assert_eq!(code, 0, "{err}");
        let doc: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            (doc["since"].as_str(), doc["until"].as_str()),
            (Some("2026-11-22T01:00:00Z"), Some("2026-11-22T03:30:15Z"))
        );
    }
    let (code, out, _) =
        history_out(&file, &["--since", "2026-11-22", "--until", "2026-11-23", "--format", "json"], &zone);
    assert_eq!(code, 0);
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["since"], "2026-11-21T22:00:00Z", "a date alone is its local midnight");
    let (code, _, err) = history_out(&file, &["--since", "2026-11-22 03:00:00+01:00"], &[]);
    assert_eq!(code, 0, "an offset is RFC 3339's: {err}");
    let (code, _, err) = history_out(&file, &["--since", "next week"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("'next week' is not a time") && err.contains("\"2026-11-22 03:00\""), "{err}");
}

#[test]
fn a_target_no_longer_monitored_is_listed_only_for_the_ranges_it_has_data_in() {
    let dir = scratch("removed");
    let file = dir.join("h.db");
    let (old, new) = ("tcp://127.0.26.23:9", "tcp://127.0.26.23:10");
    let (code, out) = monitor_reports(&file, old, "3");
    assert_eq!(code, 0, "{out}");
    let between = now_rfc3339();
    let (code, out) = monitor_reports(&file, new, "3");
    assert_eq!(code, 0, "{out}");
    let names = |doc: &Value| -> Vec<String> {
        doc["targets"].as_array().unwrap().iter().map(|t| t["target"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(names(&doc(&file, &["--since", &between])), [new], "since the config changed");
    assert_eq!(names(&doc(&file, &["--since", "1h"])), [old, new], "the last hour has both");
    let (code, table, _) = history_out(&file, &["--since", &between], &[]);
    assert_eq!(code, 0, "{table}");
    assert!(table.contains(new) && !table.contains(old), "{table}");
    let (code, csv, _) = history_out(&file, &["--since", &between, "--format", "csv"], &[]);
    assert_eq!(code, 0, "{csv}");
    assert!(csv.lines().skip(1).all(|l| l.starts_with(new)), "{csv}");
    // Asked for by name, it is there, with nothing in the range.
    let (_, table, _) = history_out(&file, &[old, "--since", &between], &[]);
    assert!(table.lines().any(|l| l.starts_with(old) && l.ends_with("nothing recorded in this range")), "{table}");
    // A range with nothing at all says so.
    let (_, table, _) = history_out(&file, &["--since", "3h", "--until", "2h"], &[]);
    assert!(table.contains("no target recorded in this range (2 recorded at other times; see --since)"), "{table}");
}

#[test]
fn udp_backends_are_listed_with_datagrams_and_no_reply_not_an_http_status() {
    let dir = scratch("udp-backends");
    let file = dir.join("h.db");
    let ip = "127.0.26.24";
    let config = dir.join("up.toml");
    std::fs::write(
        &config,
        format!(
            "[serve.http]\nbind = \"{ip}\"\nports = \"18001\"\n[serve.udp]\nbind = \"{ip}\"\nports = \"12526\"\n\
             [[balance.http]]\nname = \"web\"\nlisten = \"{ip}:18000\"\nbackends = [\"{ip}:18001\"]\naccess_log = false\n\
             [[balance.udp]]\nname = \"ping\"\nlisten = \"{ip}:18888\"\nbackends = [\"{ip}:12526\"]\naccess_log = false\n\
             [monitor]\ninterval = \"100ms\"\n"
        ),
    )
    .unwrap();
    let mut up = Proc::up(&["up", "--config", config.to_str().unwrap(), "--history", file.to_str().unwrap(), "-q"]);
    let client = common::udp_client(ip);
    for i in 0..5 {
        client.send_to(format!("PING {i} 00:00:00").as_bytes(), format!("{ip}:18888")).unwrap();
        let _ = client.recv(&mut [0u8; 64]);
        assert_eq!(get(common::addr(&format!("{ip}:18000")), "/").status, 200);
    }
    wait_until("the backends' counters in the history", QUICK, || {
        let doc = history_json(&file, &[]);
        let counters = doc["counters"].as_array()?.clone();
        let sent = |kind: &str, field: &str| {
            counters.iter().filter(|c| c["kind"] == kind).map(|c| c["counts"][field].as_u64().unwrap_or(0)).sum::<u64>()
        };
        (sent("udp_backend", "datagrams_sent") >= 5 && sent("http_backend", "requests") >= 5).then_some(())
    });
    assert!(up.signal_and_wait("TERM", QUICK).success());
    let (code, table, _) = history_out(&file, &["--since", "1h"], &[]);
    assert_eq!(code, 0, "{table}");
    let head = |what: &str| table.lines().find(|l| l.starts_with(what)).unwrap_or_else(|| panic!("{what}: {table}"));
    let udp = head("udp backend");
    assert!(udp.contains("datagrams") && udp.contains("no reply") && !udp.contains("5xx"), "{udp}");
    let http = head("http backend");
    assert!(http.contains("requests") && http.contains("5xx"), "{http}");
    let row = table.lines().find(|l| l.starts_with(&format!("ping/{ip}:12526"))).unwrap();
    assert_eq!(row.split_whitespace().nth(1), Some("5"), "five datagrams: {row}");
}

// ---------------------------------------------------------------------------------------------
// The writer's review fixes: outages from their first failed probe, a damaged page, a WAL left
// without its file. Addresses 127.0.25.x.

/// A UDP responder (Python) on `ip:port` that upper-cases what it gets, as the classic ping
/// server does, but leaves probes `after + 1 ..= after + silent` (counted from 1) unanswered,
/// and prints each probe's number and arrival time (seconds since the epoch).
fn silent_responder(ip: &str, port: u16, after: u32, silent: u32) -> (std::process::Child, Arc<Mutex<Vec<f64>>>) {
    let script = "import socket,sys,time\n\
                  s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind((sys.argv[1],int(sys.argv[2])))\n\
                  after,silent=int(sys.argv[3]),int(sys.argv[4]); n=0; print('ready',flush=True)\n\
                  while True:\n  \
                    data,peer=s.recvfrom(4096); n+=1; print(n,'%.3f'%time.time(),flush=True)\n  \
                    if not (after<n<=after+silent): s.sendto(data.upper(),peer)\n";
    let mut child = Command::new("python3")
        .args(["-c", script, ip, &port.to_string(), &after.to_string(), &silent.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let a = arrivals.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Some(t) = line.split(' ').nth(1).and_then(|t| t.parse().ok()) {
                a.lock().unwrap().push(t);
            }
        }
    });
    (child, arrivals)
}

/// Seconds since the epoch of an RFC 3339 time.
fn seconds(rfc3339: &Value) -> f64 {
    let t: jiff::Timestamp = rfc3339.as_str().unwrap().parse().unwrap();
    t.as_millisecond() as f64 / 1000.0
}

#[test]
fn an_outage_of_a_few_probes_is_dated_from_the_first_unanswered_one() {
    let dir = scratch("first-lost");
    let file = dir.join("h.db");
    // Probes 1-3 answered, 4-7 not (four probes: a blackout the monitor's own window sees for
    // two reports only), 8 on answered again.
    let (mut responder, arrivals) = silent_responder("127.0.25.2", 2526, 3, 4);
    let args = ["monitor", "udp://127.0.25.2:2526", "--interval", "1s", "--format", "json", "--history"];
    let mut mon = Proc::spawn(&[&args[..], &[file.to_str().unwrap()]].concat());
    wait_until("ten probes at the responder", Duration::from_secs(30), || {
        (arrivals.lock().unwrap().len() >= 10).then_some(())
    });
    assert!(mon.signal_and_wait("TERM", QUICK).success());
    responder.kill().unwrap();
    responder.wait().unwrap();
    let arrivals = arrivals.lock().unwrap().clone();
    let (first_unanswered, answered_again) = (arrivals[3], arrivals[7]);

    let doc = history_json(&file, &["udp://127.0.25.2:2526", "--min-outage", "0s"]);
    let outages = doc["targets"][0]["outages"].as_array().unwrap();
    assert_eq!(outages.len(), 1, "one outage: {outages:?}");
    let o = &outages[0];
    // Its start is shown to the second: the second of the first unanswered probe, not one,
    // three or five probes later.
    let start = seconds(&o["start"]);
    assert!(
        start <= first_unanswered + 0.05 && start > first_unanswered - 1.05,
        "outage from {start}, first unanswered probe at {first_unanswered}: {o}"
    );
    // Its length, to the millisecond, is from that probe to the first one answered again.
    let length = answered_again - first_unanswered;
    assert!((o["duration_s"].as_f64().unwrap() - length).abs() < 0.25, "{o}; probes say {length:.3} s");
    assert_eq!(
        (o["sent"].as_u64(), o["received"].as_u64(), o["loss_pct"].as_f64()),
        (Some(4), Some(0), Some(100.0)),
        "{o}"
    );
    let t = &doc["targets"][0];
    let expected_uptime = 100.0 * (1.0 - length / t["recorded_s"].as_f64().unwrap());
    assert!((t["uptime_pct"].as_f64().unwrap() - expected_uptime).abs() < 2.0, "the blackout counts as down: {t}");
}

/// Checkpoints `file` (no writer may have it open) and overwrites the head of one page of
/// `table`'s B-tree in the middle of its leaves (not the first or the last); returns the page.
fn corrupt_a_middle_page(file: &Path, table: &str) -> u64 {
    let script = "import sqlite3,sys\n\
                  c=sqlite3.connect(sys.argv[1]); c.execute('PRAGMA wal_checkpoint(TRUNCATE)').fetchall()\n\
                  size=c.execute('PRAGMA page_size').fetchone()[0]\n\
                  leaves=[r[0] for r in c.execute(\"SELECT pageno FROM dbstat WHERE name=? AND pagetype='leaf'\",(sys.argv[2],))]\n\
                  c.close(); assert len(leaves)>=3, leaves; page=leaves[len(leaves)//2]\n\
                  f=open(sys.argv[1],'r+b'); f.seek((page-1)*size); f.write(b'\\xff'*64); f.close(); print(page)\n";
    let out = Command::new("python3").args(["-c", script]).arg(file).arg(table).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn a_damaged_page_is_one_warning_monitoring_goes_on_and_history_reads_the_rest() {
    let dir = scratch("damaged");
    let file = dir.join("h.db");
    let _server = Proc::up(&["serve", "udp", "--bind", "127.0.25.3", "--ports", "2526-2625", "-q"]);
    let targets: Vec<String> = (2526..2626).map(|p| format!("udp://127.0.25.3:{p}")).collect();
    let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
    // A first run, killed while the intervals of its current minute are in the journal (which
    // then spans several pages: 100 targets a row).
    let mut first = monitor(&file, &targets);
    wait_until(format_args!("35 reports in one minute; output:\n{}", first.printed()), Duration::from_secs(80), || {
        let times: Vec<String> =
            reports(&first).iter().map(|r| r["time"].as_str().unwrap()[..16].to_string()).collect();
        (times.iter().filter(|t| Some(*t) == times.last()).count() >= 35).then_some(())
    });
    first.kill();
    let printed = reports(&first);
    let total =
        |r: &Value| r["targets"].as_array().unwrap().iter().map(|t| t["sent_total"].as_u64().unwrap()).sum::<u64>();
    let (before_last, last) = (total(&printed[printed.len() - 2]), total(&printed[printed.len() - 1]));
    corrupt_a_middle_page(&file, "journal");

    // The next run finds it when it packs those intervals: one warning, and it monitors on.
    let (code, out) = monitor_reports(&file, "udp://127.0.25.3:2526", "10");
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with('{')).count(), 10, "every report printed: {out}");
    let warnings: Vec<&str> = out.lines().filter(|l| l.contains("history:")).collect();
    assert_eq!(warnings.len(), 1, "{out}");
    assert!(
        warnings[0].contains("is damaged (database disk image is malformed") && warnings[0].contains("move it away"),
        "{out}"
    );

    // netpulse history reads what it can, says once what it could not, and succeeds.
    let out = common::netpulse()
        .args(["history", "--history", file.to_str().unwrap(), "--format", "json", "--since", "1h"])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let notes: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(notes.len(), 1, "one note: {stderr}");
    assert!(
        notes[0].contains("is damaged")
            && notes[0].contains("left out what cannot be read, the intervals of every series from"),
        "{stderr}"
    );
    let doc: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let read: u64 = doc["targets"].as_array().unwrap().iter().map(|t| t["sent"].as_u64().unwrap()).sum();
    assert!(read + 100 <= last, "a row of the 100 targets at least is skipped: {read} of {last} probes read");
    assert!(read * 2 >= before_last, "the rest is read: {read} of {before_last} probes");
}

#[test]
fn a_wal_left_without_its_file_is_set_aside_and_said_so() {
    let dir = scratch("orphan-wal");
    let file = dir.join("h.db");
    let mut m = monitor(&file, &["tcp://127.0.25.4:9"]);
    wait_reports(&m, 0, 5, None);
    m.kill(); // its newest intervals are in h.db-wal
    let wal = dir.join("h.db-wal");
    let orphan = std::fs::read(&wal).unwrap();
    assert!(!orphan.is_empty());
    std::fs::remove_file(&file).unwrap();
    let (code, out) = monitor_reports(&file, "tcp://127.0.25.4:9", "3");
    assert_eq!(code, 0, "{out}");
    let warnings: Vec<&str> = out.lines().filter(|l| l.contains("history:")).collect();
    assert_eq!(warnings.len(), 1, "{out}");
    assert!(warnings[0].contains("h.db-wal was there without") && warnings[0].contains("h.db-wal.orphan"), "{out}");
    assert_eq!(std::fs::read(dir.join("h.db-wal.orphan")).unwrap(), orphan, "kept as it was");
    let doc = history_json(&file, &[]);
    assert_eq!(doc["targets"][0]["sent"].as_u64(), Some(3), "a new history: {doc}");
}

/// A history file deleted while netpulse records into it: one warning, monitoring goes on, and
/// nothing is written into the deleted file (a new file at the path is not taken over unawares).
#[test]
fn a_file_deleted_while_recording_is_one_warning_and_monitoring_goes_on() {
    let file = scratch("deleted").join("h.db");
    let mut mon = monitor(&file, &["tcp://127.0.18.90:9"]);
    wait_until(format_args!("recording: {}", mon.printed()), Duration::from_secs(10), || {
        (reports(&mon).len() >= 3).then_some(())
    });
    for f in ["h.db", "h.db-wal", "h.db-shm"] {
        let _ = std::fs::remove_file(file.with_file_name(f));
    }
    let before = reports(&mon).len();
    wait_until(format_args!("the warning and more reports: {}", mon.printed()), Duration::from_secs(10), || {
        (mon.output().contains("was deleted or replaced") && reports(&mon).len() >= before + 5).then_some(())
    });
    assert!(mon.signal_and_wait("TERM", QUICK).success());
    assert_eq!(mon.output().matches("was deleted or replaced").count(), 1, "{}", mon.output());
}
