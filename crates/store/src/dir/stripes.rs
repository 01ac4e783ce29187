//! Stripe locks, and the per-handle cache of head rows they keep correct across processes.
//!
//! Every change to an object's metadata (operate, journal replay, snapshot trim, pool removal)
//! happens under its stripe lock held exclusively, and whoever takes a stripe exclusively
//! first bumps a generation counter kept in the lock file itself (8 bytes at offset 0). A row
//! read under the stripe lock held shared is remembered with the generation seen then: while
//! the stripe's generation is unchanged, nobody, in this process or another, can have changed
//! it, so it is used without asking SQLite. The bump comes before any change, so a writer that
//! dies half way still invalidates every cache. Rows read under an exclusive lock are never
//! cached (their holder is about to change them). The counter is not fsynced: a cache does not
//! outlive its process, so a power loss that forgets a bump forgets the caches too.
//!
//! Lock files are opened once and their descriptors reused. Each holder still gets its own
//! open file description (flock belongs to those), which is what makes threads of one process
//! exclude each other.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::hash::Hash;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use crate::{Error, Result};

/// Idle descriptors kept per stripe; more only when more holders overlap.
const IDLE_PER_STRIPE: usize = 4;
/// Rows a cache holds before it starts over.
const CACHE_ROWS: usize = 8192;

pub(super) struct Stripes {
    dir: PathBuf,
    idle: Vec<Mutex<Vec<File>>>,
}

/// A held stripe lock; dropping it unlocks and keeps the descriptor for the next holder.
pub(super) struct StripeLock<'a> {
    file: Option<File>,
    idle: &'a Mutex<Vec<File>>,
    /// The stripe's generation while this lock is held (after our bump, if exclusive).
    pub generation: u64,
    pub exclusive: bool,
}

fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Stripes {
    pub fn new(dir: PathBuf, count: u64) -> Self {
        Stripes {
            dir,
            idle: (0..count).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    pub fn count(&self) -> u64 {
        self.idle.len() as u64
    }

    pub fn lock(&self, index: u64, exclusive: bool) -> Result<StripeLock<'_>> {
        let slot = &self.idle[(index % self.count()) as usize];
        let file = match guard(slot).pop() {
            Some(f) => f,
            None => self.open(index)?,
        };
        // From here on `held` unlocks (or closes) the file whatever happens.
        let mut held = StripeLock {
            file: Some(file),
            idle: slot,
            generation: 0,
            exclusive,
        };
        let how = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        let f = held.file.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);
        loop {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(f, how) } == 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                held.file = None;
                return Err(self.io("flock", index, e));
            }
        }
        let generation = held
            .read_generation()
            .map_err(|e| self.io("read", index, e))?;
        held.generation = generation;
        if exclusive {
            held.generation = generation.wrapping_add(1);
            let bumped = held
                .file
                .as_ref()
                .map(|f| f.write_all_at(&held.generation.to_le_bytes(), 0));
            if let Some(Err(e)) = bumped {
                return Err(self.io("write", index, e));
            }
        }
        Ok(held)
    }

    fn open(&self, index: u64) -> Result<File> {
        let path = self.dir.join(index.to_string());
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(super::layout::FILE_MODE)
            .open(&path)
            .and_then(|f| super::layout::set_mode(&f, super::layout::FILE_MODE).map(|()| f))
            .map_err(|e| Error::Io {
                context: format!("open {}", path.display()),
                source: e,
            })
    }

    fn io(&self, what: &str, index: u64, e: std::io::Error) -> Error {
        Error::Io {
            context: format!(
                "{what} lock file {}",
                self.dir.join(index.to_string()).display()
            ),
            source: e,
        }
    }
}

impl StripeLock<'_> {
    /// A lock file that was never bumped is empty: generation 0.
    fn read_generation(&self) -> std::io::Result<u64> {
        let Some(f) = &self.file else { return Ok(0) };
        let mut b = [0u8; 8];
        let mut got = 0;
        while got < b.len() {
            match f.read_at(&mut b[got..], got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(if got == b.len() {
            u64::from_le_bytes(b)
        } else {
            0
        })
    }
}

impl Drop for StripeLock<'_> {
    fn drop(&mut self) {
        let Some(f) = self.file.take() else { return };
        // SAFETY: flock on a descriptor we own. If unlocking fails, closing the file
        // (dropping it) releases the lock instead.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) } != 0 {
            return;
        }
        let mut idle = guard(self.idle);
        if idle.len() < IDLE_PER_STRIPE {
            idle.push(f);
        }
    }
}

/// Rows remembered with the generation of their stripe when read.
pub(super) struct RowCache<K, V> {
    rows: Mutex<HashMap<K, (u64, V)>>,
}

impl<K: Hash + Eq + Clone, V: Clone> RowCache<K, V> {
    pub fn new() -> Self {
        RowCache {
            rows: Mutex::new(HashMap::new()),
        }
    }

    /// The row, if it was read under this same generation.
    pub fn get(&self, key: &K, lock: &StripeLock) -> Option<V> {
        match guard(&self.rows).get(key) {
            Some((g, v)) if *g == lock.generation && !lock.exclusive => Some(v.clone()),
            _ => None,
        }
    }

    /// Remembers a row read under `lock`; rows read under an exclusive lock are not kept.
    pub fn put(&self, key: &K, lock: &StripeLock, value: &V) {
        if lock.exclusive {
            return;
        }
        let mut rows = guard(&self.rows);
        if rows.len() >= CACHE_ROWS && !rows.contains_key(key) {
            rows.clear();
        }
        rows.insert(key.clone(), (lock.generation, value.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_holders_bump_and_shared_see_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Stripes::new(dir.path().to_path_buf(), 4);
        let b = Stripes::new(dir.path().to_path_buf(), 4);
        let g0 = a.lock(1, false).expect("shared").generation;
        let g1 = b.lock(1, true).expect("exclusive").generation;
        assert_ne!(g0, g1, "an exclusive holder changes the generation");
        assert_eq!(
            a.lock(1, false).expect("shared").generation,
            g1,
            "the other handle sees the bump"
        );
        assert_eq!(
            a.lock(2, false).expect("other stripe").generation,
            0,
            "stripes count apart"
        );
        let cache: RowCache<&str, u32> = RowCache::new();
        let held = a.lock(1, false).expect("shared");
        cache.put(&"o", &held, &7);
        assert_eq!(cache.get(&"o", &held), Some(7));
        drop(held);
        assert_eq!(
            cache.get(&"o", &a.lock(1, false).expect("shared")),
            Some(7),
            "nothing changed"
        );
        drop(b.lock(1, true).expect("exclusive"));
        assert_eq!(
            cache.get(&"o", &a.lock(1, false).expect("shared")),
            None,
            "a bump invalidates"
        );
    }

    #[test]
    fn threads_of_one_handle_exclude_each_other() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Stripes::new(dir.path().to_path_buf(), 1);
        let inside = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|sc| {
            for _ in 0..4 {
                sc.spawn(|| {
                    for _ in 0..200 {
                        let _l = s.lock(0, true).expect("lock");
                        assert_eq!(
                            inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                            0,
                            "two holders at once"
                        );
                        inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    }
                });
            }
        });
        assert_eq!(
            s.lock(0, false).expect("shared").generation,
            800,
            "every exclusive hold bumped once"
        );
    }
}
