//! Snapshot trimming: dropping a removed snapshot from an object's clones, and the clones
//! no snapshot needs any more.

use std::collections::HashSet;

use rusqlite::{params, TransactionBehavior};

use super::rows::{load_clones, snapset};
use super::{sql, uns, DirStore};
use crate::snaps;
use crate::{Locator, PoolId, Result, SnapId};

impl DirStore {
    pub(super) fn removed_snaps(&self, pool: PoolId, above: SnapId) -> Result<HashSet<SnapId>> {
        let db = self.db();
        let mut st =
            db.prepare_cached("SELECT snap FROM removed_snaps WHERE pool = ?1 AND snap > ?2")?;
        let rows = st.query_map(params![pool, sql(above)], |r| r.get::<_, i64>(0))?;
        Ok(rows.map(|r| r.map(uns)).collect::<Result<_, _>>()?)
    }

    /// Drops `snap` from one object's clones, freeing those no snap needs.
    pub(super) fn trim_object(
        &self,
        pool: PoolId,
        ns: &str,
        name: &str,
        snap: SnapId,
    ) -> Result<()> {
        let loc = Locator::new(pool, ns, name);
        let (_lock, row) = self.lock_and_load(&loc, true)?;
        let Some(row) = row else { return Ok(()) };
        let clones = load_clones(&self.db(), &loc, row.id)?;
        let mut ss = snapset(&row, &clones);
        let freed = snaps::remove_snap(&mut ss, snap);
        let mut db = self.db();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut freed_tokens = Vec::new();
        for id in &freed {
            tx.prepare_cached("DELETE FROM clones WHERE oid = ?1 AND clone_id = ?2")?
                .execute(params![row.id, sql(*id)])?;
            if let Some(t) = clones
                .iter()
                .find(|c| c.info.id == *id)
                .and_then(|c| c.token.clone())
            {
                freed_tokens.push(t);
            }
        }
        for c in &ss.clones {
            let (snaps, overlap) = (
                snaps::encode_snaps(&c.snaps),
                snaps::encode_ranges(&c.overlap),
            );
            let Some(stored) = clones.iter().find(|s| s.info.id == c.id) else {
                continue;
            };
            let crc = stored.cols(row.id, &snaps, &overlap).crc();
            tx.prepare_cached(
                "UPDATE clones SET snaps = ?3, overlap = ?4, crc = ?5 WHERE oid = ?1 AND clone_id = ?2",
            )?
            .execute(params![row.id, sql(c.id), snaps, overlap, crc])?;
        }
        if !row.exists && ss.clones.is_empty() {
            for table in [
                "DELETE FROM objects WHERE id = ?1",
                "DELETE FROM xattrs WHERE oid = ?1",
                "DELETE FROM omap WHERE oid = ?1",
            ] {
                tx.prepare_cached(table)?.execute([row.id])?;
            }
        }
        if self.checksums {
            for t in &freed_tokens {
                super::sums::drop_rows(&tx, t)?;
            }
        }
        tx.commit()?;
        drop(db);
        for t in freed_tokens {
            self.remove_data(&t);
        }
        Ok(())
    }
}
