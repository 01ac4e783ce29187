//! Who has the store open, and whether they still live: a client is a process on this host
//! whose `/proc/<pid>/stat` start time still matches the one it registered (so a reused pid
//! is not mistaken for it). A client on another host cannot be checked and counts as alive.
//!
//! A handle registers its client row only when it first needs one: to take a lock, to watch,
//! or to create a data file (whose name carries the client id, so that a sweep knows whose
//! it was). Until then it has written nothing, so a store on a full disk can still be read
//! (`ls`, `info`, `export`). Reaping dead clients, and sweeping the files they left, happens
//! at registration: only a writer can have left anything to sweep for the next writer.

use std::sync::{Mutex, OnceLock};

use rusqlite::{params, Connection, TransactionBehavior};

use super::{sql, uns};
use crate::host::{hostname, now_secs};
use crate::{ClientInfo, Result};

/// A handle's client row, registered once, on first need.
pub struct Registration {
    info: OnceLock<ClientInfo>,
    /// Serialises first registrations of threads sharing the handle.
    registering: Mutex<()>,
}

impl Registration {
    pub fn new() -> Self {
        Registration {
            info: OnceLock::new(),
            registering: Mutex::new(()),
        }
    }

    pub fn registered(&self) -> Option<&ClientInfo> {
        self.info.get()
    }

    /// 0 before registering: ids start at 1, so it matches no lock or watch.
    pub fn id(&self) -> u64 {
        self.info.get().map_or(0, |c| c.id)
    }

    /// Who we are without a row (nothing can be held under id 0).
    pub fn unregistered(&self) -> ClientInfo {
        let me = Me::current();
        ClientInfo {
            id: 0,
            host: me.host,
            pid: me.pid,
            since: now_secs(),
        }
    }

    /// Our row, inserting it (and reaping dead clients) the first time; also says whether
    /// this call reaped any, so that the caller sweeps their files.
    pub fn get_or_register(&self, conn: &mut Connection) -> Result<(&ClientInfo, bool)> {
        if let Some(info) = self.info.get() {
            return Ok((info, false));
        }
        let _one = self.registering.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(info) = self.info.get() {
            return Ok((info, false));
        }
        let me = Me::current();
        let since = now_secs();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let id: i64 = tx.query_row(
            "INSERT INTO clients(host, pid, starttime, since) VALUES (?1, ?2, ?3, ?4) RETURNING id",
            params![me.host, me.pid, sql(me.starttime), sql(since)],
            |r| r.get(0),
        )?;
        let dead = reap_dead(&tx, &me)?;
        tx.commit()?;
        let info = ClientInfo {
            id: uns(id),
            host: me.host,
            pid: me.pid,
            since,
        };
        Ok((self.info.get_or_init(|| info), !dead.is_empty()))
    }
}

pub struct Me {
    pub host: String,
    pub pid: u32,
    pub starttime: u64,
}

impl Me {
    pub fn current() -> Me {
        let pid = std::process::id();
        Me {
            host: hostname(),
            pid,
            starttime: proc_starttime(pid).unwrap_or(0),
        }
    }
}

/// Field 22 of `/proc/<pid>/stat` (start time in clock ticks since boot). The command name
/// (field 2) may hold spaces and parentheses, so fields are counted after the last `)`.
pub fn proc_starttime(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether a registered client still runs; `starttime` is `None` when its row is gone.
pub fn is_alive(client: &ClientInfo, starttime: Option<u64>) -> bool {
    match starttime {
        None => false,
        Some(_) if client.host != hostname() => true,
        Some(start) => proc_starttime(client.pid) == Some(start),
    }
}

/// Deletes the rows, locks and watches of clients on this host whose process is gone;
/// returns their ids.
pub fn reap_dead(conn: &Connection, me: &Me) -> Result<Vec<u64>> {
    let all: Vec<(i64, u32, i64)> = conn
        .prepare("SELECT id, pid, starttime FROM clients WHERE host = ?1")?
        .query_map([&me.host], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let mut dead = Vec::new();
    for (id, pid, start) in all {
        if proc_starttime(pid) != Some(uns(start)) {
            for q in [
                "DELETE FROM locks WHERE client = ?1",
                "DELETE FROM watchers WHERE client = ?1",
                "DELETE FROM clients WHERE id = ?1",
            ] {
                conn.execute(q, params![id])?;
            }
            dead.push(uns(id));
        }
    }
    Ok(dead)
}
