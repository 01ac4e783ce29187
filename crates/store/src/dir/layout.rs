//! The store's files on disk: when a root may become a new store, and the permissions of
//! everything in it.
//!
//! A store holds image data and the config-key values (secrets referenced by `config://`), so
//! it is private to its owner, as `rbd` keeps keyrings: directories 0700 and files 0600 set
//! explicitly, whatever the umask. SQLite creates `meta.sqlite-wal` and `-shm` itself with the
//! database file's mode, so creating `meta.sqlite` 0600 first covers those too.
//!
//! A store is created only in a root that does not exist or is empty. A root that holds the
//! store's directories but no database is a store that lost its metadata: opening it as a new,
//! empty store would report every image gone (and let the next writer reuse their names), so
//! it is an error naming the missing file.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::io_err;
use crate::{Error, Result};

pub(super) const DIR_MODE: u32 = 0o700;
pub(super) const FILE_MODE: u32 = 0o600;
pub(super) const DB_FILE: &str = "meta.sqlite";
/// What a store root holds besides the database (`create_layout` makes these).
const LAYOUT: [&str; 2] = ["data", "locks"];

/// Makes sure `root` holds a store database, creating a new store only where there is none
/// at all. Returns whether the database file was created here.
pub(super) fn prepare_root(root: &Path) -> Result<bool> {
    let db = root.join(DB_FILE);
    if db.exists() {
        tighten_existing(root);
        return Ok(false);
    }
    if let Some(found) = LAYOUT.iter().find(|s| root.join(s).exists()) {
        return Err(Error::Io {
            context: format!(
                "open {} (the store's {found}/ is there but its database is gone; not \
                 starting an empty store over it)",
                db.display()
            ),
            source: std::io::Error::from(ErrorKind::NotFound),
        });
    }
    if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_err(format!("create {}", parent.display())))?;
    }
    make_dir(root)?;
    // Exclusive create: of several processes making the store at once, one makes the file
    // and every one then opens it (the schema is made under SQLite's write lock).
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(&db)
    {
        Ok(f) => {
            set_mode(&f, FILE_MODE).map_err(io_err(format!("chmod {}", db.display())))?;
            Ok(true)
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(Error::Io {
            context: format!("create {}", db.display()),
            source: e,
        }),
    }
}

/// The subdirectories; made after the database file, so that a root with them and no
/// database is never a store being created (see `prepare_root`).
pub(super) fn create_layout(root: &Path) -> Result<()> {
    for sub in LAYOUT {
        make_dir(&root.join(sub))?;
    }
    Ok(())
}

/// A directory 0700 (or an existing one left as it is, unless it is the store's root).
pub(super) fn make_dir(dir: &Path) -> Result<()> {
    match DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => {
            return Err(Error::Io {
                context: format!("create {}", dir.display()),
                source: e,
            })
        }
    }
    // The umask may have taken bits the store needs (0o077 is fine, 0o277 is not).
    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
        .map_err(io_err(format!("chmod {}", dir.display())))
}

/// Sets a file's mode through its descriptor, so the umask cannot have the last word.
pub(super) fn set_mode(f: &fs::File, mode: u32) -> std::io::Result<()> {
    let want = fs::Permissions::from_mode(mode);
    if f.metadata()?.permissions().mode() & 0o7777 == mode {
        return Ok(());
    }
    f.set_permissions(want)
}

/// A store made before these modes were kept: its root and database become private. Best
/// effort (a store shared by another owner's files is theirs to fix); the root's mode alone
/// already keeps other users out of everything below it.
fn tighten_existing(root: &Path) {
    let fix = |p: &Path, mode: u32| {
        if let Ok(m) = fs::metadata(p) {
            if m.permissions().mode() & 0o7777 != mode {
                let _ = fs::set_permissions(p, fs::Permissions::from_mode(mode));
            }
        }
    };
    fix(root, DIR_MODE);
    for name in [DB_FILE, "meta.sqlite-wal", "meta.sqlite-shm"] {
        fix(&root.join(name), FILE_MODE);
    }
}

/// Whether any object file exists under `data/` (a database without a store in it over
/// them has lost its metadata).
pub(super) fn has_data_files(root: &Path) -> bool {
    let Ok(subs) = fs::read_dir(root.join("data")) else {
        return false;
    };
    subs.flatten().any(|sub| {
        fs::read_dir(sub.path()).is_ok_and(|mut entries| entries.next().is_some())
            || sub.file_type().is_ok_and(|t| t.is_file())
    })
}
