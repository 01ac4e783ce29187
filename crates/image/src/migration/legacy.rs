//! rbdm's own `migration` encoding of before Ceph's `MigrationSpec` was used (record
//! versions 1 and 2), converted on read so that a migration an older rbdm prepared can still
//! be executed, committed or aborted; the next update writes it in Ceph's form.
//!
//! How it is told apart: its version is 1 or 2 (Pacific writes 3) and its body parses whole
//! in the old layout (role byte 0 or 1, state byte 0 to 5, then its fields, no byte left).
//! Ceph's own versions 1 and 2 (Nautilus, Octopus) do not parse so and go to Ceph's decoder.
//!
//! What the old record lacked: the source's snapshot ids (it kept the index of the source
//! snapshot each destination snapshot holds) and the source's size. The conversion numbers
//! source snapshots 1, 2, … in order, as librbd numbers a raw or qcow source's, which keeps
//! rbdm's reads right; for an image source a Ceph client would need the real ids, so such a
//! converted migration is one for rbdm to finish. `overlap` reads as 0.

use crate::encoding::Dec;
use crate::migration::{MigrationRecord, MigrationRole, MigrationState, PeerImage};
use crate::Result;

/// The converted record, or `None` if `buf` is not in the old encoding.
pub(crate) fn decode(buf: &[u8]) -> Result<Option<MigrationRecord>> {
    if !matches!(buf, [1 | 2, 1, ..]) {
        return Ok(None);
    }
    Ok(parse(buf).ok())
}

fn parse(buf: &[u8]) -> Result<MigrationRecord> {
    let mut d = Dec::new(buf, "migration record (rbdm encoding)");
    let (version, mut b) = d.versioned(2)?;
    d.done()?;
    let bad = || crate::Error::Corrupt("not the old record".into());
    let role = match b.u8()? {
        0 => MigrationRole::Source,
        1 => MigrationRole::Destination,
        _ => return Err(bad()),
    };
    let state = match b.u8()? {
        0 => MigrationState::Prepared,
        1 => MigrationState::Executing,
        2 => MigrationState::Executed,
        3 => MigrationState::Aborting,
        4 => MigrationState::Preparing,
        5 => MigrationState::Committing,
        _ => return Err(bad()),
    };
    let state_description = b.str()?;
    let peer = if b.bool()? {
        Some(PeerImage {
            pool_id: b.i64()?,
            namespace: b.str()?,
            name: b.str()?,
            id: b.str()?,
        })
    } else {
        None
    };
    let source_spec = b.str()?;
    let import_only = b.bool()?;
    let flatten = b.bool()?;
    let n = b.u32()?;
    // (destination snapshot, index of the source snapshot it holds)
    let mut by_index: Vec<(u32, u64)> = Vec::new();
    for _ in 0..n {
        let dst = b.u64()?;
        by_index.push((b.u32()?, dst));
    }
    let copied_upto = b.u64()?;
    let source_identity = if version >= 2 {
        b.str()?
    } else {
        String::new()
    };
    b.done()?;
    by_index.sort_unstable();
    Ok(MigrationRecord {
        role,
        state,
        state_description,
        peer,
        source_spec,
        import_only,
        flatten,
        snap_seqs: by_index
            .into_iter()
            .map(|(i, dst)| (u64::from(i) + 1, dst))
            .collect(),
        overlap: 0,
        copied_upto,
        source_identity,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::Enc;

    /// A destination record as rbdm wrote it before (version 2).
    fn old_bytes(version: u8) -> Vec<u8> {
        Enc::new()
            .versioned(version, 1, |e| {
                e.u8(1).u8(1).str("32% complete");
                e.bool(true).i64(1).str("ns").str("a").str("x");
                e.str("{}").bool(false).bool(true);
                e.u32(2).u64(6).u32(1).u64(4).u32(0);
                e.u64(99);
                if version >= 2 {
                    e.str(r#"{"stream":{}}"#);
                }
            })
            .finish()
    }

    #[test]
    fn the_old_encoding_is_converted() {
        let r = MigrationRecord::decode(&old_bytes(2), None).unwrap();
        assert_eq!(
            (r.role, r.state),
            (MigrationRole::Destination, MigrationState::Executing)
        );
        assert_eq!(r.snap_seqs, vec![(1, 4), (2, 6)]);
        assert_eq!(
            (r.point_of(Some(4)), r.point_of(Some(6))),
            (Some(0), Some(1))
        );
        assert_eq!(
            (r.copied_upto, r.source_identity.as_str()),
            (99, r#"{"stream":{}}"#)
        );
        assert_eq!(r.peer.as_ref().map(|p| p.id.as_str()), Some("x"));
        let v1 = MigrationRecord::decode(&old_bytes(1), None).unwrap();
        assert_eq!(v1.source_identity, "");
        // Written back, it is Ceph's record.
        let ceph = rbdm_cls::migration::MigrationSpec::decode(&r.encode()).unwrap();
        assert_eq!(ceph.image_id, "x");
    }

    #[test]
    fn cephs_own_records_are_not_taken_for_the_old_encoding() {
        // Ceph's version 1 (Nautilus): a destination in pool 1 naming its source.
        let v1 = Enc::new()
            .versioned(1, 1, |e| {
                e.u8(2).i64(1).str("").str("migsrc").str("103d2c19136d");
                e.u32(0)
                    .u64(512 << 10)
                    .bool(false)
                    .bool(false)
                    .u8(2)
                    .str("");
            })
            .finish();
        assert!(decode(&v1).unwrap().is_none());
        let r = MigrationRecord::decode(&v1, None).unwrap();
        assert_eq!(
            (r.role, r.state),
            (MigrationRole::Destination, MigrationState::Prepared)
        );
        // A truncated old record is neither.
        let b = old_bytes(2);
        assert!(decode(&b[..b.len() - 1]).unwrap().is_none());
    }
}
