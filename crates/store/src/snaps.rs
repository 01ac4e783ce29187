//! RADOS snapshot and clone rules over a [`SnapSet`], shared by every backend so that they agree
//! on which version a snap reads, when a write must preserve a clone, how clone overlaps shrink
//! and which clones a removed snapshot frees. Pure functions, no I/O.
//!
//! The rules follow the OSD (`PrimaryLogPG::make_writeable`, `find_object_context`,
//! snap trimming): a clone is named by the snap context `seq` that made it and serves every
//! snap from its oldest listed snap up to its id.

use crate::{CloneInfo, Error, Result, SnapContext, SnapId, SnapSet};

/// Which stored version of an object a read at some snap sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Head,
    Clone(SnapId),
    Absent,
}

/// A snap context is usable if its snaps are strictly newest first and none is newer than
/// `seq` (RADOS `SnapContext::is_valid`).
pub fn validate_snapc(snapc: &SnapContext) -> Result<()> {
    let sorted = snapc.snaps.windows(2).all(|w| w[0] > w[1]);
    let bounded = snapc
        .snaps
        .first()
        .is_none_or(|&newest| newest <= snapc.seq);
    if sorted && bounded {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "snap context {snapc:?}: snaps must be newest first and <= seq"
        )))
    }
}

/// The version a read at `snap` sees.
pub fn version_at(ss: &SnapSet, snap: SnapId) -> Version {
    let head = if ss.head_size.is_some() {
        Version::Head
    } else {
        Version::Absent
    };
    if snap == crate::HEAD || snap > ss.seq {
        return head;
    }
    // The oldest clone made at or after `snap` holds the data `snap` saw, provided the object
    // already existed when that snap was taken (the clone's oldest snap is not newer).
    match ss.clones.iter().find(|c| c.id >= snap) {
        Some(c) if c.snaps.first().is_some_and(|&first| first <= snap) => Version::Clone(c.id),
        _ => Version::Absent,
    }
}

/// The clone a data-changing op must preserve before it applies, if any: the head exists and
/// the writer knows of snapshots newer than the last one this object saw. Snapshots already
/// removed are left out; if none is left no clone is needed.
pub fn needs_clone(
    ss: &SnapSet,
    snapc: &SnapContext,
    is_removed: impl Fn(SnapId) -> bool,
) -> Option<CloneInfo> {
    let size = ss.head_size?;
    let mut snaps: Vec<SnapId> = snapc
        .snaps
        .iter()
        .copied()
        .take_while(|&s| s > ss.seq)
        .filter(|&s| !is_removed(s))
        .collect();
    if snaps.is_empty() {
        return None;
    }
    snaps.reverse();
    let overlap = if size > 0 {
        vec![(0, size)]
    } else {
        Vec::new()
    };
    Some(CloneInfo {
        id: snapc.seq,
        snaps,
        size,
        overlap,
    })
}

/// Prepares the snapset for a data-changing op: records the clone (returned, so the caller
/// can preserve the head's data under it) and advances `seq`.
pub fn make_writeable(
    ss: &mut SnapSet,
    snapc: &SnapContext,
    is_removed: impl Fn(SnapId) -> bool,
) -> Option<CloneInfo> {
    let clone = needs_clone(ss, snapc, is_removed);
    if let Some(c) = &clone {
        ss.clones.push(c.clone());
    }
    ss.seq = ss.seq.max(snapc.seq);
    clone
}

/// Head bytes in `[offset, offset+len)` changed: the newest clone no longer equals head there.
/// `len == u64::MAX` means "to the end".
pub fn cut_overlap(ss: &mut SnapSet, offset: u64, len: u64) {
    if let Some(newest) = ss.clones.last_mut() {
        newest.overlap = subtract(&newest.overlap, offset, offset.saturating_add(len));
    }
}

/// Removes `snap` from every clone; returns the ids of clones no snap needs any more, which
/// are dropped from the snapset (their data can be freed). The next older clone's overlap is
/// narrowed to what it shares with the freed clone, since it is now compared with the
/// version after that.
pub fn remove_snap(ss: &mut SnapSet, snap: SnapId) -> Vec<SnapId> {
    let mut freed = Vec::new();
    let mut i = 0;
    while i < ss.clones.len() {
        ss.clones[i].snaps.retain(|&s| s != snap);
        if !ss.clones[i].snaps.is_empty() {
            i += 1;
            continue;
        }
        let gone = ss.clones.remove(i);
        if i > 0 {
            let older = &mut ss.clones[i - 1];
            older.overlap = intersect(&older.overlap, &gone.overlap);
        }
        freed.push(gone.id);
    }
    freed
}

/// `ranges` (sorted, disjoint `(offset, len)`) without `[start, end)`.
pub fn subtract(ranges: &[(u64, u64)], start: u64, end: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(ranges.len() + 1);
    for &(off, len) in ranges {
        let r_end = off + len;
        if r_end <= start || off >= end {
            out.push((off, len));
            continue;
        }
        if off < start {
            out.push((off, start - off));
        }
        if r_end > end {
            out.push((end, r_end - end));
        }
    }
    out
}

/// The intersection of two sorted, disjoint range lists.
pub fn intersect(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (a0, a1) = (a[i].0, a[i].0 + a[i].1);
        let (b0, b1) = (b[j].0, b[j].0 + b[j].1);
        let (lo, hi) = (a0.max(b0), a1.min(b1));
        if lo < hi {
            out.push((lo, hi - lo));
        }
        if a1 < b1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// Text form of a range list for storage: `off:len,off:len`.
pub fn encode_ranges(ranges: &[(u64, u64)]) -> String {
    ranges
        .iter()
        .map(|(o, l)| format!("{o}:{l}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn decode_ranges(text: &str) -> Result<Vec<(u64, u64)>> {
    let bad = || Error::Corrupt(format!("range list {text:?}"));
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|part| {
            let (o, l) = part.split_once(':').ok_or_else(bad)?;
            Ok((o.parse().map_err(|_| bad())?, l.parse().map_err(|_| bad())?))
        })
        .collect()
}

/// Text form of a snap id list: `1,2,3`.
pub fn encode_snaps(snaps: &[SnapId]) -> String {
    snaps
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

pub fn decode_snaps(text: &str) -> Result<Vec<SnapId>> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| Error::Corrupt(format!("snap list {text:?}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn snapc(seq: SnapId, snaps: &[SnapId]) -> SnapContext {
        SnapContext {
            seq,
            snaps: snaps.to_vec(),
        }
    }

    #[test]
    fn first_write_after_snap_clones_once() {
        let mut ss = SnapSet {
            seq: 0,
            clones: vec![],
            head_size: Some(100),
        };
        let c = make_writeable(&mut ss, &snapc(3, &[3, 1]), |_| false).expect("clone");
        assert_eq!(
            (c.id, c.snaps.clone(), c.size, c.overlap.clone()),
            (3, vec![1, 3], 100, vec![(0, 100)])
        );
        assert_eq!(ss.seq, 3);
        assert!(make_writeable(&mut ss, &snapc(3, &[3, 1]), |_| false).is_none());
        assert_eq!(ss.clones.len(), 1);
    }

    #[test]
    fn no_clone_without_head_or_with_removed_snaps() {
        let mut ss = SnapSet {
            seq: 0,
            clones: vec![],
            head_size: None,
        };
        assert!(make_writeable(&mut ss, &snapc(2, &[2]), |_| false).is_none());
        assert_eq!(ss.seq, 2);
        let ss = SnapSet {
            seq: 0,
            clones: vec![],
            head_size: Some(1),
        };
        assert!(needs_clone(&ss, &snapc(2, &[2, 1]), |s| s <= 2).is_none());
        assert_eq!(
            needs_clone(&ss, &snapc(2, &[2, 1]), |s| s == 1).map(|c| c.snaps),
            Some(vec![2])
        );
    }

    #[test]
    fn version_at_follows_rados() {
        let clone = |id, snaps: &[SnapId]| CloneInfo {
            id,
            snaps: snaps.to_vec(),
            size: 1,
            overlap: vec![],
        };
        let ss = SnapSet {
            seq: 5,
            clones: vec![clone(2, &[1, 2]), clone(5, &[4, 5])],
            head_size: Some(1),
        };
        assert_eq!(version_at(&ss, 1), Version::Clone(2));
        assert_eq!(version_at(&ss, 2), Version::Clone(2));
        // Snap 3 was not in any writer's context (another image's snap): the clone that
        // follows starts at 4, so this object has no version for 3.
        assert_eq!(version_at(&ss, 3), Version::Absent);
        assert_eq!(version_at(&ss, 5), Version::Clone(5));
        assert_eq!(version_at(&ss, 6), Version::Head);
        assert_eq!(version_at(&ss, crate::HEAD), Version::Head);
        let gone = SnapSet {
            head_size: None,
            ..ss
        };
        assert_eq!(version_at(&gone, 6), Version::Absent);
        assert_eq!(version_at(&gone, 4), Version::Clone(5));
    }

    #[test]
    fn remove_snap_frees_and_narrows_overlap() {
        let mut ss = SnapSet {
            seq: 3,
            clones: vec![
                CloneInfo {
                    id: 1,
                    snaps: vec![1],
                    size: 10,
                    overlap: vec![(0, 6)],
                },
                CloneInfo {
                    id: 2,
                    snaps: vec![2],
                    size: 10,
                    overlap: vec![(4, 6)],
                },
            ],
            head_size: Some(10),
        };
        assert_eq!(remove_snap(&mut ss, 2), vec![2]);
        assert_eq!(ss.clones.len(), 1);
        assert_eq!(ss.clones[0].overlap, vec![(4, 2)]);
        assert!(remove_snap(&mut ss, 7).is_empty());
    }

    #[test]
    fn ranges_round_trip() {
        let r = vec![(0, 5), (10, 3)];
        assert_eq!(decode_ranges(&encode_ranges(&r)).ok(), Some(r));
        assert_eq!(decode_ranges("").ok(), Some(vec![]));
        assert!(decode_ranges("1:x").is_err());
        assert_eq!(decode_snaps(&encode_snaps(&[1, 9])).ok(), Some(vec![1, 9]));
    }

    fn to_set(ranges: &[(u64, u64)]) -> std::collections::BTreeSet<u64> {
        ranges.iter().flat_map(|&(o, l)| o..o + l).collect()
    }

    fn range_list() -> impl Strategy<Value = Vec<(u64, u64)>> {
        proptest::collection::vec((0u64..8, 1u64..6), 0..5).prop_map(|gaps| {
            let mut at = 0;
            gaps.into_iter()
                .map(|(gap, len)| {
                    let r = (at + gap, len);
                    at += gap + len + 1;
                    r
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn subtract_matches_sets(r in range_list(), s in 0u64..60, l in 0u64..30) {
            let got = to_set(&subtract(&r, s, s + l));
            let want: std::collections::BTreeSet<u64> = to_set(&r).into_iter().filter(|x| *x < s || *x >= s + l).collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn intersect_matches_sets(a in range_list(), b in range_list()) {
            let got = to_set(&intersect(&a, &b));
            let want: std::collections::BTreeSet<u64> = to_set(&a).intersection(&to_set(&b)).copied().collect();
            prop_assert_eq!(got, want);
        }

        /// A model: each version is a byte vector; overlap of a clone must be exactly where it
        /// equals the next newer version, when writes always store fresh values.
        #[test]
        fn overlap_tracks_a_model(writes in proptest::collection::vec((0u64..4, 0u64..24, 1u64..8), 1..20)) {
            let mut ss = SnapSet { seq: 0, clones: vec![], head_size: Some(24) };
            let mut head: Vec<u32> = vec![0; 24];
            let mut clones: Vec<Vec<u32>> = Vec::new();
            let mut snaps: Vec<SnapId> = Vec::new();
            for (stamp, (snap_now, off, len)) in (1..).zip(writes) {
                if snap_now == 0 {
                    snaps.insert(0, snaps.first().map_or(1, |s| s + 1));
                }
                let sc = SnapContext { seq: snaps.first().copied().unwrap_or(0), snaps: snaps.clone() };
                if make_writeable(&mut ss, &sc, |_| false).is_some() {
                    clones.push(head.clone());
                }
                let end = (off + len).min(24);
                for b in &mut head[off as usize..end as usize] { *b = stamp; }
                cut_overlap(&mut ss, off, len);
            }
            for (i, c) in ss.clones.iter().enumerate() {
                let next = clones.get(i + 1).unwrap_or(&head);
                let equal: Vec<u64> = (0..24u64).filter(|&x| clones[i][x as usize] == next[x as usize]).collect();
                prop_assert_eq!(to_set(&c.overlap), equal.into_iter().collect());
            }
        }
    }
}
