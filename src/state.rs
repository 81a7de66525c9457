//! What survives a restart: each balancer's place in its rotation, so that after `up` starts
//! again the next request goes to the backend after the last one served (the classic lab's
//! "resumes from where it left off", kept past the process). One small JSON file per balancer
//! (`$XDG_DATA_HOME/netpulse/rotation/<proto>-<listen>.json`), written atomically (a temporary
//! file renamed over it) every second while the rotation moves, and on stop.

use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::balance::Picker;

/// How often a moving rotation is saved; `kill -9` loses at most this much of it.
pub const SAVE_EVERY: Duration = Duration::from_secs(1);

/// The saved place of one balancer's rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Saved {
    name: String,
    proto: String,
    listen: SocketAddr,
    /// The backends in order, as configured when it was saved: the position means the same only
    /// over the same list.
    backends: Vec<SocketAddr>,
    /// Turns taken so far.
    position: usize,
}

/// One balancer whose rotation is kept.
#[derive(Debug, Clone)]
pub struct Kept {
    saved: Saved,
    picker: Arc<Picker>,
    file: PathBuf,
}

/// The default directory: `rotation/` next to the history file.
pub fn default_dir() -> Option<PathBuf> {
    crate::history::default_path().and_then(|p| p.parent().map(|d| d.join("rotation")))
}

/// The file of the balancer listening on `listen` (one balancer per address and protocol).
fn file_of(dir: &Path, proto: &str, listen: SocketAddr) -> PathBuf {
    let at = listen.to_string().replace(['[', ']'], "").replace(':', "-");
    dir.join(format!("{proto}-{at}.json"))
}

impl Kept {
    /// Restores the rotation of the balancer `name` on `listen` from `dir` when it was saved over
    /// the same backends, and says on stderr what it did. A listen port of 0 (a new port each
    /// run) is not kept.
    pub fn restore(
        dir: &Path,
        proto: &str,
        name: &str,
        listen: SocketAddr,
        backends: Vec<SocketAddr>,
        picker: Arc<Picker>,
    ) -> Option<Kept> {
        if listen.port() == 0 {
            return None;
        }
        let file = file_of(dir, proto, listen);
        let saved = Saved { name: name.to_string(), proto: proto.to_string(), listen, backends, position: 0 };
        match read_small(&file) {
            Ok(bytes) => match serde_json::from_slice::<Saved>(&bytes) {
                Ok(old) if old.backends == saved.backends && old.proto == saved.proto => {
                    picker.resume_at(old.position);
                    tracing::info!(
                        "{proto} balancer \"{name}\": rotation resumed where it stopped (after {} turns)",
                        old.position
                    );
                }
                Ok(_) => tracing::info!(
                    "{proto} balancer \"{name}\": its backends changed since the rotation was saved; it starts afresh"
                ),
                Err(e) => tracing::warn!(
                    "{proto} balancer \"{name}\": ignoring the saved rotation {} ({e}); it starts afresh",
                    file.display()
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                "{proto} balancer \"{name}\": cannot read the saved rotation {}: {e}; it starts afresh",
                file.display()
            ),
        }
        let position = picker.position();
        Some(Kept { saved: Saved { position, ..saved }, picker, file })
    }

    /// Writes the position if it moved since the last write.
    fn save(&mut self, force: bool) -> std::io::Result<()> {
        let position = self.picker.position();
        if position == self.saved.position && !force {
            return Ok(());
        }
        self.saved.position = position;
        write_atomically(&self.file, &serde_json::to_vec_pretty(&self.saved).map_err(std::io::Error::other)?)
    }
}

/// The file's bytes if it is a regular file of at most 64 KiB (a saved rotation is about 200
/// bytes): anything else (a FIFO, a device, a huge file) is refused rather than read.
fn read_small(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    const MAX: u64 = 64 * 1024;
    let meta = fs::metadata(path)?;
    if !meta.is_file() || meta.len() > MAX {
        return Err(std::io::Error::other(format!("not a regular file of at most {MAX} bytes")));
    }
    let mut bytes = Vec::new();
    fs::File::open(path)?.take(MAX).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Writes `bytes` to a temporary file beside `path`, syncs it and renames it over `path`, so a
/// crash leaves the old file or the new one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Every kept rotation of a run, shared by the saver and the supervisor that replaces a balancer
/// on reload (its next generation's picker is followed from then on).
#[derive(Debug, Default, Clone)]
pub struct Rotations {
    inner: Arc<Mutex<Vec<(Kept, bool)>>>,
    /// Where they are kept (`None`: not kept).
    dir: Option<Arc<PathBuf>>,
}

impl Rotations {
    pub fn new(dir: PathBuf, kept: Vec<Kept>) -> Self {
        Self { inner: Arc::new(Mutex::new(kept.into_iter().map(|k| (k, false)).collect())), dir: Some(Arc::new(dir)) }
    }

    /// A balancer a reload added: its rotation resumes from its file (if any) and is kept.
    pub fn add(&self, proto: &str, name: &str, listen: SocketAddr, backends: Vec<SocketAddr>, picker: Arc<Picker>) {
        let Some(dir) = &self.dir else { return };
        if let Some(k) = Kept::restore(dir, proto, name, listen, backends, picker) {
            self.lock().push((k, false));
        }
    }

    /// A balancer a reload removed: its last position is saved, and no more.
    pub fn forget(&self, picker: &Arc<Picker>) {
        let mut kept = self.lock();
        if let Some(i) = kept.iter().position(|(k, _)| Arc::ptr_eq(&k.picker, picker)) {
            let (mut k, _) = kept.remove(i);
            let _ = k.save(false);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Kept, bool)>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A reload replaced the balancer whose picker was `old`: from now on its rotation is
    /// `picker`'s, over `backends`, on `listen` (another address is another file).
    pub fn follow(&self, old: &Arc<Picker>, listen: SocketAddr, backends: Vec<SocketAddr>, picker: Arc<Picker>) {
        let mut kept = self.lock();
        if let Some((k, _)) = kept.iter_mut().find(|(k, _)| Arc::ptr_eq(&k.picker, old)) {
            if let Some(dir) = k.file.parent() {
                k.file = file_of(dir, &k.saved.proto, listen);
            }
            k.saved.listen = listen;
            k.saved.backends = backends;
            k.saved.position = usize::MAX; // written at the next save whatever the position
            k.picker = picker;
        }
    }

    fn save_all(&self, force: bool) {
        for (k, warned) in self.lock().iter_mut() {
            match k.save(force) {
                Ok(()) => *warned = false,
                Err(e) if !*warned => {
                    *warned = true;
                    tracing::warn!(
                        "{} balancer \"{}\": cannot save its rotation to {}: {e}; it goes on, and starts afresh \
                         after a restart",
                        k.saved.proto,
                        k.saved.name,
                        k.file.display()
                    );
                }
                Err(_) => {}
            }
        }
    }

    /// Saves every rotation each [`SAVE_EVERY`] while it moves, until `stop`; a failure is said
    /// once per balancer, and the balancer goes on. [`Rotations::finish`] saves the last turns.
    pub async fn keep(self, stop: CancellationToken) {
        if self.lock().is_empty() {
            return;
        }
        let mut tick = tokio::time::interval(SAVE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            // A write and fsync: off the async workers.
            let me = self.clone();
            if tokio::task::spawn_blocking(move || me.save_all(false)).await.is_err() {
                return;
            }
        }
    }

    /// The last save, once the balancers have drained.
    pub fn finish(&self) {
        self.save_all(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::BackendSet;
    use std::time::Instant;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (1..=n).map(|p| SocketAddr::from(([127, 0, 0, 1], 9000 + p))).collect()
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("netpulse-state-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_saved_rotation_resumes_over_the_same_backends_only() {
        let d = dir("resume");
        let listen = SocketAddr::from(([127, 0, 0, 1], 8888));
        let set = BackendSet::new(&addrs(3));
        let p = Arc::new(Picker::new(4));
        let mut k = Kept::restore(&d, "udp", "udp", listen, addrs(3), p.clone()).unwrap();
        for _ in 0..4 {
            p.pick(&set, None, Instant::now(), &[]);
        }
        k.save(false).unwrap();
        let again = Arc::new(Picker::new(4));
        Kept::restore(&d, "udp", "udp", listen, addrs(3), again.clone()).unwrap();
        assert_eq!(
            again.pick(&set, None, Instant::now(), &[]).map(|i| set.backends()[i].addr),
            Some(addrs(3)[1]),
            "turn 5 of 3 backends is the second"
        );
        let other = Arc::new(Picker::new(4));
        Kept::restore(&d, "udp", "udp", listen, addrs(4), other.clone()).unwrap();
        assert_eq!(other.position(), 0, "a different backend list starts afresh");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_corrupt_file_starts_afresh_and_is_replaced() {
        let d = dir("corrupt");
        let listen = SocketAddr::from(([127, 0, 0, 1], 8000));
        fs::create_dir_all(&d).unwrap();
        fs::write(file_of(&d, "http", listen), b"{ not json").unwrap();
        let p = Arc::new(Picker::new(4));
        let mut k = Kept::restore(&d, "http", "web", listen, addrs(2), p.clone()).unwrap();
        assert_eq!(p.position(), 0);
        p.resume_at(7);
        k.save(false).unwrap();
        let text = fs::read_to_string(file_of(&d, "http", listen)).unwrap();
        assert!(text.contains("\"position\": 7"), "{text}");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn an_ephemeral_port_is_not_kept() {
        let d = dir("ephemeral");
        let p = Arc::new(Picker::new(4));
        assert!(Kept::restore(&d, "udp", "u", SocketAddr::from(([127, 0, 0, 1], 0)), addrs(2), p).is_none());
    }
}
