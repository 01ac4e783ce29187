//! The `file` stream: `{"type":"file","file_path":"..."}`, a local file or block device read
//! with positional reads (any number of threads at once, no shared file offset).
//!
//! What it is for: reading a source from local disk, knowing its holes (SEEK_DATA/SEEK_HOLE)
//! so sparse files stay sparse, and opening siblings for qcow backing files. A missing,
//! unreadable or non-file path is refused at open, naming the path.
//! What it is not: no caching (the page cache does that) and no writing, ever.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, ErrorKind, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use rbdm_registry::{OpenContext, Result, SourceError, Stream, StreamExtent, StreamPlugin};
use rbdm_spec::FileStreamSpec;

mod identity;
use identity::Identity;
pub use identity::{check_recorded, recorded_identity};

inventory::submit!(StreamPlugin {
    type_name: "file",
    description: "a local file or block device (file_path)",
    open: open_spec,
});

/// Referenced by `rbdm-plugins` so the linker keeps this crate and its registration.
#[inline(never)]
pub fn link() {}

fn open_spec(spec: &serde_json::Value, path: &str, _ctx: &OpenContext) -> Result<Box<dyn Stream>> {
    let s =
        FileStreamSpec::from_json(spec, path).map_err(|e| SourceError::BadSpec(e.to_string()))?;
    Ok(Box::new(FileStream::open(Path::new(&s.file_path))?))
}

/// An open file. The path is kept absolute so that relative backing names resolve against
/// the file's own directory whatever the working directory becomes.
pub struct FileStream {
    file: File,
    path: PathBuf,
    size: u64,
    /// What the file was at open; every read and hole query checks it still is.
    identity: Identity,
}

impl FileStream {
    pub fn open(path: &Path) -> Result<Self> {
        let path = std::path::absolute(path)
            .map_err(|e| SourceError::io(format!("file {}", path.display()), e))?;
        let meta = std::fs::metadata(&path).map_err(|e| open_error(&path, e))?;
        let kind = meta.file_type();
        if kind.is_dir() {
            return Err(SourceError::Invalid(format!(
                "file {}: is a directory, not a file",
                path.display()
            )));
        }
        if !kind.is_file() && !kind.is_block_device() {
            return Err(SourceError::Invalid(format!(
                "file {}: not a regular file or block device",
                path.display()
            )));
        }
        let mut file = File::open(&path).map_err(|e| open_error(&path, e))?;
        // The open descriptor's own stat: the name may have moved on since `metadata` above.
        let meta = file
            .metadata()
            .map_err(|e| SourceError::io(format!("file {}: stat", path.display()), e))?;
        let identity = Identity::of(&meta);
        let size = if kind.is_file() {
            meta.len()
        } else {
            file.seek(SeekFrom::End(0))
                .map_err(|e| SourceError::io(format!("file {}: size", path.display()), e))?
        };
        Ok(FileStream {
            file,
            path,
            size,
            identity,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn unchanged(&self, by_name: bool) -> Result<()> {
        self.identity.check(&self.file, &self.path, by_name)
    }

    fn allocation(&self, offset: u64, end: u64) -> io::Result<Vec<StreamExtent>> {
        let mut out: Vec<StreamExtent> = Vec::new();
        let mut push = |offset: u64, stop: u64, zero: bool| {
            if stop > offset {
                out.push(StreamExtent {
                    offset,
                    len: stop - offset,
                    zero,
                });
            }
        };
        let mut pos = offset;
        while let Some((data, len)) = rbdm_sparse::next_data(&self.file, pos, end)? {
            push(pos, data, true);
            push(data, data + len, false);
            pos = data + len;
        }
        push(pos, end, true);
        Ok(out)
    }
}

fn open_error(path: &Path, e: io::Error) -> SourceError {
    let p = path.display();
    match e.kind() {
        ErrorKind::NotFound => SourceError::NotFound(format!("file {p} does not exist")),
        ErrorKind::PermissionDenied => {
            SourceError::PermissionDenied(format!("file {p} is not readable"))
        }
        _ => SourceError::io(format!("file {p}"), e),
    }
}

impl Stream for FileStream {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.size);
        if end.is_none() {
            return Err(SourceError::Invalid(format!(
                "{}: read of {} bytes at {offset} is past the end ({} bytes)",
                self.describe(),
                buf.len(),
                self.size
            )));
        }
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| match e.kind() {
                ErrorKind::UnexpectedEof => SourceError::Corrupt(format!(
                    "{}: file shrank below {} bytes while being read",
                    self.describe(),
                    self.size
                )),
                _ => SourceError::io(format!("{}: read at {offset}", self.describe()), e),
            })?;
        // After the read: bytes read from a file that changed meanwhile are not the source's.
        self.unchanged(false)
    }

    /// Holes from SEEK_DATA/SEEK_HOLE, for the part of the range inside the file; `None`
    /// where the file system does not support them.
    fn extents(&self, offset: u64, len: u64) -> Option<Result<Vec<StreamExtent>>> {
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return Some(Ok(Vec::new()));
        }
        // A file truncated under us reads as holes past its new end: the check turns that
        // into an error, never a range of zeros.
        let extents = self.allocation(offset, end).ok()?;
        Some(self.unchanged(true).map(|()| extents))
    }

    /// A backing file: an absolute name as is, a relative one beside this file (as QEMU
    /// resolves it), never against the working directory.
    fn open_relative(&self, name: &str) -> Result<Box<dyn Stream>> {
        if name.is_empty() || name.contains('\0') {
            return Err(SourceError::Invalid(format!(
                "{}: bad related file name {name:?}",
                self.describe()
            )));
        }
        let target = match Path::new(name) {
            p if p.is_absolute() => p.to_path_buf(),
            p => self.path.parent().unwrap_or(Path::new("/")).join(p),
        };
        Ok(Box::new(FileStream::open(&target)?))
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(dir: &Path, name: &str, size: u64, writes: &[(u64, &[u8])]) -> PathBuf {
        let p = dir.join(name);
        let f = File::create(&p).unwrap();
        f.set_len(size).unwrap();
        for (off, data) in writes {
            f.write_all_at(data, *off).unwrap();
        }
        p
    }

    /// Timestamps are as coarse as the kernel's clock tick: let one pass before a change.
    fn later() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    #[test]
    fn a_file_that_changes_after_open_fails_reads_and_hole_queries() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![0xa5u8; 1 << 20];
        let shrink = file_with(dir.path(), "shrink", 1 << 20, &[(0, &data)]);
        let s = FileStream::open(&shrink).unwrap();
        let mut buf = vec![0u8; 4096];
        s.read_at(0, &mut buf).unwrap();
        later();
        File::options()
            .write(true)
            .open(&shrink)
            .unwrap()
            .set_len(512 << 10)
            .unwrap();
        // Still inside the new size: the read succeeds on the file, the check refuses it.
        let e = s.read_at(0, &mut buf).unwrap_err();
        assert!(matches!(e, SourceError::Changed(_)), "{e}");
        assert!(e.to_string().contains("524288 bytes"), "{e}");
        // Past the new end the file system says "hole": that must not become zeros.
        let e = s.extents(768 << 10, 4096).unwrap().unwrap_err();
        assert!(matches!(e, SourceError::Changed(_)), "{e}");

        let rewrite = file_with(dir.path(), "rewrite", 1 << 20, &[(0, &data)]);
        let s = FileStream::open(&rewrite).unwrap();
        later();
        File::options()
            .write(true)
            .open(&rewrite)
            .unwrap()
            .write_all_at(b"new", 4096)
            .unwrap();
        let e = s.read_at(0, &mut buf).unwrap_err();
        assert!(e.to_string().contains("modified"), "{e}");

        let replaced = file_with(dir.path(), "replaced", 1 << 20, &[(0, &data)]);
        let s = FileStream::open(&replaced).unwrap();
        let other = file_with(dir.path(), "other", 1 << 20, &[(0, &data)]);
        std::fs::rename(&other, &replaced).unwrap();
        let e = s.extents(0, 4096).unwrap().unwrap_err();
        assert!(e.to_string().contains("replaced"), "{e}");
        assert_eq!(e.errno(), libc::EIO);
    }

    #[test]
    fn reads_are_positional_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let p = file_with(
            dir.path(),
            "a",
            10_000,
            &[(100, b"hello"), (9_995, b"tail!")],
        );
        let s = FileStream::open(&p).unwrap();
        assert_eq!(s.size(), 10_000);
        let mut buf = [0u8; 5];
        s.read_at(100, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        s.read_at(9_995, &mut buf).unwrap();
        assert_eq!(&buf, b"tail!");
        assert!(matches!(
            s.read_at(9_996, &mut buf),
            Err(SourceError::Invalid(_))
        ));
        assert!(matches!(
            s.read_at(u64::MAX - 2, &mut buf),
            Err(SourceError::Invalid(_))
        ));
    }

    #[test]
    fn holes_are_reported_and_cover_the_range() {
        let dir = tempfile::tempdir().unwrap();
        let mib = 1u64 << 20;
        let p = file_with(
            dir.path(),
            "s",
            8 * mib,
            &[(2 * mib, &[7u8; 4096]), (6 * mib, &[9u8; 8192])],
        );
        let s = FileStream::open(&p).unwrap();
        let ext = s
            .extents(0, 8 * mib)
            .expect("lseek answers on Linux")
            .unwrap();
        let mut pos = 0;
        for e in &ext {
            assert_eq!(e.offset, pos, "{ext:?}");
            pos += e.len;
        }
        assert_eq!(pos, 8 * mib);
        let data: Vec<_> = ext
            .iter()
            .filter(|e| !e.zero)
            .map(|e| (e.offset, e.len))
            .collect();
        // File systems allocate whole blocks; the data must include what was written and
        // must not be the whole file.
        assert!(
            data.iter()
                .any(|&(o, l)| o <= 2 * mib && o + l >= 2 * mib + 4096),
            "{ext:?}"
        );
        assert!(
            data.iter()
                .any(|&(o, l)| o <= 6 * mib && o + l >= 6 * mib + 8192),
            "{ext:?}"
        );
        assert!(data.iter().map(|d| d.1).sum::<u64>() < 4 * mib, "{ext:?}");
        let Some(Ok(part)) = s.extents(2 * mib + 100, 10) else {
            panic!("extents went away")
        };
        assert_eq!(
            part,
            vec![StreamExtent {
                offset: 2 * mib + 100,
                len: 10,
                zero: false
            }]
        );
        assert_eq!(s.extents(8 * mib, 10).unwrap().unwrap(), vec![]);
    }

    #[test]
    fn open_errors_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let missing = FileStream::open(&dir.path().join("nope")).err().unwrap();
        assert_eq!(missing.errno(), libc::ENOENT);
        assert!(missing.to_string().contains("nope"), "{missing}");
        let isdir = FileStream::open(dir.path()).err().unwrap();
        assert!(isdir.to_string().contains("is a directory"), "{isdir}");
    }

    #[test]
    fn relative_names_resolve_beside_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let base = file_with(&dir.path().join("sub"), "base", 4096, &[(0, b"base")]);
        let top = file_with(&dir.path().join("sub"), "top", 4096, &[]);
        let s = FileStream::open(&top).unwrap();
        let b = s.open_relative("base").unwrap();
        let mut buf = [0u8; 4];
        b.read_at(0, &mut buf).unwrap();
        assert_eq!(&buf, b"base");
        assert!(s.open_relative(base.to_str().unwrap()).is_ok());
        assert_eq!(
            s.open_relative("missing").err().unwrap().errno(),
            libc::ENOENT
        );
        let mut f = File::create(dir.path().join("up")).unwrap();
        f.write_all(b"up").unwrap();
        assert_eq!(s.open_relative("../up").unwrap().size(), 2);
    }
}
