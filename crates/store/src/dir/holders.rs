//! Advisory locks and watchers: rows naming a client, counted only while that client lives
//! (see `clients`).

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::rows::pool_exists;
use super::{clients, sql, uns, DirStore, UNRECORDED_WATCH};
use crate::admit::{admit_lock, Holder};
use crate::{ClientInfo, Error, Locator, LockInfo, Result, Watcher};

impl DirStore {
    pub(super) fn do_lock(
        &self,
        loc: &Locator,
        name: &str,
        cookie: &str,
        description: &str,
        exclusive: bool,
    ) -> Result<()> {
        let me = self.me()?.id;
        let mut db = self.db();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if !pool_exists(&tx, loc.pool)? {
            return Err(Error::NoPool(loc.pool.to_string()));
        }
        let holders = lockers(&tx, loc, name)?;
        let mut live = Vec::new();
        for (info, starttime) in holders {
            if self.alive(&info.client, starttime) {
                live.push(info);
            } else {
                tx.prepare_cached(
                    "DELETE FROM locks WHERE pool = ?1 AND ns = ?2 AND name = ?3 AND lock_name = ?4 AND client = ?5",
                )?
                .execute(params![loc.pool, loc.namespace, loc.name, name, sql(info.client.id)])?;
            }
        }
        let held = live.iter().map(|h| Holder {
            client: h.client.id,
            cookie: &h.cookie,
            exclusive: h.exclusive,
        });
        admit_lock(loc, name, me, cookie, exclusive, held)?;
        tx.prepare_cached(
            "INSERT INTO locks(pool, ns, name, lock_name, client, cookie, description, exclusive)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            loc.pool,
            loc.namespace,
            loc.name,
            name,
            sql(me),
            cookie,
            description,
            exclusive
        ])?;
        tx.commit()?;
        Ok(())
    }

    pub(super) fn do_break_lock(
        &self,
        loc: &Locator,
        name: &str,
        client_id: u64,
        cookie: &str,
    ) -> Result<()> {
        self.writable()?;
        let db = self.db();
        let n = db
            .prepare_cached(
                "DELETE FROM locks WHERE pool = ?1 AND ns = ?2 AND name = ?3 AND lock_name = ?4 AND client = ?5 AND cookie = ?6",
            )?
            .execute(params![loc.pool, loc.namespace, loc.name, name, sql(client_id), cookie])?;
        if n == 0 {
            return Err(Error::no_locker(loc, name, client_id, cookie));
        }
        Ok(())
    }

    pub(super) fn do_list_lockers(&self, loc: &Locator, name: &str) -> Result<Vec<LockInfo>> {
        let db = self.db();
        if !pool_exists(&db, loc.pool)? {
            return Err(Error::NoPool(loc.pool.to_string()));
        }
        let holders = lockers(&db, loc, name)?;
        Ok(holders
            .into_iter()
            .filter(|(h, start)| self.alive(&h.client, *start))
            .map(|(h, _)| h)
            .collect())
    }

    /// On a disk too full to write the watch down, a reader still opens the object: it
    /// gets cookie 0 (`UNRECORDED_WATCH`), a watch nobody else can see. Writers cannot run
    /// on that disk anyway, which is what watches mostly hold off.
    pub(super) fn do_watch(&self, loc: &Locator) -> Result<u64> {
        match self.record_watch(loc) {
            Err(e) if e.errno() == libc::ENOSPC => {
                self.with_head(loc, |_, _| Ok(()))?;
                Ok(UNRECORDED_WATCH)
            }
            r => r,
        }
    }

    pub(super) fn do_unwatch(&self, loc: &Locator, cookie: u64) -> Result<()> {
        if cookie == UNRECORDED_WATCH {
            return Ok(());
        }
        self.writable()?;
        let db = self.db();
        let n = db
            .prepare_cached(
                "DELETE FROM watchers WHERE cookie = ?1 AND pool = ?2 AND ns = ?3 AND name = ?4",
            )?
            .execute(params![sql(cookie), loc.pool, loc.namespace, loc.name])?;
        if n == 0 {
            return Err(Error::no_watch(loc, cookie));
        }
        Ok(())
    }

    pub(super) fn do_list_watchers(&self, loc: &Locator) -> Result<Vec<Watcher>> {
        self.with_head(loc, |db, _| {
            let mut st = db.prepare_cached(
                "SELECT w.cookie, c.id, c.host, c.pid, c.since, c.starttime FROM watchers w JOIN clients c ON c.id = w.client
                 WHERE w.pool = ?1 AND w.ns = ?2 AND w.name = ?3 ORDER BY w.cookie",
            )?;
            let rows = st.query_map(params![loc.pool, loc.namespace, loc.name], |r| {
                let client = ClientInfo { id: uns(r.get(1)?), host: r.get(2)?, pid: r.get(3)?, since: uns(r.get(4)?) };
                Ok((Watcher { client, cookie: uns(r.get(0)?) }, Some(uns(r.get(5)?))))
            })?;
            let all: Vec<(Watcher, Option<u64>)> = rows.collect::<Result<_, _>>()?;
            Ok(all.into_iter().filter(|(w, start)| self.alive(&w.client, *start)).map(|(w, _)| w).collect())
        })
    }

    pub(super) fn record_watch(&self, loc: &Locator) -> Result<u64> {
        let me = self.me()?.id;
        let mut db = self.db();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists = tx
            .prepare_cached(
                "SELECT 1 FROM objects WHERE pool = ?1 AND ns = ?2 AND name = ?3 AND head = 1",
            )?
            .query_row(params![loc.pool, loc.namespace, loc.name], |_| Ok(()))
            .optional()?;
        if exists.is_none() {
            return Err(Error::no_object(loc, crate::HEAD));
        }
        let cookie: i64 = tx
            .prepare_cached("INSERT INTO watchers(pool, ns, name, client) VALUES (?1, ?2, ?3, ?4) RETURNING cookie")?
            .query_row(params![loc.pool, loc.namespace, loc.name, sql(me)], |r| r.get(0))?;
        tx.commit()?;
        Ok(uns(cookie))
    }

    pub(super) fn alive(&self, client: &ClientInfo, starttime: Option<u64>) -> bool {
        client.id == self.my_id() || clients::is_alive(client, starttime)
    }
}

/// Holders of a lock with their start time (for the liveness check).
pub(super) fn lockers(
    conn: &Connection,
    loc: &Locator,
    name: &str,
) -> Result<Vec<(LockInfo, Option<u64>)>> {
    let mut st = conn.prepare_cached(
        "SELECT l.cookie, l.description, l.exclusive, l.client, c.host, c.pid, c.since, c.starttime
         FROM locks l LEFT JOIN clients c ON c.id = l.client
         WHERE l.pool = ?1 AND l.ns = ?2 AND l.name = ?3 AND l.lock_name = ?4 ORDER BY l.client, l.cookie",
    )?;
    let rows = st.query_map(params![loc.pool, loc.namespace, loc.name, name], |r| {
        // A holder whose client row is gone is dead (no start time).
        let client = ClientInfo {
            id: uns(r.get(3)?),
            host: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
            pid: r.get::<_, Option<u32>>(5)?.unwrap_or(0),
            since: r.get::<_, Option<i64>>(6)?.map_or(0, uns),
        };
        let info = LockInfo {
            name: name.to_string(),
            client,
            cookie: r.get(0)?,
            description: r.get(1)?,
            exclusive: r.get(2)?,
        };
        Ok((info, r.get::<_, Option<i64>>(7)?.map(uns)))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
