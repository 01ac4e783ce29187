//! Turns a compound write op into a plan before anything is applied, so that every backend
//! checks guards and limits the same way and can then apply the result all at once (which is
//! what makes a compound op atomic).

use crate::{Error, Locator, Op, Result, HEAD, MAX_OBJECT_SIZE};

/// A change to the object's data, applied in order to the base (the current data, or empty
/// after a reset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataStep<'a> {
    Write {
        offset: u64,
        data: &'a [u8],
    },
    /// Deallocate; already clipped to the object size at that point.
    Zero {
        offset: u64,
        len: u64,
    },
    Truncate(u64),
}

/// A change to xattrs or the omap, applied in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaStep<'a> {
    SetXattr(&'a str, &'a [u8]),
    RmXattr(&'a str),
    OmapSet(&'a [(String, Vec<u8>)]),
    OmapRm(&'a [String]),
    OmapClear,
    /// The object was removed: every xattr and omap key goes.
    ClearAll,
}

#[derive(Debug, Default)]
pub struct Plan<'a> {
    /// Something besides guards ran: the object's version is bumped.
    pub mutates: bool,
    /// Data or existence changed: a snapshot newer than the object's forces a clone first.
    pub data_touch: bool,
    pub exists_after: bool,
    pub size_after: u64,
    /// The data starts from empty (object absent, removed, fully overwritten or cut to 0)
    /// instead of from the current data.
    pub reset: bool,
    pub steps: Vec<DataStep<'a>>,
    /// Head ranges `(offset, len)` that changed, for clone overlap (`len` may be `u64::MAX`).
    pub cuts: Vec<(u64, u64)>,
    pub meta: Vec<MetaStep<'a>>,
    /// From [`crate::WriteOp::tearable`].
    pub tearable: bool,
}

impl Plan<'_> {
    /// The data after the op is the data before it.
    pub fn data_unchanged(&self) -> bool {
        !self.reset && self.steps.is_empty()
    }
}

/// What planning needs to know about the object at head before the op.
pub struct View<'v> {
    pub exists: bool,
    pub size: u64,
    pub xattr: &'v dyn Fn(&str) -> Result<Option<Vec<u8>>>,
    pub omap: &'v dyn Fn(&str) -> Result<Option<Vec<u8>>>,
}

pub fn plan<'a>(loc: &Locator, ops: &'a [Op], view: &View) -> Result<Plan<'a>> {
    check_guards(loc, ops, view)?;
    let mut p = Plan {
        exists_after: view.exists,
        size_after: view.size,
        reset: !view.exists,
        ..Plan::default()
    };
    for op in ops {
        apply(loc, op, &mut p)?;
    }
    Ok(p)
}

fn check_guards(loc: &Locator, ops: &[Op], view: &View) -> Result<()> {
    for op in ops {
        match op {
            Op::AssertExists if !view.exists => return Err(Error::no_object(loc, HEAD)),
            Op::CreateExclusive if view.exists => return Err(Error::Exists(loc.to_string())),
            Op::CmpXattr { name, value } if (view.xattr)(name)? != *value => {
                return Err(Error::Canceled(format!("{loc} xattr {name:?}")));
            }
            Op::OmapCmp { key, value } if (view.omap)(key)? != *value => {
                return Err(Error::Canceled(format!("{loc} omap key {key:?}")));
            }
            _ => {}
        }
    }
    Ok(())
}

fn apply<'a>(loc: &Locator, op: &'a Op, p: &mut Plan<'a>) -> Result<()> {
    match op {
        Op::AssertExists | Op::CmpXattr { .. } | Op::OmapCmp { .. } => return Ok(()),
        Op::Create | Op::CreateExclusive => create(p),
        Op::Write { offset, data } => {
            let end = checked_end(loc, *offset, data.len() as u64)?;
            create(p);
            p.data_touch = true;
            if data.is_empty() {
                // RADOS: an empty write creates the object but does not extend it.
            } else if *offset == 0 && end >= p.size_after {
                reset(p);
                p.steps.push(DataStep::Write { offset: 0, data });
                p.size_after = end;
            } else {
                p.steps.push(DataStep::Write {
                    offset: *offset,
                    data,
                });
                p.size_after = p.size_after.max(end);
            }
            p.cuts.push((*offset, data.len() as u64));
        }
        Op::WriteFull(data) => {
            checked_end(loc, 0, data.len() as u64)?;
            create(p);
            p.data_touch = true;
            reset(p);
            if !data.is_empty() {
                p.steps.push(DataStep::Write { offset: 0, data });
            }
            p.size_after = data.len() as u64;
            p.cuts.push((0, u64::MAX));
        }
        Op::Zero { offset, len } => {
            p.data_touch = true;
            // RADOS: zero neither creates nor extends.
            let end = offset.saturating_add(*len).min(p.size_after);
            if p.exists_after && *offset < end {
                p.steps.push(DataStep::Zero {
                    offset: *offset,
                    len: end - offset,
                });
                p.cuts.push((*offset, end - offset));
            }
        }
        Op::Truncate(size) => {
            checked_end(loc, *size, 0)?;
            create(p);
            p.data_touch = true;
            if *size < p.size_after {
                p.cuts.push((*size, u64::MAX));
            }
            if *size == 0 {
                reset(p);
            } else {
                p.steps.push(DataStep::Truncate(*size));
            }
            p.size_after = *size;
        }
        Op::Remove => {
            if !p.exists_after {
                return Err(Error::no_object(loc, HEAD));
            }
            p.data_touch = true;
            reset(p);
            p.exists_after = false;
            p.size_after = 0;
            p.cuts.push((0, u64::MAX));
            p.meta.push(MetaStep::ClearAll);
        }
        Op::SetXattr { name, value } => {
            create(p);
            p.meta.push(MetaStep::SetXattr(name, value));
        }
        Op::OmapSet(kv) => {
            create(p);
            p.meta.push(MetaStep::OmapSet(kv));
        }
        // Removing from an absent object changes nothing and does not create it.
        Op::RmXattr(name) => {
            if p.exists_after {
                p.meta.push(MetaStep::RmXattr(name));
            }
        }
        Op::OmapRm(keys) => {
            if p.exists_after {
                p.meta.push(MetaStep::OmapRm(keys));
            }
        }
        Op::OmapClear => {
            if p.exists_after {
                p.meta.push(MetaStep::OmapClear);
            }
        }
    }
    p.mutates = true;
    Ok(())
}

fn create(p: &mut Plan) {
    if !p.exists_after {
        p.exists_after = true;
        p.size_after = 0;
        p.data_touch = true;
    }
}

fn reset(p: &mut Plan) {
    p.reset = true;
    p.steps.clear();
}

fn checked_end(loc: &Locator, offset: u64, len: u64) -> Result<u64> {
    match offset.checked_add(len) {
        Some(end) if end <= MAX_OBJECT_SIZE => Ok(end),
        _ => Err(Error::Invalid(format!(
            "{loc}: range {offset}+{len} exceeds the maximum object size {MAX_OBJECT_SIZE}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WriteOp;

    fn view(exists: bool, size: u64) -> View<'static> {
        View {
            exists,
            size,
            xattr: &|_| Ok(None),
            omap: &|_| Ok(Some(b"1".to_vec())),
        }
    }

    fn loc() -> Locator {
        Locator::new(1, "", "o")
    }

    #[test]
    fn guards_fail_before_anything() {
        let op = WriteOp::new().write(0, b"x").omap_cmp("k", Some(b"2"));
        assert!(matches!(
            plan(&loc(), &op.ops, &view(true, 4)),
            Err(Error::Canceled(_))
        ));
        let op = WriteOp::new().write(0, b"x").assert_exists();
        assert!(matches!(
            plan(&loc(), &op.ops, &view(false, 0)),
            Err(Error::NoObject { snap: None, .. })
        ));
        let op = WriteOp::new().create_exclusive();
        assert!(matches!(
            plan(&loc(), &op.ops, &view(true, 0)),
            Err(Error::Exists(_))
        ));
        let op = WriteOp::new()
            .cmp_xattr("a", None)
            .omap_cmp("k", Some(b"1"))
            .write(0, b"x");
        assert!(plan(&loc(), &op.ops, &view(true, 4)).is_ok());
    }

    #[test]
    fn covering_write_resets_partial_does_not() {
        let op = WriteOp::new().write(0, b"abcd");
        let p = plan(&loc(), &op.ops, &view(true, 4)).expect("plan");
        assert!(p.reset && p.size_after == 4);
        let op = WriteOp::new().write(1, b"abcd");
        let p = plan(&loc(), &op.ops, &view(true, 4)).expect("plan");
        assert!(!p.reset && p.size_after == 5 && p.steps.len() == 1);
    }

    #[test]
    fn zero_clips_and_does_not_create() {
        let op = WriteOp::new().zero(2, 100);
        let p = plan(&loc(), &op.ops, &view(true, 10)).expect("plan");
        assert_eq!(p.steps, vec![DataStep::Zero { offset: 2, len: 8 }]);
        let p = plan(&loc(), &op.ops, &view(false, 0)).expect("plan");
        assert!(!p.exists_after && p.steps.is_empty());
    }

    #[test]
    fn remove_of_absent_fails_and_limits_hold() {
        let op = WriteOp::new().remove();
        assert!(matches!(
            plan(&loc(), &op.ops, &view(false, 0)),
            Err(Error::NoObject { snap: None, .. })
        ));
        let op = WriteOp::new().truncate(u64::MAX);
        assert!(matches!(
            plan(&loc(), &op.ops, &view(true, 0)),
            Err(Error::Invalid(_))
        ));
        let op = WriteOp::new().write(u64::MAX - 1, b"ab");
        assert!(matches!(
            plan(&loc(), &op.ops, &view(true, 0)),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn metadata_only_does_not_touch_data() {
        let op = WriteOp::new()
            .set_xattr("a", b"1")
            .omap_set([("k", b"v".to_vec())]);
        let p = plan(&loc(), &op.ops, &view(true, 3)).expect("plan");
        assert!(p.mutates && !p.data_touch && p.data_unchanged());
    }
}
