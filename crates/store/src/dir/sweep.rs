//! Sweeping orphaned data files: those a crashed or killed writer left unreferenced.

use std::collections::HashSet;
use std::fs;

use super::{io_err, uns, DirStore};
use crate::Result;

impl DirStore {
    /// Deletes data files nobody references whose writer is gone: a crashed process's new
    /// files, or old files it had not deleted yet. A writer that was registered when the
    /// snapshot below was taken may still be working, and one registered later has a larger
    /// id (ids only grow), so only files of writers that were gone by then are touched; and
    /// nothing makes a file referenced again once its writer is gone.
    pub(super) fn sweep_orphans(&self) -> Result<()> {
        let (referenced, live, max_id) = {
            let mut db = self.db();
            let tx = db.transaction()?;
            let referenced: HashSet<String> = tx
                .prepare(
                    "SELECT token FROM objects WHERE token IS NOT NULL UNION SELECT token FROM clones
                     WHERE token IS NOT NULL UNION SELECT token FROM journal",
                )?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let live: HashSet<u64> = tx
                .prepare("SELECT id FROM clients")?
                .query_map([], |r| r.get::<_, i64>(0))?
                .map(|r| r.map(uns))
                .collect::<Result<_, _>>()?;
            let max_id: i64 = tx.query_row(
                "SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name = 'clients'",
                [],
                |r| r.get(0),
            )?;
            tx.commit()?;
            (referenced, live, uns(max_id))
        };
        for sub in fs::read_dir(self.root.join("data")).map_err(io_err("read data dir"))? {
            let Ok(sub) = sub else { continue };
            let Ok(entries) = fs::read_dir(sub.path()) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let writer = name
                    .rsplit_once('-')
                    .and_then(|(_, c)| u64::from_str_radix(c, 16).ok());
                let gone = writer.is_some_and(|w| w <= max_id && !live.contains(&w));
                if gone && !referenced.contains(&name) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(())
    }
}
