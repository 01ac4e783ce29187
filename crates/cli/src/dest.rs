//! Where an export goes (`export`, `source export`): a new file, never overwritten, or
//! stdout; a file that could not be filled is removed.

use std::fs::{File, OpenOptions};

use crate::output::{CmdResult, Fail, Progress};

pub enum Dest {
    Stdout,
    File(File, String),
}

impl Dest {
    /// `-` is stdout; a path is created, never overwritten: rbd opens it with O_EXCL too.
    pub fn create(path: &str) -> CmdResult<Dest> {
        match path {
            "-" => Ok(Dest::Stdout),
            path => match OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(f) => Ok(Dest::File(f, path.to_string())),
                Err(e) => Err(Fail::io(&e, format!("export error: error opening {path}"))),
            },
        }
    }

    /// Runs `write` under the progress line `pc`; a file it failed to fill is removed, so a
    /// failed export leaves nothing that looks like a whole one.
    pub fn fill(
        &self,
        mut pc: Progress,
        write: impl FnOnce(&Dest, &mut Progress) -> CmdResult,
    ) -> CmdResult {
        let r = write(self, &mut pc);
        if pc.end(r.as_ref().map(|_| ())).is_err() {
            if let Dest::File(_, path) = self {
                let _ = std::fs::remove_file(path);
            }
        }
        r
    }
}

pub fn out_fail(e: std::io::Error) -> Fail {
    Fail::io(&e, "export error: error writing the output")
}
