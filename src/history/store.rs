//! The SQLite file: opening it (for the one writer, or for readers), its schema, and the
//! statements that write, pack, roll up and prune it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::fcntl::{Flock, FlockArg};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::record::{Agg, ChunkWriter, CounterAgg, Record, decode_chunk, find_in_interval, for_each_in_interval};
use super::{HOUR_MS, HistoryError, MINUTE_MS, Retention, floor_to, rfc3339, shown};
use crate::stats::loghist::LogHistogram;

/// `PRAGMA application_id` of a netpulse history file ("NPHS").
const APPLICATION_ID: i64 = 0x4e50_4853;
/// `PRAGMA user_version`: the schema this build writes.
pub(crate) const SCHEMA: i64 = 1;
/// Hours rolled up at most per call: a backlog (after a long stop) is worked off an hour per
/// interval, so that no interval's write waits on days of them.
const ROLL_HOURS: i64 = 1;
/// Attempts at reading past damaged pages in one read, before the rest of its range is given up.
const MAX_SKIPS: u32 = 100_000;
/// Rows deleted at most per series and level in one pruning step.
const PRUNE_ROWS: i64 = 500;

const TABLES: &str = "
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS series(
  id INTEGER PRIMARY KEY,
  kind TEXT NOT NULL,            -- target, interface, http_backend, udp_backend
  name TEXT NOT NULL,            -- the target as written, the interface, balancer/address
  detail TEXT NOT NULL DEFAULT '',  -- the probe kind, the balancer
  fields TEXT NOT NULL DEFAULT '',  -- counters: the names of the deltas, comma-separated
  UNIQUE(kind, name));
-- Intervals not yet packed: t is the report's time (ms since the epoch), body every series' record.
CREATE TABLE IF NOT EXISTS journal(t INTEGER PRIMARY KEY, body BLOB NOT NULL);
-- Each series' intervals of one minute as they were (t: the first interval's time).
CREATE TABLE IF NOT EXISTS raw(
  series INTEGER NOT NULL, t INTEGER NOT NULL, body BLOB NOT NULL,
  PRIMARY KEY(series, t)) WITHOUT ROWID;
-- Targets per minute (res 60) and per hour (res 3600); t is the start of the minute or hour.
CREATE TABLE IF NOT EXISTS target_rollup(
  res INTEGER NOT NULL, series INTEGER NOT NULL, t INTEGER NOT NULL,
  span_ms INTEGER NOT NULL, down_ms INTEGER NOT NULL,
  sent INTEGER NOT NULL, received INTEGER NOT NULL, lost INTEGER NOT NULL,
  rtt_min_us INTEGER, rtt_max_us INTEGER NOT NULL, rtt_sum_us INTEGER NOT NULL, rtt_sumsq REAL NOT NULL,
  jitter_sum_us INTEGER NOT NULL, jitter_n INTEGER NOT NULL,
  hist BLOB NOT NULL,             -- log buckets: (bucket byte, count varint)...
  PRIMARY KEY(res, series, t)) WITHOUT ROWID;
-- Interfaces and backends per minute and hour: counters summed (JSON object of deltas).
CREATE TABLE IF NOT EXISTS counter_rollup(
  res INTEGER NOT NULL, series INTEGER NOT NULL, t INTEGER NOT NULL,
  span_ms INTEGER NOT NULL, down_ms INTEGER NOT NULL, counts TEXT NOT NULL,
  PRIMARY KEY(res, series, t)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events(t INTEGER NOT NULL, kind TEXT NOT NULL, subject TEXT NOT NULL, detail TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_t ON events(t);
";

/// The writer's handle on the file: holds the lock that keeps a second writer out.
pub struct Store {
    pub(crate) conn: Connection,
    pub(crate) path: PathBuf,
    pub(crate) retention: Retention,
    /// Series ids by kind and name.
    ids: HashMap<String, HashMap<String, i64>>,
    prune_cursor: i64,
    _lock: Flock<File>,
    /// The file's device and inode when it was opened, to notice it deleted or replaced.
    identity: Option<(u64, u64)>,
}

fn kind_of(e: &rusqlite::Error) -> Option<rusqlite::ErrorCode> {
    e.sqlite_error_code()
}

/// Applies the settings every connection uses and checks that the file is ours.
fn prepare(conn: &Connection, path: &Path) -> Result<i64, HistoryError> {
    let not_ours = |source| HistoryError::NotHistory { path: shown(path), source };
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|source| HistoryError::Open { path: shown(path), source })?;
    let app: i64 = conn.query_row("PRAGMA application_id", [], |r| r.get(0)).map_err(|e| match kind_of(&e) {
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => not_ours(e),
        _ => HistoryError::Open { path: shown(path), source: e },
    })?;
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table'", [], |r| r.get(0))
        .map_err(not_ours)?;
    if app != APPLICATION_ID && (app != 0 || tables > 0) {
        return Err(HistoryError::Foreign { path: shown(path) });
    }
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(not_ours)?;
    if version > SCHEMA {
        return Err(HistoryError::Newer { path: shown(path), found: version, known: SCHEMA });
    }
    Ok(version)
}

impl Store {
    /// Opens (creating it and its directory if needed) the file for writing. Fails with a
    /// reason a person can act on: the directory cannot be made, the file is not ours or is
    /// corrupt, another netpulse is writing it.
    pub fn open(path: &Path, retention: Retention) -> Result<Self, HistoryError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| HistoryError::Dir { dir: shown(dir), source })?;
        }
        let io = |source: std::io::Error| HistoryError::Io { path: shown(path), source };
        let fresh = std::fs::metadata(path).map_or(true, |m| m.len() == 0);
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(io)?;
        // SQLite's own locks are fcntl locks; flock is a separate lock on Linux, held for the
        // life of the process and released by the kernel when it dies (also by kill -9).
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
            if errno == nix::errno::Errno::EWOULDBLOCK {
                HistoryError::Busy { path: shown(path) }
            } else {
                io(errno.into())
            }
        })?;
        if fresh {
            set_aside_orphan_wal(path);
        }
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE)
            .map_err(|source| HistoryError::Open { path: shown(path), source })?;
        let version = prepare(&conn, path)?;
        let setup = |conn: &Connection| -> rusqlite::Result<()> {
            let _: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
            conn.execute_batch(
                "PRAGMA synchronous = NORMAL; PRAGMA cache_size = -16384; PRAGMA journal_size_limit = 67108864;",
            )?;
            if version < SCHEMA {
                let tx = conn.unchecked_transaction()?;
                tx.execute_batch(TABLES)?;
                tx.execute_batch(&format!(
                    "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA};"
                ))?;
                tx.execute(
                    "INSERT OR IGNORE INTO meta(key, value) VALUES('rolled_until', ?1)",
                    params![floor_to(super::now_ms(), HOUR_MS)],
                )?;
                tx.commit()?;
            }
            Ok(())
        };
        setup(&conn).map_err(|source| match kind_of(&source) {
            Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => {
                HistoryError::NotHistory { path: shown(path), source }
            }
            _ => HistoryError::Open { path: shown(path), source },
        })?;
        let identity = lock.metadata().ok().map(|m| {
            use std::os::unix::fs::MetadataExt as _;
            (m.dev(), m.ino())
        });
        Ok(Self {
            conn,
            path: path.to_path_buf(),
            retention,
            ids: HashMap::new(),
            prune_cursor: 0,
            _lock: lock,
            identity,
        })
    }

    /// Whether the path still names the file opened (not deleted, not replaced by another).
    pub fn still_there(&self) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        match (std::fs::metadata(&self.path), self.identity) {
            (Ok(m), Some(id)) => (m.dev(), m.ino()) == id,
            (Err(_), _) => false,
            (Ok(_), None) => true,
        }
    }

    /// The id of a series, made on first sight.
    pub(crate) fn series_id(&mut self, kind: &str, name: &str, detail: &str, fields: &str) -> rusqlite::Result<i64> {
        if let Some(&id) = self.ids.get(kind).and_then(|m| m.get(name)) {
            return Ok(id);
        }
        self.conn
            .prepare_cached("INSERT OR IGNORE INTO series(kind, name, detail, fields) VALUES(?1, ?2, ?3, ?4)")?
            .execute(params![kind, name, detail, fields])?;
        let id: i64 = self
            .conn
            .prepare_cached("SELECT id FROM series WHERE kind = ?1 AND name = ?2")?
            .query_row(params![kind, name], |r| r.get(0))?;
        self.ids.entry(kind.to_string()).or_default().insert(name.to_string(), id);
        Ok(id)
    }

    /// The id of a series already seen by this writer.
    pub(crate) fn known(&self, kind: &str, name: &str) -> Option<i64> {
        self.ids.get(kind).and_then(|m| m.get(name)).copied()
    }

    /// Forgets the cached ids (after a failed transaction, which may have rolled back new ones).
    pub(crate) fn forget_ids(&mut self) {
        self.ids.clear();
    }

    pub(crate) fn append(&self, t: i64, body: &[u8]) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO journal(t, body) VALUES(?1, ?2)")?
            .execute(params![t, body])?;
        Ok(())
    }

    pub(crate) fn event(&self, t: i64, kind: &str, subject: &str, detail: &str) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached("INSERT INTO events(t, kind, subject, detail) VALUES(?1, ?2, ?3, ?4)")?
            .execute(params![t, kind, subject, detail])?;
        Ok(())
    }

    /// Packs the journal's rows of the oldest minute before `before` into one raw chunk and one
    /// minute row per series; returns whether rows older than `before` remain (a backlog, which
    /// the next calls work off a minute at a time).
    ///
    /// The rows are read one at a time and each series keeps only its chunk's bytes and its
    /// minute's aggregate (about 6 bytes per interval and a few hundred per series), never the
    /// minute's decoded records: the writer's peak memory at 2,000 targets every 100 ms is
    /// 29 MB, 16 MB of it SQLite's page cache, where decoding the minutes whole took 216 MB
    /// (`history_bench memory`).
    pub(crate) fn pack(&self, before: i64) -> rusqlite::Result<bool> {
        let first: Option<i64> = self.conn.prepare_cached("SELECT min(t) FROM journal")?.query_row([], |r| r.get(0))?;
        let Some(first) = first.filter(|&f| f < before) else { return Ok(false) };
        let minute = floor_to(first, MINUTE_MS);
        let upto = before.min(minute + MINUTE_MS);
        let mut open: BTreeMap<i64, Packing> = BTreeMap::new();
        {
            let mut q = self.conn.prepare_cached("SELECT t, body FROM journal WHERE t < ?1 ORDER BY t")?;
            let mut rows = q.query(params![upto])?;
            while let Some(row) = rows.next()? {
                let t: i64 = row.get(0)?;
                let body = row.get_ref(1)?.as_blob().unwrap_or_default();
                for_each_in_interval(body, |id, r| open.entry(id).or_insert_with(|| Packing::new(t)).add(t, &r));
            }
        }
        // Hour rows already made for this minute's hour (a backlog worked off after its hour was
        // rolled up, or intervals stamped before a clock that went back) take it in too.
        let late = rolled_until(&self.conn)?.is_some_and(|rolled| minute < rolled);
        for (id, p) in open {
            self.conn
                .prepare_cached("INSERT OR REPLACE INTO raw(series, t, body) VALUES(?1, ?2, ?3)")?
                .execute(params![id, p.chunk.t0(), p.chunk.bytes()])?;
            if p.is_target {
                self.upsert_target(60, id, minute, &p.agg)?;
                if late {
                    self.upsert_target(3600, id, floor_to(minute, HOUR_MS), &p.agg)?;
                }
            } else {
                self.upsert_counters(60, id, minute, &p.counters)?;
                if late {
                    self.upsert_counters(3600, id, floor_to(minute, HOUR_MS), &p.counters)?;
                }
            }
        }
        self.conn.prepare_cached("DELETE FROM journal WHERE t < ?1")?.execute(params![upto])?;
        Ok(upto < before)
    }

    /// Adds `agg` to the row of (res, series, t), making it if needed.
    fn upsert_target(&self, res: i64, series: i64, t: i64, agg: &Agg) -> rusqlite::Result<()> {
        let inserted = self
            .conn
            .prepare_cached(
                "INSERT INTO target_rollup VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
                 ON CONFLICT DO NOTHING",
            )?
            .execute(rusqlite::params_from_iter(target_params(res, series, t, agg)))?;
        if inserted == 0 {
            let mut merged =
                read_target_rollups(&self.conn, res, series, t, t + 1)?.pop().map(|r| r.1).unwrap_or_default();
            merged.merge(agg);
            self.conn
                .prepare_cached("INSERT OR REPLACE INTO target_rollup VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)")?
                .execute(rusqlite::params_from_iter(target_params(res, series, t, &merged)))?;
        }
        Ok(())
    }

    fn upsert_counters(&self, res: i64, series: i64, t: i64, c: &CounterAgg) -> rusqlite::Result<()> {
        let fields: String = self
            .conn
            .prepare_cached("SELECT fields FROM series WHERE id = ?1")?
            .query_row(params![series], |r| r.get(0))?;
        let mut merged =
            read_counter_rollups(&self.conn, res, series, t, t + 1)?.pop().map(|r| r.1).unwrap_or_default();
        merged.merge(c);
        let names: Vec<&str> = fields.split(',').filter(|f| !f.is_empty()).collect();
        self.conn.prepare_cached("INSERT OR REPLACE INTO counter_rollup VALUES(?1, ?2, ?3, ?4, ?5, ?6)")?.execute(
            params![res, series, t, to_i64(merged.span_ms), to_i64(merged.down_ms), counts_json(&names, &merged.sums)],
        )?;
        Ok(())
    }

    /// Rolls the minutes of every hour that closed before `now` (and was not rolled yet) into
    /// hour rows, at most [`ROLL_HOURS`] hours per call; returns whether closed hours remain.
    pub(crate) fn roll_hours(&self, now: i64) -> rusqlite::Result<bool> {
        let rolled = rolled_until(&self.conn)?.unwrap_or(floor_to(now, HOUR_MS));
        let until = floor_to(now, HOUR_MS).min(rolled + ROLL_HOURS * HOUR_MS);
        if until <= rolled {
            return Ok(false);
        }
        let series: Vec<(i64, String)> = {
            let mut q = self.conn.prepare_cached("SELECT id, kind FROM series")?;
            q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?
        };
        for (id, kind) in series {
            if kind == "target" {
                let mut hours: Vec<(i64, Agg)> = Vec::new();
                for (t, a) in read_target_rollups(&self.conn, 60, id, rolled, until)? {
                    let h = floor_to(t, HOUR_MS);
                    match hours.last_mut() {
                        Some((ht, agg)) if *ht == h => agg.merge(&a),
                        _ => hours.push((h, a)),
                    }
                }
                for (h, a) in hours {
                    self.upsert_target(3600, id, h, &a)?;
                }
            } else {
                let mut hours: Vec<(i64, CounterAgg)> = Vec::new();
                for (t, a) in read_counter_rollups(&self.conn, 60, id, rolled, until)? {
                    let h = floor_to(t, HOUR_MS);
                    match hours.last_mut() {
                        Some((ht, agg)) if *ht == h => agg.merge(&a),
                        _ => hours.push((h, a)),
                    }
                }
                for (h, a) in hours {
                    self.upsert_counters(3600, id, h, &a)?;
                }
            }
        }
        self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES('rolled_until', ?1)", params![until])?;
        Ok(until < floor_to(now, HOUR_MS))
    }

    /// Deletes expired rows of the next few series (each series' turn comes about once a
    /// minute of intervals at 1 s), at most [`PRUNE_ROWS`] rows' worth of time per series and
    /// level, and a batch of old events: small steps, so no write waits on a big delete.
    pub(crate) fn prune(&mut self, now: i64) -> rusqlite::Result<()> {
        let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let (raw, minutes, hours) =
            (now - ms(self.retention.raw), now - ms(self.retention.minutes), now - ms(self.retention.hours));
        let last: Option<i64> = self.conn.prepare_cached("SELECT max(id) FROM series")?.query_row([], |r| r.get(0))?;
        let batch = last.unwrap_or(0) / 60 + 1;
        let ids: Vec<(i64, String)> = {
            let mut q = self.conn.prepare_cached("SELECT id, kind FROM series WHERE id > ?1 ORDER BY id LIMIT ?2")?;
            q.query_map(params![self.prune_cursor, batch], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?
        };
        self.prune_cursor = if (ids.len() as i64) < batch { 0 } else { ids.last().map_or(0, |i| i.0) };
        // Each delete takes the rows older than the cutoff, but no more than PRUNE_ROWS rows'
        // worth of time after the oldest one (one seek to find it).
        for (id, kind) in ids {
            self.conn
                .prepare_cached(
                    "DELETE FROM raw WHERE series = ?1
                     AND t < min(?2, (SELECT min(t) FROM raw WHERE series = ?1) + ?3)",
                )?
                .execute(params![id, raw, PRUNE_ROWS * MINUTE_MS])?;
            let table = if kind == "target" { "target_rollup" } else { "counter_rollup" };
            for (res, cutoff) in [(60, minutes), (3600, hours)] {
                let deleted = self
                    .conn
                    .prepare_cached(&format!(
                        "DELETE FROM {table} WHERE res = ?1 AND series = ?2
                         AND t < min(?3, (SELECT min(t) FROM {table} WHERE res = ?1 AND series = ?2) + ?4)"
                    ))?
                    .execute(params![res, id, cutoff, PRUNE_ROWS * res * 1000])?;
                // Minute rows are whole from here on: readers take older parts from the hours.
                if res == 60 && deleted > 0 {
                    self.conn
                        .prepare_cached(
                            "INSERT INTO meta(key, value) VALUES('minutes_pruned_until', ?1)
                             ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
                        )?
                        .execute(params![cutoff])?;
                }
            }
        }
        self.conn
            .prepare_cached("DELETE FROM events WHERE rowid IN (SELECT rowid FROM events WHERE t < ?1 LIMIT ?2)")?
            .execute(params![hours, PRUNE_ROWS])?;
        Ok(())
    }
}

/// One series' part of a minute being packed: its chunk so far and its minute's aggregate.
struct Packing {
    chunk: ChunkWriter,
    is_target: bool,
    agg: Agg,
    last_rtt: Option<u64>,
    counters: CounterAgg,
}

impl Packing {
    fn new(t0: i64) -> Self {
        Self {
            chunk: ChunkWriter::new(t0),
            is_target: false,
            agg: Agg::default(),
            last_rtt: None,
            counters: CounterAgg::default(),
        }
    }

    fn add(&mut self, t: i64, r: &Record) {
        self.chunk.push(t, r);
        match r {
            Record::Target(ti) => {
                self.is_target = true;
                self.agg.add_interval(ti, &mut self.last_rtt);
            }
            Record::Counters(c) => self.counters.add_interval(c),
        }
    }
}

/// `PATH-wal` of a database file `PATH`.
fn wal_of(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// A WAL left without its database (the file was moved or deleted while its newest intervals
/// were still in the WAL) would be discarded by SQLite without a word, or worse, laid over the
/// new file: it is set aside as `PATH-wal.orphan` and said so.
fn set_aside_orphan_wal(path: &Path) {
    let wal = wal_of(path);
    if !std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
        return;
    }
    let mut aside = wal.as_os_str().to_owned();
    aside.push(".orphan");
    let aside = PathBuf::from(aside);
    match std::fs::rename(&wal, &aside) {
        Ok(()) => tracing::warn!(
            "history: {} was there without {} (the file was moved or deleted while its newest intervals were in its \
             WAL); it cannot be read without it, so it is set aside as {} and a new history starts",
            wal.display(),
            path.display(),
            aside.display()
        ),
        Err(e) => tracing::warn!(
            "history: {} was there without {} and cannot be set aside ({e}); SQLite discards it",
            wal.display(),
            path.display()
        ),
    }
}

/// Whether SQLite found the file damaged (a corrupt page, or not a database at all).
pub(crate) fn is_damaged(e: &rusqlite::Error) -> bool {
    matches!(kind_of(e), Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase))
}

/// Reads the rows of one key range `[from, to)` in key order: `scan(start, out)` runs one query
/// from `start` and pushes each row (key first) as it reads it. A damaged page stops a scan; the
/// rows after it are read by starting again past it, `step` by `step` (a damaged page holds a
/// run of keys: a seek into it fails, one past it lands on a sound page), and what could not
/// be read is noted once ([`note_unreadable`]). Other errors end the read.
fn read_past_damage<T>(
    conn: &Connection,
    what: (&'static str, Option<i64>),
    (from, to): (i64, i64),
    step: i64,
    mut scan: impl FnMut(i64, &mut Vec<(i64, T)>) -> rusqlite::Result<()>,
) -> rusqlite::Result<Vec<(i64, T)>> {
    let mut out = Vec::new();
    let mut start = from;
    // Where the rows that cannot be read begin, and why.
    let mut gap: Option<(i64, rusqlite::Error)> = None;
    for _ in 0..MAX_SKIPS {
        let before = out.len();
        let result = scan(start, &mut out);
        if let (Some((g, e)), Some((first, _))) = (&gap, out.get(before)) {
            note_unreadable(conn, what, (*g, *first), e);
            gap = None;
        }
        match result {
            Ok(()) => return Ok(out),
            Err(e) if is_damaged(&e) => {
                if let Some((last, _)) = out.last().filter(|_| out.len() > before) {
                    start = last.saturating_add(1);
                    gap = Some((start, e));
                } else {
                    gap.get_or_insert((start, e));
                    start = start.saturating_add(step.max(1));
                }
                if start >= to {
                    break;
                }
            }
            Err(e) => return Err(e),
        }
    }
    if let Some((g, e)) = gap {
        note_unreadable(conn, what, (g, to), &e);
    }
    Ok(out)
}

/// Says once per file, table and series what could not be read (a warning line; `netpulse
/// history` goes on with the rest and exits 0).
fn note_unreadable(
    conn: &Connection,
    (table, series): (&'static str, Option<i64>),
    (from, to): (i64, i64),
    e: &rusqlite::Error,
) {
    /// What has been noted: file, table, series.
    type Noted = HashSet<(String, &'static str, Option<i64>)>;
    static NOTED: Mutex<Option<Noted>> = Mutex::new(None);
    let file = conn.path().unwrap_or_default().to_string();
    let first = NOTED
        .lock()
        .map(|mut noted| noted.get_or_insert_with(HashSet::new).insert((file.clone(), table, series)))
        .unwrap_or(true);
    if !first {
        return;
    }
    let name = || {
        series.and_then(|id| {
            conn.query_row("SELECT name FROM series WHERE id = ?1", params![id], |r| r.get::<_, String>(0)).ok()
        })
    };
    let what = match (table, name()) {
        ("journal", _) => "the intervals of every series".to_string(),
        ("raw", Some(name)) => format!("the intervals of {name}"),
        (_, Some(name)) => format!("the minute and hour rows of {name}"),
        (table, None) => format!("rows of {table}"),
    };
    tracing::warn!(
        "history: {file} is damaged ({e}): left out what cannot be read, {what} from {} to {}; the rest is read",
        rfc3339(from),
        rfc3339(to)
    );
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn target_params(res: i64, series: i64, t: i64, a: &Agg) -> Vec<Box<dyn rusqlite::ToSql>> {
    vec![
        Box::new(res),
        Box::new(series),
        Box::new(t),
        Box::new(to_i64(a.span_ms)),
        Box::new(to_i64(a.down_ms)),
        Box::new(to_i64(a.sent)),
        Box::new(to_i64(a.received)),
        Box::new(to_i64(a.lost)),
        Box::new(a.rtt_min_us.map(to_i64)),
        Box::new(to_i64(a.rtt_max_us)),
        Box::new(to_i64(a.rtt_sum_us)),
        Box::new(a.rtt_sumsq),
        Box::new(to_i64(a.jitter_sum_us)),
        Box::new(to_i64(a.jitter_n)),
        Box::new(a.hist.to_bytes()),
    ]
}

fn counts_json(names: &[&str], sums: &[u64]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = sums
        .iter()
        .enumerate()
        .map(|(i, v)| (names.get(i).map_or_else(|| format!("c{i}"), |n| (*n).to_string()), (*v).into()))
        .collect();
    serde_json::Value::Object(map).to_string()
}

/// Where the hour rows are complete up to.
/// Minute rows older than this may have been pruned (`None`: none ever were).
pub(crate) fn minutes_pruned_until(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    conn.query_row("SELECT value FROM meta WHERE key = 'minutes_pruned_until'", [], |r| r.get(0)).optional()
}

pub(crate) fn rolled_until(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    conn.query_row("SELECT value FROM meta WHERE key = 'rolled_until'", [], |r| r.get(0)).optional()
}

/// Target rollup rows of `series` at `res` seconds with start times in [from, to) (those on
/// damaged pages skipped, see [`read_past_damage`]).
pub(crate) fn read_target_rollups(
    conn: &Connection,
    res: i64,
    series: i64,
    from: i64,
    to: i64,
) -> rusqlite::Result<Vec<(i64, Agg)>> {
    let u = |v: i64| u64::try_from(v).unwrap_or(0);
    read_past_damage(conn, ("target_rollup", Some(series)), (from, to), res * 1000, |start, out| {
        let mut q = conn.prepare_cached(
            "SELECT t, span_ms, down_ms, sent, received, lost, rtt_min_us, rtt_max_us, rtt_sum_us, rtt_sumsq,
                    jitter_sum_us, jitter_n, hist
             FROM target_rollup WHERE res = ?1 AND series = ?2 AND t >= ?3 AND t < ?4 ORDER BY t",
        )?;
        let mut rows = q.query(params![res, series, start, to])?;
        while let Some(r) = rows.next()? {
            out.push((
                r.get::<_, i64>(0)?,
                Agg {
                    span_ms: u(r.get(1)?),
                    down_ms: u(r.get(2)?),
                    sent: u(r.get(3)?),
                    received: u(r.get(4)?),
                    lost: u(r.get(5)?),
                    rtt_min_us: r.get::<_, Option<i64>>(6)?.map(u),
                    rtt_max_us: u(r.get(7)?),
                    rtt_sum_us: u(r.get(8)?),
                    rtt_sumsq: r.get(9)?,
                    jitter_sum_us: u(r.get(10)?),
                    jitter_n: u(r.get(11)?),
                    hist: LogHistogram::decode(r.get_ref(12)?.as_blob().unwrap_or_default()).unwrap_or_default(),
                },
            ));
        }
        Ok(())
    })
}

pub(crate) fn read_counter_rollups(
    conn: &Connection,
    res: i64,
    series: i64,
    from: i64,
    to: i64,
) -> rusqlite::Result<Vec<(i64, CounterAgg)>> {
    let fields: String = conn
        .prepare_cached("SELECT fields FROM series WHERE id = ?1")?
        .query_row(params![series], |r| r.get(0))
        .optional()?
        .unwrap_or_default();
    let names: Vec<&str> = fields.split(',').filter(|f| !f.is_empty()).collect();
    read_past_damage(conn, ("counter_rollup", Some(series)), (from, to), res * 1000, |start, out| {
        let mut q = conn.prepare_cached(
            "SELECT t, span_ms, down_ms, counts FROM counter_rollup
             WHERE res = ?1 AND series = ?2 AND t >= ?3 AND t < ?4 ORDER BY t",
        )?;
        let mut rows = q.query(params![res, series, start, to])?;
        while let Some(r) = rows.next()? {
            let counts: String = r.get(3)?;
            let obj: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&counts).unwrap_or_default();
            let sums = names.iter().map(|n| obj.get(*n).and_then(serde_json::Value::as_u64).unwrap_or(0)).collect();
            out.push((
                r.get::<_, i64>(0)?,
                CounterAgg {
                    span_ms: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                    down_ms: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                    sums,
                },
            ));
        }
        Ok(())
    })
}

/// The intervals of `series` in raw chunks with end times in [from, to).
pub(crate) fn read_raw(conn: &Connection, series: i64, from: i64, to: i64) -> rusqlite::Result<Vec<(i64, Record)>> {
    // A chunk holds one minute, starting with its first interval.
    let chunks = read_past_damage(conn, ("raw", Some(series)), (from - MINUTE_MS, to), MINUTE_MS, |start, out| {
        let mut q =
            conn.prepare_cached("SELECT t, body FROM raw WHERE series = ?1 AND t >= ?2 AND t < ?3 ORDER BY t")?;
        let mut rows = q.query(params![series, start, to])?;
        while let Some(row) = rows.next()? {
            let t0: i64 = row.get(0)?;
            out.push((t0, decode_chunk(t0, row.get_ref(1)?.as_blob().unwrap_or_default())));
        }
        Ok(())
    })?;
    Ok(chunks.into_iter().flat_map(|c| c.1).filter(|(t, _)| (from..to).contains(t)).collect())
}

/// The records of `series` in journal rows with times in [from, to).
pub(crate) fn read_journal(conn: &Connection, series: i64, from: i64, to: i64) -> rusqlite::Result<Vec<(i64, Record)>> {
    // A damaged page of the journal is every series' loss: noted once for all of them.
    let rows = read_past_damage(conn, ("journal", None), (from, to), 100, |start, out| {
        let mut q = conn.prepare_cached("SELECT t, body FROM journal WHERE t >= ?1 AND t < ?2 ORDER BY t")?;
        let mut rows = q.query(params![start, to])?;
        while let Some(row) = rows.next()? {
            let t: i64 = row.get(0)?;
            out.push((t, find_in_interval(row.get_ref(1)?.as_blob().unwrap_or_default(), series)));
        }
        Ok(())
    })?;
    Ok(rows.into_iter().filter_map(|(t, r)| Some((t, r?))).collect())
}

/// Opens an existing file for reading (never creates one, never writes rows).
pub(crate) fn open_reader(path: &Path) -> Result<Connection, HistoryError> {
    if !path.exists() {
        return Err(HistoryError::Missing { path: shown(path) });
    }
    // Read-write lets SQLite use the WAL's shared memory while a writer runs; a file we may
    // not write is read read-only; one where not even the WAL's shared-memory file can be made
    // (a read-only mount, a directory of another user's, with no writer running) is read as
    // it stands on disk.
    let open = |name: &str, flags: OpenFlags| -> Result<Connection, HistoryError> {
        let conn = Connection::open_with_flags(name, flags)
            .map_err(|source| HistoryError::Open { path: shown(path), source })?;
        prepare(&conn, path)?;
        Ok(conn)
    };
    let name = path.to_string_lossy();
    open(&name, OpenFlags::SQLITE_OPEN_READ_WRITE).or_else(|_| open(&name, OpenFlags::SQLITE_OPEN_READ_ONLY)).or_else(
        |e| {
            let uri = format!("file:{}?immutable=1", uri_path(&name));
            open(&uri, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI).map_err(|_| e)
        },
    )
}

/// A path as the path part of an SQLite `file:` URI (`%`, `?` and `#` escaped).
fn uri_path(path: &str) -> String {
    path.replace('%', "%25").replace('?', "%3f").replace('#', "%23")
}
