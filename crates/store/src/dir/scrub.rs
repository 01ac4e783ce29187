//! Scrub: reading everything a pool keeps and checking it, as Ceph's deep scrub does: the
//! database's own structure (`PRAGMA integrity_check`), then for each object its head and
//! clones block by block against their sums, and its xattr and omap values against theirs.
//! Every read goes through the same checked paths as a client's, so what scrub passes, a
//! client reads; each damaged object is reported once per version and kind of damage.

use rusqlite::params;

use super::DirStore;
use crate::{Locator, ObjectStore, PoolId, Result, ScrubReport, SnapId, HEAD};

/// Bytes read at once while checking a version.
const PIECE: u64 = 1 << 20;

impl DirStore {
    pub(super) fn do_scrub(&self, pool: Option<PoolId>) -> Result<ScrubReport> {
        let mut report = ScrubReport {
            checksums: self.checksums,
            ..ScrubReport::default()
        };
        self.check_database(&mut report)?;
        let pools = match pool {
            Some(p) => vec![p],
            None => self.list_pools()?.into_iter().map(|(id, _)| id).collect(),
        };
        for p in pools {
            self.pool_name(p)?;
            for loc in self.all_objects(p)? {
                self.check_object(&loc, &mut report);
                report.objects += 1;
            }
        }
        Ok(report)
    }

    fn check_database(&self, report: &mut ScrubReport) -> Result<()> {
        let db = self.db();
        let mut st = db.prepare("PRAGMA integrity_check")?;
        let lines = st.query_map([], |r| r.get::<_, String>(0))?;
        for line in lines {
            let line = line?;
            if line != "ok" {
                report.damaged.push(format!("metadata database: {line}"));
            }
        }
        Ok(())
    }

    /// Objects with a head or clones (a removed head may still have clones to check).
    fn all_objects(&self, pool: PoolId) -> Result<Vec<Locator>> {
        let db = self.db();
        let mut st =
            db.prepare("SELECT ns, name FROM objects WHERE pool = ?1 ORDER BY ns, name")?;
        let rows = st.query_map(params![pool], |r| {
            Ok(Locator {
                pool,
                namespace: r.get(0)?,
                name: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn check_object(&self, loc: &Locator, report: &mut ScrubReport) {
        let mut fail = |what: String| report.damaged.push(what);
        let versions: Vec<(String, SnapId)> = match self.list_snaps(loc) {
            Ok(ss) => {
                let clones = ss.clones.iter().filter_map(|c| {
                    let snap = *c.snaps.first()?;
                    Some((format!("{loc}@{snap}"), snap))
                });
                let head = ss.head_size.map(|_| (loc.to_string(), HEAD));
                clones.chain(head).collect()
            }
            Err(e) => return fail(format!("{loc}: {}", crate::report(&e))),
        };
        for (name, snap) in versions {
            match self.check_version(loc, snap) {
                Ok(n) => report.bytes += n,
                Err(e) => fail(format!("{name}: {}", crate::report(&e))),
            }
        }
        if self.stat(loc, HEAD).is_ok() {
            if let Err(e) = self.get_xattrs(loc) {
                fail(format!("{loc}: {}", crate::report(&e)));
            }
            if let Err(e) = self.omap_get(loc, "", "", usize::MAX) {
                fail(format!("{loc}: {}", crate::report(&e)));
            }
        }
    }

    /// Reads one version whole (holes too: a block the sums say holds data must not read
    /// as a hole) through the checked read path; returns the bytes read.
    fn check_version(&self, loc: &Locator, snap: SnapId) -> Result<u64> {
        let size = self.stat(loc, snap)?.size;
        let mut at = 0;
        while at < size {
            let n = (size - at).min(PIECE);
            self.read(loc, snap, at, n)?;
            at += n;
        }
        Ok(size)
    }
}
