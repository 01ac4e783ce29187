//! Property tests: striping maps are bijections, the interval set matches a bitmap model,
//! the object map round-trips and detects corruption.
use proptest::prelude::*;
use rbdm_extent::{IntervalSet, Layout, ObjectMap, ObjectState};

fn layouts() -> impl Strategy<Value = Layout> {
    (12u32..=25, 0u32..=13, 1u64..=8).prop_map(|(order, su_shift, count)| {
        let os = 1u64 << order;
        let su = (os >> su_shift.min(order - 9)).max(512);
        Layout::new(os, su, count).expect("valid by construction")
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn offset_round_trip(l in layouts(), off in 0u64..(1 << 40)) {
        let (obj, in_obj) = l.map_offset(off);
        prop_assert!(in_obj < l.object_size);
        prop_assert_eq!(l.image_offset(obj, in_obj), off);
    }

    #[test]
    fn extent_round_trip(l in layouts(), off in 0u64..(1 << 32), len in 0u64..(1 << 22)) {
        let pieces = l.map_extent(off, len);
        let mut covered = 0;
        for p in &pieces {
            prop_assert_eq!(p.buf_offset, covered, "pieces are in image order");
            prop_assert!(p.offset + p.len <= l.object_size);
            let back = l.object_image_extents(p.object_no, p.offset, p.len);
            let mut pos = off + p.buf_offset;
            for (img, n) in back {
                prop_assert_eq!(img, pos);
                pos += n;
            }
            prop_assert_eq!(pos, off + p.buf_offset + p.len);
            covered += p.len;
        }
        prop_assert_eq!(covered, len);
    }

    #[test]
    fn object_count_covers_size(l in layouts(), size in 0u64..(1 << 30)) {
        let count = l.object_count(size);
        if size > 0 {
            prop_assert!(l.map_offset(size - 1).0 < count);
            // every counted object holds at least one byte of the image
            for obj in [0, count - 1] {
                prop_assert!(!l.object_extents_in_image(obj, size).is_empty(), "object {} of {}", obj, count);
            }
        } else {
            prop_assert_eq!(count, 0);
        }
    }

    #[test]
    fn interval_set_matches_bitmap(ops in prop::collection::vec((any::<bool>(), 0u64..256, 0u64..64), 0..40),
                                   q in (0u64..256, 0u64..64)) {
        let mut set = IntervalSet::new();
        let mut model = [false; 320];
        for (add, off, len) in ops {
            if add { set.insert(off, len) } else { set.remove(off, len) }
            for b in &mut model[off as usize..(off + len) as usize] { *b = add; }
        }
        let from_set: Vec<bool> = (0..320).map(|i| set.contains(i, 1)).collect();
        prop_assert_eq!(&from_set[..], &model[..]);
        let ranges: Vec<_> = set.iter().collect();
        for w in ranges.windows(2) { prop_assert!(w[0].0 + w[0].1 < w[1].0, "merged and sorted"); }
        let (qo, ql) = q;
        let inside: u64 = set.intersection(qo, ql).iter().map(|r| r.1).sum();
        let outside: u64 = set.gaps(qo, ql).iter().map(|r| r.1).sum();
        prop_assert_eq!(inside + outside, ql);
        prop_assert_eq!(inside, model[qo as usize..(qo + ql) as usize].iter().filter(|b| **b).count() as u64);
        prop_assert_eq!(set.contains(qo, ql), ql == 0 || model[qo as usize..(qo + ql) as usize].iter().all(|b| *b));
    }

    #[test]
    fn object_map_round_trip(states in prop::collection::vec(0u8..4, 0..200), flip in any::<prop::sample::Index>()) {
        let mut map = ObjectMap::new(states.len() as u64);
        for (i, s) in states.iter().enumerate() {
            let state = [ObjectState::Nonexistent, ObjectState::Exists, ObjectState::Pending, ObjectState::ExistsClean][*s as usize];
            map.set(i as u64, state);
        }
        let enc = map.encode();
        prop_assert_eq!(&ObjectMap::decode(&enc).unwrap(), &map);
        let mut bad = enc.clone();
        let i = flip.index(bad.len());
        bad[i] ^= 0x10;
        prop_assert!(ObjectMap::decode(&bad).is_err());
        prop_assert!(ObjectMap::decode(&enc[..enc.len() - 1]).is_err());
    }

    #[test]
    fn object_map_resize_clears_tail(n in 1u64..100, m in 0u64..100) {
        let mut map = ObjectMap::new(n);
        for i in 0..n { map.set(i, ObjectState::Exists); }
        map.resize(m);
        map.resize(n.max(m));
        for i in 0..n.max(m) {
            let want = if i < m.min(n) { ObjectState::Exists } else { ObjectState::Nonexistent };
            prop_assert_eq!(map.get(i), want);
        }
        prop_assert!(ObjectMap::decode(&map.encode()).is_ok());
    }
}
