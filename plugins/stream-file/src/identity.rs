//! What a file source is (size, mtime, ctime, inode), and the checks that it still is: a
//! migration's source must not change while it is copied, or the copy is a mix of old and new
//! bytes, or zeros where the file shrank (issue 13 point 3).
//!
//! Two checks share one comparison: within a process, as the http stream compares
//! ETag/Last-Modified on every range, every read and hole query compares the open file's
//! `fstat` (and the path's `stat`) with what they were at open; across processes, the identity
//! a migration recorded at prepare ([`recorded_identity`]) is compared with the file now at
//! that path whenever the source is opened again ([`check_recorded`]).

use std::fs::{File, Metadata};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use rbdm_registry::{Result, SourceError};
use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    dev: u64,
    ino: u64,
    /// A block device's stat size is 0 and its times follow no write of ours: only its
    /// inode counts.
    block_device: bool,
}

impl Identity {
    pub(crate) fn of(meta: &Metadata) -> Self {
        Identity {
            size: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            dev: meta.dev(),
            ino: meta.ino(),
            block_device: meta.file_type().is_block_device(),
        }
    }

    /// What differs in `now`, the same file seen later, in words; `None` when nothing does.
    fn changes(&self, now: &Identity) -> Option<String> {
        if (now.dev, now.ino) != (self.dev, self.ino) {
            return Some("replaced (another file has its name now)".into());
        }
        if self.block_device {
            return None;
        }
        if now.size != self.size {
            return Some(format!("{} bytes, {} before", now.size, self.size));
        }
        if now.mtime != self.mtime {
            return Some("modified (its mtime moved)".into());
        }
        if now.ctime != self.ctime {
            return Some("changed (its ctime moved: written, truncated or relinked)".into());
        }
        None
    }

    /// `Changed` naming what differs when the open file, or (with `by_name`) the file now at
    /// `path`, is not the one opened. Reads check the descriptor only (one `fstat`); the
    /// name, which only matters to whoever opens the source next, is checked on the rarer
    /// hole queries.
    pub(crate) fn check(&self, file: &File, path: &Path, by_name: bool) -> Result<()> {
        let p = path.display();
        let now = file
            .metadata()
            .map_err(|e| SourceError::io(format!("file {p}: stat"), e))?;
        // The descriptor cannot be replaced: only its contents or size can change.
        let now = Identity {
            dev: self.dev,
            ino: self.ino,
            ..Identity::of(&now)
        };
        if let Some(what) = self.changes(&now) {
            return Err(SourceError::Changed(format!(
                "file {p} changed while being read: {what}"
            )));
        }
        if !by_name {
            return Ok(());
        }
        match std::fs::metadata(path) {
            Ok(m) if (m.dev(), m.ino()) == (self.dev, self.ino) => Ok(()),
            Ok(_) => Err(SourceError::Changed(format!(
                "file {p} was replaced while being read (another file has its name now)"
            ))),
            Err(e) => Err(SourceError::Changed(format!(
                "file {p} was removed or renamed while being read: {e}"
            ))),
        }
    }

    fn to_json(self) -> Value {
        json!({
            "size": self.size,
            "mtime": [self.mtime.0, self.mtime.1],
            "ctime": [self.ctime.0, self.ctime.1],
            "dev": self.dev,
            "ino": self.ino,
            "block_device": self.block_device,
        })
    }

    fn from_json(v: &Value) -> Option<Self> {
        let u = |k: &str| v.get(k)?.as_u64();
        let time = |k: &str| -> Option<(i64, i64)> {
            let t = v.get(k)?.as_array()?;
            match t.as_slice() {
                [s, ns] => Some((s.as_i64()?, ns.as_i64()?)),
                _ => None,
            }
        };
        Some(Identity {
            size: u("size")?,
            mtime: time("mtime")?,
            ctime: time("ctime")?,
            dev: u("dev")?,
            ino: u("ino")?,
            block_device: v.get("block_device")?.as_bool()?,
        })
    }
}

/// The identity of the file at `path` now, as JSON for a migration to record at prepare.
pub fn recorded_identity(path: &Path) -> Result<Value> {
    let meta = std::fs::metadata(path).map_err(|e| crate::open_error(path, e))?;
    Ok(Identity::of(&meta).to_json())
}

/// `Changed` (EIO) naming what differs when the file now at `path` is not the one
/// `recorded` (by [`recorded_identity`]) describes: resized, modified, replaced or gone.
/// A recorded value this build cannot read is `Corrupt`, never a pass.
pub fn check_recorded(path: &Path, recorded: &Value) -> Result<()> {
    let p = path.display();
    let then = Identity::from_json(recorded).ok_or_else(|| {
        SourceError::Corrupt(format!(
            "file {p}: the identity recorded at prepare is unreadable: {recorded}"
        ))
    })?;
    let now = match std::fs::metadata(path) {
        Ok(m) => Identity::of(&m),
        Err(e) => {
            return Err(SourceError::Changed(format!(
                "file {p} changed since the migration was prepared: it cannot be opened: {e}"
            )))
        }
    };
    match then.changes(&now) {
        Some(what) => Err(SourceError::Changed(format!(
            "file {p} changed since the migration was prepared: {what}"
        ))),
        None => Ok(()),
    }
}
