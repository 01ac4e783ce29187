//! What a file source was when it was opened (size, mtime, ctime, inode), and the check that
//! it still is: a migration's source must not change while it is copied, or the copy is a mix
//! of old and new bytes, or zeros where the file shrank (issue 13 point 3). As the http stream
//! compares ETag/Last-Modified on every range, every read and every hole query here compares
//! the open file's `fstat` and the path's `stat` with what they were at open.

use std::fs::{File, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rbdm_registry::{Result, SourceError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    dev: u64,
    ino: u64,
}

impl Identity {
    pub(crate) fn of(meta: &Metadata) -> Self {
        Identity {
            size: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    /// `Changed` naming what differs when the open file, or (with `by_name`) the file now at
    /// `path`, is not the one opened. A block device's stat size is 0 and its mtime follows
    /// no write of ours, so only its inode counts. Reads check the descriptor only (one
    /// `fstat`); the name, which only matters to whoever opens the source next, is checked on
    /// the rarer hole queries.
    pub(crate) fn check(
        &self,
        file: &File,
        path: &Path,
        block_device: bool,
        by_name: bool,
    ) -> Result<()> {
        let p = path.display();
        let now = file
            .metadata()
            .map_err(|e| SourceError::io(format!("file {p}: stat"), e))?;
        let now = Identity::of(&now);
        if !block_device {
            if now.size != self.size {
                return Err(SourceError::Changed(format!(
                    "file {p} changed while being read: {} bytes, {} when opened",
                    now.size, self.size
                )));
            }
            if now.mtime != self.mtime || now.ctime != self.ctime {
                return Err(SourceError::Changed(format!(
                    "file {p} changed while being read: modified since it was opened"
                )));
            }
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
}
