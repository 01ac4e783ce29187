//! Who has the store open, and whether they still live: a client is a process on this host
//! whose `/proc/<pid>/stat` start time still matches the one it registered (so a reused pid
//! is not mistaken for it). A client on another host cannot be checked and counts as alive.

use std::sync::OnceLock;

use rusqlite::{params, Connection};

use super::uns;
use crate::{ClientInfo, Result};

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

/// This machine's name (a client on another host cannot be checked).
pub(crate) fn hostname() -> String {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for its length; we stop at the first NUL or its end.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if rc != 0 {
            return String::from("localhost");
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    })
    .clone()
}

pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
