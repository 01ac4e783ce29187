//! Random histories of writes, zeros, truncates, removes and snapshot create/remove, checked
//! against a model that simply remembers the object's bytes at every snapshot. Runs on both
//! backends.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use rbdm_store::{Locator, SnapContext, SnapId, StoreRef, WriteOp, HEAD};

#[derive(Clone, Debug)]
enum Step {
    Write {
        obj: usize,
        off: u64,
        len: u64,
        byte: u8,
    },
    Zero {
        obj: usize,
        off: u64,
        len: u64,
    },
    Truncate {
        obj: usize,
        size: u64,
    },
    Remove {
        obj: usize,
    },
    Snap,
    RemoveSnap {
        pick: usize,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let obj = 0usize..2;
    prop_oneof![
        4 => (obj.clone(), 0u64..48, 1u64..24, 1u8..255).prop_map(|(obj, off, len, byte)| Step::Write { obj, off, len, byte }),
        1 => (obj.clone(), 0u64..48, 1u64..24).prop_map(|(obj, off, len)| Step::Zero { obj, off, len }),
        1 => (obj.clone(), 0u64..64).prop_map(|(obj, size)| Step::Truncate { obj, size }),
        1 => obj.prop_map(|obj| Step::Remove { obj }),
        2 => Just(Step::Snap),
        1 => (0usize..4).prop_map(|pick| Step::RemoveSnap { pick }),
    ]
}

/// The model: each object's head bytes, and every live snapshot's copy of all objects.
#[derive(Default)]
struct Model {
    head: [Option<Vec<u8>>; 2],
    snaps: BTreeMap<SnapId, [Option<Vec<u8>>; 2]>,
}

fn run(store: &StoreRef, steps: &[Step]) -> Result<(), TestCaseError> {
    let pool = store
        .pool_id("rbd")
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let locs = [Locator::new(pool, "", "a"), Locator::new(pool, "", "b")];
    let mut m = Model::default();
    for s in steps {
        let snapc = SnapContext {
            seq: m.snaps.keys().next_back().copied().unwrap_or(0),
            snaps: m.snaps.keys().rev().copied().collect(),
        };
        let (obj, op) = match *s {
            Step::Write {
                obj,
                off,
                len,
                byte,
            } => {
                let head = m.head[obj].get_or_insert_with(Vec::new);
                let end = (off + len) as usize;
                if head.len() < end {
                    head.resize(end, 0);
                }
                head[off as usize..end].fill(byte);
                (obj, WriteOp::new().write(off, &vec![byte; len as usize]))
            }
            Step::Zero { obj, off, len } => {
                if let Some(head) = &mut m.head[obj] {
                    let end = ((off + len) as usize).min(head.len());
                    if (off as usize) < end {
                        head[off as usize..end].fill(0);
                    }
                }
                (obj, WriteOp::new().zero(off, len))
            }
            Step::Truncate { obj, size } => {
                m.head[obj]
                    .get_or_insert_with(Vec::new)
                    .resize(size as usize, 0);
                (obj, WriteOp::new().truncate(size))
            }
            Step::Remove { obj } => {
                let existed = m.head[obj].take().is_some();
                let r = store.operate(&locs[obj], &WriteOp::new().remove(), &snapc);
                prop_assert_eq!(r.is_ok(), existed, "remove succeeds iff the object exists");
                continue;
            }
            Step::Snap => {
                let id = store
                    .snap_create(pool)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                m.snaps.insert(id, m.head.clone());
                continue;
            }
            Step::RemoveSnap { pick } => {
                let Some(&id) = m.snaps.keys().nth(pick) else {
                    continue;
                };
                m.snaps.remove(&id);
                store
                    .snap_remove(pool, id)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                continue;
            }
        };
        store
            .operate(&locs[obj], &op, &snapc)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
    let views = m
        .snaps
        .iter()
        .map(|(id, v)| (*id, v.clone()))
        .chain([(HEAD, m.head.clone())]);
    for (snap, objs) in views {
        for (i, want) in objs.iter().enumerate() {
            let got = store.read(&locs[i], snap, 0, 1000);
            match want {
                Some(bytes) => {
                    prop_assert_eq!(got.ok(), Some(bytes.clone()), "{} at snap {}", i, snap)
                }
                None => {
                    prop_assert!(
                        got.as_ref().is_err_and(|e| e.is_no_object()),
                        "{} at snap {}: {:?}",
                        i,
                        snap,
                        got
                    )
                }
            }
        }
    }
    // Clones are exactly what live snapshots need: none outlives every snap it served.
    for loc in &locs {
        if let Ok(ss) = store.list_snaps(loc) {
            for c in &ss.clones {
                prop_assert!(
                    c.snaps.iter().all(|s| m.snaps.contains_key(s)),
                    "clone {:?} serves only live snaps",
                    c
                );
                prop_assert!(!c.snaps.is_empty());
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn mem_matches_model(steps in proptest::collection::vec(step(), 1..40)) {
        let store: StoreRef = Arc::new(rbdm_store::mem::MemStore::new());
        run(&store, &steps)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]
    #[test]
    fn dir_matches_model(steps in proptest::collection::vec(step(), 1..40)) {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let store: StoreRef = Arc::new(rbdm_store::dir::DirStore::open(dir.path()).map_err(|e| TestCaseError::fail(e.to_string()))?);
        run(&store, &steps)?;
    }
}
