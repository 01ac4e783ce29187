//! The chunks the zero/unchanged scan just read, kept briefly: the copy engine asks
//! `list_snaps` and then reads the data ranges it reported, so without this every data byte of
//! a raw source over http or s3 would cross the network twice.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Bytes kept at most: the default eight copies in flight, each a 4 MiB object.
pub const BUDGET: usize = 32 << 20;

struct Entry {
    point: usize,
    offset: u64,
    data: Arc<[u8]>,
}

/// Oldest first; evicted first in, first out.
#[derive(Default)]
pub struct ChunkCache {
    entries: Mutex<(VecDeque<Entry>, usize)>,
}

impl ChunkCache {
    pub fn keep(&self, point: usize, offset: u64, data: &[u8]) {
        if data.is_empty() || data.len() > BUDGET {
            return;
        }
        let mut g = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (entries, bytes) = &mut *g;
        while *bytes + data.len() > BUDGET {
            match entries.pop_front() {
                Some(old) => *bytes -= old.data.len(),
                None => break,
            }
        }
        *bytes += data.len();
        entries.push_back(Entry {
            point,
            offset,
            data: data.into(),
        });
    }

    /// Fills `buf` from `offset` of `point` if kept chunks cover all of it.
    pub fn fill(&self, point: usize, offset: u64, buf: &mut [u8]) -> bool {
        let g = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut pos = 0usize;
        while pos < buf.len() {
            let at = offset + pos as u64;
            let Some(e) = g.0.iter().rev().find(|e| {
                e.point == point && e.offset <= at && at < e.offset + e.data.len() as u64
            }) else {
                return false;
            };
            let from = (at - e.offset) as usize;
            let n = (e.data.len() - from).min(buf.len() - pos);
            buf[pos..pos + n].copy_from_slice(&e.data[from..from + n]);
            pos += n;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_across_chunks_and_misses_gaps_and_other_points() {
        let c = ChunkCache::default();
        c.keep(0, 0, &[1; 100]);
        c.keep(0, 100, &[2; 100]);
        c.keep(1, 300, &[3; 10]);
        let mut buf = [0u8; 50];
        assert!(c.fill(0, 75, &mut buf));
        assert_eq!(&buf[..25], &[1; 25]);
        assert_eq!(&buf[25..], &[2; 25]);
        assert!(!c.fill(0, 180, &mut buf), "runs past what is kept");
        assert!(!c.fill(0, 300, &mut buf[..10]), "another point's chunk");
        assert!(c.fill(1, 300, &mut buf[..10]));
    }

    #[test]
    fn stays_within_its_budget() {
        let c = ChunkCache::default();
        let chunk = vec![7u8; 1 << 20];
        for i in 0..100u64 {
            c.keep(0, i << 20, &chunk);
        }
        let g = c.entries.lock().unwrap();
        assert!(g.1 <= BUDGET && g.0.len() == BUDGET >> 20);
        drop(g);
        let mut buf = vec![0u8; 4096];
        assert!(!c.fill(0, 0, &mut buf), "the oldest were evicted");
        assert!(c.fill(0, 99 << 20, &mut buf));
    }
}
