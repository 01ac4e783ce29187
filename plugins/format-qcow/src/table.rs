//! L1/L2 lookups: turn a guest range into runs of one kind (unallocated, zero, data at a host
//! offset, compressed cluster), reading only metadata. L2 tables go through a bounded LRU cache
//! keyed by host offset, so snapshots that share an L2 table share the cached copy too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rbdm_registry::Stream;

use crate::error::{corrupt, Result};
use crate::header::{read_bytes, Geometry, L1Location};

/// Bits 9..55 of an L1 entry or a standard L2 descriptor: the host offset.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const COMPRESSED_V2: u64 = 1 << 62;
const COMPRESSED_V1: u64 = 1 << 63;
const ZERO_FLAG: u64 = 1;

/// L2 cache bounds: whichever is hit first.
const L2_CACHE_BYTES: u64 = 32 << 20;
const L2_CACHE_TABLES: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Not allocated in this image: the backing file, or zeros.
    Unalloc,
    Zero,
    /// Host offset of the run's first byte.
    Data {
        host: u64,
    },
    /// A whole compressed cluster: `size` bytes of compressed data at `host`.
    Compressed {
        host: u64,
        size: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Run {
    pub offset: u64,
    pub len: u64,
    pub kind: Kind,
}

impl Run {
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// Appends a run, merging it into the previous one when both are of the same kind and, for
/// data, physically contiguous: that merge is what turns clusters into one stream read.
pub(crate) fn push_run(runs: &mut Vec<Run>, run: Run) {
    if run.len == 0 {
        return;
    }
    if let Some(last) = runs.last_mut() {
        if last.end() == run.offset {
            let merge = match (last.kind, run.kind) {
                (Kind::Unalloc, Kind::Unalloc) | (Kind::Zero, Kind::Zero) => true,
                (Kind::Data { host: a }, Kind::Data { host: b }) => {
                    a.checked_add(last.len) == Some(b)
                }
                _ => false,
            };
            if merge {
                last.len += run.len;
                return;
            }
        }
    }
    runs.push(run);
}

struct L2Cache {
    tables: HashMap<u64, (Arc<[u64]>, u64)>,
    tick: u64,
    bytes: u64,
}

impl L2Cache {
    fn get(&mut self, host: u64) -> Option<Arc<[u64]>> {
        self.tick += 1;
        let tick = self.tick;
        self.tables.get_mut(&host).map(|(t, used)| {
            *used = tick;
            t.clone()
        })
    }

    fn insert(&mut self, host: u64, table: Arc<[u64]>) {
        let size = table.len() as u64 * 8;
        while !self.tables.is_empty()
            && (self.bytes + size > L2_CACHE_BYTES || self.tables.len() >= L2_CACHE_TABLES)
        {
            let oldest = self
                .tables
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k);
            if let Some((t, _)) = oldest.and_then(|k| self.tables.remove(&k)) {
                self.bytes -= t.len() as u64 * 8;
            }
        }
        self.tick += 1;
        if self.tables.insert(host, (table, self.tick)).is_none() {
            self.bytes += size;
        }
    }
}

/// The lookup tables of one image file: L1 tables per point (loaded on first use) and the
/// shared L2 cache.
pub(crate) struct Tables {
    pub geometry: Geometry,
    /// Distinct L1 tables: points whose tables are at the same place share one copy, so a
    /// forged snapshot table repeating one big L1 costs its memory once.
    l1_locations: Vec<L1Location>,
    l1_tables: Vec<std::sync::OnceLock<Arc<[u64]>>>,
    /// For each point (snapshots, then the head), its index into `l1_locations`.
    point_l1: Vec<usize>,
    l2_cache: Mutex<L2Cache>,
}

impl Tables {
    /// `points[i]` is the L1 table of point `i` (snapshots, then the head).
    pub fn new(geometry: Geometry, points: &[L1Location]) -> Self {
        let mut l1_locations: Vec<L1Location> = Vec::new();
        let mut index: HashMap<(u64, u32), usize> = HashMap::new();
        let point_l1 = points
            .iter()
            .map(|l| {
                *index.entry((l.offset, l.entries)).or_insert_with(|| {
                    l1_locations.push(*l);
                    l1_locations.len() - 1
                })
            })
            .collect();
        let l1_tables = l1_locations
            .iter()
            .map(|_| std::sync::OnceLock::new())
            .collect();
        Tables {
            geometry,
            l1_locations,
            l1_tables,
            point_l1,
            l2_cache: Mutex::new(L2Cache {
                tables: HashMap::new(),
                tick: 0,
                bytes: 0,
            }),
        }
    }

    /// Bytes all distinct L1 tables take once loaded.
    pub fn l1_bytes(&self) -> u64 {
        self.l1_locations.iter().map(|l| l.bytes()).sum()
    }

    fn l1(&self, stream: &dyn Stream, point: usize) -> Result<Arc<[u64]>> {
        let i = self.point_l1.get(point).copied().unwrap_or(usize::MAX);
        let (Some(cell), Some(loc)) = (self.l1_tables.get(i), self.l1_locations.get(i)) else {
            return corrupt(format!("no L1 table for point {point}"));
        };
        if let Some(t) = cell.get() {
            return Ok(t.clone());
        }
        let raw = read_bytes(stream, loc.offset, loc.bytes(), "L1 table")?;
        let table: Arc<[u64]> = raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        // Another thread may have won the race; either copy is the same table.
        let _ = cell.set(table.clone());
        Ok(table)
    }

    fn l2(&self, stream: &dyn Stream, host: u64, guest: u64) -> Result<Arc<[u64]>> {
        if let Some(t) = self.lock_cache().get(host) {
            return Ok(t);
        }
        let g = &self.geometry;
        if g.version >= 2 && host & (g.cluster_size() - 1) != 0 {
            return corrupt(format!(
                "L2 table offset {host:#x} for guest offset {guest} is not cluster aligned"
            ));
        }
        let what = format!("L2 table for guest offset {guest}");
        let raw = read_bytes(stream, host, g.l2_table_bytes(), &what)?;
        let table: Arc<[u64]> = raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        self.lock_cache().insert(host, table.clone());
        Ok(table)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, L2Cache> {
        // A panic elsewhere while holding the lock leaves the cache consistent (insert and get
        // do not panic midway), so a poisoned lock is safe to keep using.
        self.l2_cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs covering exactly `[offset, offset+len)` at `point`. Cost: one L1 lookup per L1
    /// entry span, one (cached) L2 table per allocated span, nothing per unallocated span.
    pub fn map(
        &self,
        stream: &dyn Stream,
        point: usize,
        offset: u64,
        len: u64,
    ) -> Result<Vec<Run>> {
        let l1 = self.l1(stream, point)?;
        let g = &self.geometry;
        let mut runs = Vec::new();
        let end = offset.saturating_add(len);
        let mut pos = offset;
        while pos < end {
            let l1_index = pos >> g.l1_shift();
            if l1_index >= l1.len() as u64 {
                // Past the table (a snapshot's smaller L1): unallocated to the end, in one step.
                push_run(
                    &mut runs,
                    Run {
                        offset: pos,
                        len: end - pos,
                        kind: Kind::Unalloc,
                    },
                );
                break;
            }
            let span_end = ((l1_index + 1) << g.l1_shift()).min(end);
            let entry = usize::try_from(l1_index)
                .ok()
                .and_then(|i| l1.get(i))
                .copied()
                .unwrap_or(0);
            let l2_host = if g.version == 1 {
                entry
            } else {
                entry & OFFSET_MASK
            };
            if l2_host == 0 {
                push_run(
                    &mut runs,
                    Run {
                        offset: pos,
                        len: span_end - pos,
                        kind: Kind::Unalloc,
                    },
                );
            } else {
                let l2 = self.l2(stream, l2_host, pos)?;
                self.map_l2(&l2, pos, span_end, &mut runs)?;
            }
            pos = span_end;
        }
        Ok(runs)
    }

    fn map_l2(&self, l2: &[u64], mut pos: u64, end: u64, runs: &mut Vec<Run>) -> Result<()> {
        let g = &self.geometry;
        let cs = g.cluster_size();
        while pos < end {
            let cluster_start = pos & !(cs - 1);
            let cluster_end = (cluster_start + cs).min(end);
            let index = ((pos >> g.cluster_bits) & ((1 << g.l2_bits) - 1)) as usize * g.l2_words();
            let entry = l2.get(index).copied().unwrap_or(0);
            if g.extended_l2 {
                let bitmap = l2.get(index + 1).copied().unwrap_or(0);
                self.map_extended(entry, bitmap, cluster_start, pos, cluster_end, runs)?;
            } else {
                let kind = self.decode(entry, cluster_start)?;
                let kind = match kind {
                    Kind::Data { host } => Kind::Data {
                        host: host + (pos - cluster_start),
                    },
                    k => k,
                };
                push_run(
                    runs,
                    Run {
                        offset: pos,
                        len: cluster_end - pos,
                        kind,
                    },
                );
            }
            pos = cluster_end;
        }
        Ok(())
    }

    /// The kind of a whole cluster from its (first) L2 word; `Data` is at the cluster start.
    fn decode(&self, entry: u64, guest: u64) -> Result<Kind> {
        let g = &self.geometry;
        if g.version == 1 {
            return Ok(self.decode_v1(entry));
        }
        if entry & COMPRESSED_V2 != 0 {
            return Ok(self.decode_compressed(entry));
        }
        if !g.extended_l2 && entry & ZERO_FLAG != 0 {
            // Zero flag wins even over a still-allocated host cluster (stale data there).
            return Ok(Kind::Zero);
        }
        let host = entry & OFFSET_MASK;
        if host == 0 {
            return Ok(Kind::Unalloc);
        }
        if host & (g.cluster_size() - 1) != 0 {
            return corrupt(format!(
                "data cluster for guest offset {guest} has unaligned host offset {host:#x} (L2 entry {entry:#018x})"
            ));
        }
        Ok(Kind::Data { host })
    }

    fn decode_v1(&self, entry: u64) -> Kind {
        let cb = self.geometry.cluster_bits;
        if entry == 0 {
            Kind::Unalloc
        } else if entry & COMPRESSED_V1 != 0 {
            let shift = 63 - cb;
            Kind::Compressed {
                host: entry & ((1u64 << shift) - 1),
                size: (entry >> shift) & ((1u64 << cb) - 1),
            }
        } else {
            Kind::Data { host: entry }
        }
    }

    fn decode_compressed(&self, entry: u64) -> Kind {
        let cb = self.geometry.cluster_bits;
        let shift = 62 - (cb - 8);
        let host = entry & ((1u64 << shift) - 1);
        let sectors = ((entry >> shift) & ((1u64 << (cb - 8)) - 1)) + 1;
        // The count is of 512-byte sectors from the one holding `host`.
        let size = sectors * 512 - (host & 511);
        Kind::Compressed { host, size }
    }

    fn map_extended(
        &self,
        entry: u64,
        bitmap: u64,
        cluster_start: u64,
        mut pos: u64,
        end: u64,
        runs: &mut Vec<Run>,
    ) -> Result<()> {
        let kind = self.decode(entry, cluster_start)?;
        if let Kind::Compressed { .. } = kind {
            push_run(
                runs,
                Run {
                    offset: pos,
                    len: end - pos,
                    kind,
                },
            );
            return Ok(());
        }
        let host = match kind {
            Kind::Data { host } => host,
            _ => 0,
        };
        let sub_bits = self.geometry.cluster_bits - 5;
        while pos < end {
            let sub = (pos - cluster_start) >> sub_bits;
            let sub_end = (cluster_start + ((sub + 1) << sub_bits)).min(end);
            let allocated = bitmap & (1 << sub) != 0;
            let zero = bitmap & (1 << (sub + 32)) != 0;
            let kind = match (allocated, zero) {
                (true, true) => {
                    return corrupt(format!(
                        "subcluster {sub} of guest cluster {cluster_start} is marked both allocated and zero (bitmap {bitmap:#018x})"
                    ))
                }
                (true, false) if host == 0 => {
                    return corrupt(format!(
                        "subcluster {sub} of guest cluster {cluster_start} is allocated but the cluster has no host offset"
                    ))
                }
                (true, false) => Kind::Data { host: host + (pos - cluster_start) },
                (false, true) => Kind::Zero,
                (false, false) => Kind::Unalloc,
            };
            push_run(
                runs,
                Run {
                    offset: pos,
                    len: sub_end - pos,
                    kind,
                },
            );
            pos = sub_end;
        }
        Ok(())
    }
}

/// Whether `a` at guest offset `at` maps the same bytes as `b` at the same offset: same kind,
/// and for data the same host byte. With qcow2's copy-on-write, the same host cluster means
/// the same content.
pub(crate) fn same_mapping(a: &Run, b: &Run, at: u64) -> bool {
    match (a.kind, b.kind) {
        (Kind::Unalloc, Kind::Unalloc) | (Kind::Zero, Kind::Zero) => true,
        (Kind::Data { host: ha }, Kind::Data { host: hb }) => {
            ha.wrapping_add(at - a.offset) == hb.wrapping_add(at - b.offset)
        }
        (Kind::Compressed { host: ha, size: sa }, Kind::Compressed { host: hb, size: sb }) => {
            ha == hb && sa == sb
        }
        _ => false,
    }
}
