//! The migration record in a header, as two keys written together by one header update:
//!
//! - `migration`: Ceph's `cls::rbd::MigrationSpec` (v3), byte for byte what librbd writes for
//!   the same migration, so `rbd status` and `rbd migration …` read an rbdm migration and
//!   rbdm reads one `rbd migration prepare` made;
//! - `rbdm_migration`: what Ceph's record has no field for (how far the copy got, what the
//!   source was at prepare, and that a commit started), versioned, absent when all of it is
//!   at its default, and tagged with the migration it belongs to. No `cls_rbd` method reads
//!   that key, so Ceph ignores it (and leaves it behind when it commits or aborts: a tag that
//!   is not the record's reads as absent). A Ceph-made record without it reads as nothing
//!   copied yet, no identity, no commit started.
//!
//! Ceph's states are error/preparing/prepared/executing/executed/aborting; rbdm's
//! `committing` is `executed` there plus the flag here. A record in rbdm's own encoding of
//! before (versions 1 and 2, its role byte first) is converted on read (see `legacy.rs`),
//! and written back in these two keys by the next update.

use rbdm_cls::migration::{MigrationHeaderType, MigrationSpec, MigrationState as CephState};
use rbdm_store::SnapId;

use crate::encoding::{Dec, Enc};
use crate::header::Header;
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MigrationRole {
    Source,
    Destination,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MigrationState {
    Prepared,
    Executing,
    Executed,
    /// An abort started and must be finished (`migration abort` again).
    Aborting,
    /// A prepare started and did not finish: rolled back by the next command on either image.
    Preparing,
    /// A commit started removing the source and must be finished (`migration commit` again).
    Committing,
}

impl MigrationState {
    pub fn name(self) -> &'static str {
        match self {
            MigrationState::Prepared => "prepared",
            MigrationState::Executing => "executing",
            MigrationState::Executed => "executed",
            MigrationState::Aborting => "aborting",
            MigrationState::Preparing => "preparing",
            MigrationState::Committing => "committing",
        }
    }
}

/// An image in the same store, by id (names change when the source goes to the trash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerImage {
    pub pool_id: i64,
    pub namespace: String,
    pub name: String,
    pub id: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationRecord {
    pub role: MigrationRole,
    pub state: MigrationState,
    /// e.g. "32% complete" while executing, or the error that stopped it.
    pub state_description: String,
    /// The other image of a same-store migration (for a destination: its source).
    pub peer: Option<PeerImage>,
    /// The source-spec JSON the destination reads (for a same-store destination the `native`
    /// spec of its peer, which Ceph does not store: rebuilt from the peer on read).
    pub source_spec: String,
    /// A destination whose source is a spec, not an image of this store (Ceph: a
    /// destination with a source spec).
    pub import_only: bool,
    pub flatten: bool,
    /// Ceph's `snap_seqs`: each source snapshot's id and the destination snapshot made from
    /// it at prepare, by source id, which is the source's order (the n-th entry is the
    /// source's n-th snapshot). Destination snapshots not listed (taken later) hold the
    /// source's head.
    pub snap_seqs: Vec<(SnapId, SnapId)>,
    /// Ceph's `overlap`: the source's size at prepare on a destination, 0 on a source.
    pub overlap: u64,
    /// Every object below this number has been copied.
    pub copied_upto: u64,
    /// What the source was at prepare (JSON written and checked by the migration crate, e.g.
    /// a file's size, times and inode); empty when nothing was recorded. Kept apart from
    /// `source_spec`, which stays the text the user gave.
    pub source_identity: String,
}

/// The header keys the record is kept in.
pub const SPEC_KEY: &str = "migration";
pub const RBDM_KEY: &str = "rbdm_migration";

impl MigrationRecord {
    /// The record in `h`, if the image takes part in a migration.
    pub fn from_header(h: &Header) -> Result<Option<Self>> {
        h.migration
            .as_deref()
            .map(|spec| Self::decode(spec, h.rbdm_migration.as_deref()))
            .transpose()
    }

    /// Sets (or with `None` clears) both keys of the record in `h`, so one update writes them.
    pub fn to_header(rec: Option<&Self>, h: &mut Header) {
        h.migration = rec.map(Self::encode);
        h.rbdm_migration = rec.and_then(Self::encode_rbdm);
    }

    /// The `migration` key: Ceph's `MigrationSpec`.
    pub fn encode(&self) -> Vec<u8> {
        self.spec().encode()
    }

    /// The `rbdm_migration` key, or `None` when everything in it is at its default.
    pub fn encode_rbdm(&self) -> Option<Vec<u8>> {
        let committing = self.state == MigrationState::Committing;
        if self.copied_upto == 0 && self.source_identity.is_empty() && !committing {
            return None;
        }
        let mut e = Enc::new();
        e.versioned(1, 1, |e| {
            e.u64(self.copied_upto)
                .str(&self.source_identity)
                .bool(committing)
                .bytes(&owner(&self.spec()));
        });
        Some(e.finish())
    }

    /// Reads the two keys (`rbdm` absent: Ceph's defaults); the encoding of before is
    /// converted.
    pub fn decode(spec: &[u8], rbdm: Option<&[u8]>) -> Result<Self> {
        if let Some(old) = super::legacy::decode(spec)? {
            return Ok(old);
        }
        let s = MigrationSpec::decode(spec)
            .map_err(|e| Error::Corrupt(format!("migration record: {e}")))?;
        let extra = Extra::decode(rbdm, &owner(&s))?;
        Ok(Self::from_spec(s, extra))
    }

    fn from_spec(s: MigrationSpec, extra: Extra) -> Self {
        let role = match s.header_type {
            MigrationHeaderType::Source => MigrationRole::Source,
            MigrationHeaderType::Destination => MigrationRole::Destination,
        };
        let import_only = role == MigrationRole::Destination && !s.source_spec.is_empty();
        let peer = (s.pool_id >= 0 || !s.image_id.is_empty()).then_some(PeerImage {
            pool_id: s.pool_id,
            namespace: s.pool_namespace,
            name: s.image_name,
            id: s.image_id,
        });
        let source_spec = match (&peer, import_only, role) {
            (Some(p), false, MigrationRole::Destination) => native_spec(p),
            _ => s.source_spec,
        };
        let state = state_from_ceph(s.state, extra.committing);
        let mut snap_seqs = s.snap_seqs;
        snap_seqs.sort_unstable();
        MigrationRecord {
            role,
            state,
            state_description: s.state_description,
            peer,
            source_spec,
            import_only,
            flatten: s.flatten,
            snap_seqs,
            overlap: s.overlap,
            copied_upto: extra.copied_upto,
            source_identity: extra.source_identity,
        }
    }

    /// What librbd writes for this end of the migration: a source names its destination and
    /// has no snapshot map or overlap; a same-store destination names its source; an import
    /// names nothing (pool -1) and carries the spec. Mirroring is never on (journal mode).
    fn spec(&self) -> MigrationSpec {
        let header_type = match self.role {
            MigrationRole::Source => MigrationHeaderType::Source,
            MigrationRole::Destination => MigrationHeaderType::Destination,
        };
        let (pool_id, pool_namespace, image_name, image_id) = match &self.peer {
            Some(p) => (p.pool_id, p.namespace.clone(), p.name.clone(), p.id.clone()),
            None => (-1, String::new(), String::new(), String::new()),
        };
        let source_spec = match (self.role, self.import_only) {
            (MigrationRole::Destination, true) => self.source_spec.clone(),
            _ => String::new(),
        };
        let mut snap_seqs = self.snap_seqs.clone();
        snap_seqs.sort_unstable();
        MigrationSpec {
            header_type,
            pool_id,
            pool_namespace,
            image_name,
            image_id,
            snap_seqs,
            overlap: self.overlap,
            flatten: self.flatten,
            mirroring: false,
            state: state_to_ceph(self.state),
            state_description: self.state_description.clone(),
            mirror_image_mode: 0,
            source_spec,
        }
    }

    /// The source point a destination snapshot holds: `Some(index)` of a source snapshot,
    /// `None` for the source's head.
    pub fn point_of(&self, snap: Option<SnapId>) -> Option<usize> {
        let s = snap?;
        self.snap_seqs.iter().position(|(_, dst)| *dst == s)
    }
}

fn state_to_ceph(s: MigrationState) -> CephState {
    match s {
        MigrationState::Preparing => CephState::Preparing,
        MigrationState::Prepared => CephState::Prepared,
        MigrationState::Executing => CephState::Executing,
        MigrationState::Executed | MigrationState::Committing => CephState::Executed,
        MigrationState::Aborting => CephState::Aborting,
    }
}

/// Ceph's `error` state (which librbd does not set) reads as `executing`: the copy stopped
/// and `execute` runs it again, as `rbd migration execute` accepts it only after an abort.
fn state_from_ceph(s: CephState, committing: bool) -> MigrationState {
    match s {
        CephState::Executed if committing => MigrationState::Committing,
        CephState::Executed => MigrationState::Executed,
        CephState::Preparing => MigrationState::Preparing,
        CephState::Prepared => MigrationState::Prepared,
        CephState::Executing | CephState::Error => MigrationState::Executing,
        CephState::Aborting => MigrationState::Aborting,
    }
}

/// The `native` source-spec of a same-store destination's source, as `prepare` writes it.
pub(crate) fn native_spec(p: &PeerImage) -> String {
    format!(
        r#"{{"type":"native","pool_id":{},"pool_namespace":{},"image_name":{},"image_id":{}}}"#,
        p.pool_id,
        json_str(&p.namespace),
        json_str(&p.name),
        json_str(&p.id)
    )
}

/// A JSON string literal (this crate has no JSON library; names are short and plain).
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Which migration an `rbdm_migration` value belongs to: the fields of Ceph's record that
/// stay the same for the whole migration (its end, its peer, its spec). A Ceph client that
/// finishes a migration removes only `migration`; the value left beside it must not be
/// read with the record of a later migration (a stale `copied_upto` would skip copies).
fn owner(s: &MigrationSpec) -> Vec<u8> {
    let mut e = Enc::new();
    e.u8(s.header_type as u8)
        .i64(s.pool_id)
        .str(&s.pool_namespace)
        .str(&s.image_name)
        .str(&s.image_id)
        .str(&s.source_spec);
    e.finish()
}

/// The `rbdm_migration` key's fields.
#[derive(Default)]
struct Extra {
    copied_upto: u64,
    source_identity: String,
    committing: bool,
}

impl Extra {
    /// `raw` read for the record whose [`owner`] is `of`: another migration's is ignored.
    fn decode(raw: Option<&[u8]>, of: &[u8]) -> Result<Self> {
        let Some(raw) = raw else {
            return Ok(Extra::default());
        };
        let mut d = Dec::new(raw, "rbdm_migration");
        let (_, mut b) = d.versioned(1)?;
        let extra = Extra {
            copied_upto: b.u64()?,
            source_identity: b.str()?,
            committing: b.bool()?,
        };
        Ok(if b.bytes()? == of {
            extra
        } else {
            Extra::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn destination() -> MigrationRecord {
        MigrationRecord {
            role: MigrationRole::Destination,
            state: MigrationState::Executing,
            state_description: "32% complete".into(),
            peer: Some(PeerImage {
                pool_id: 1,
                namespace: "ns".into(),
                name: "a\"b".into(),
                id: "x".into(),
            }),
            source_spec: String::new(),
            import_only: false,
            flatten: true,
            snap_seqs: vec![(4, 8), (6, 9)],
            overlap: 1 << 20,
            copied_upto: 99,
            source_identity: String::new(),
        }
    }

    fn round_trip(r: &MigrationRecord) -> MigrationRecord {
        MigrationRecord::decode(&r.encode(), r.encode_rbdm().as_deref()).unwrap()
    }

    #[test]
    fn destination_round_trip_rebuilds_its_native_spec() {
        let mut r = destination();
        r.source_spec = native_spec(r.peer.as_ref().unwrap());
        assert_eq!(round_trip(&r), r);
        assert_eq!(
            r.source_spec,
            r#"{"type":"native","pool_id":1,"pool_namespace":"ns","image_name":"a\"b","image_id":"x"}"#
        );
        assert_eq!(r.point_of(Some(9)), Some(1));
        assert_eq!(r.point_of(Some(7)), None);
        assert_eq!(r.point_of(None), None);
        // Ceph's bytes hold no spec for an image-to-image migration.
        assert_eq!(MigrationSpec::decode(&r.encode()).unwrap().source_spec, "");
    }

    #[test]
    fn source_and_import_round_trip() {
        let src = MigrationRecord {
            role: MigrationRole::Source,
            state: MigrationState::Committing,
            snap_seqs: vec![],
            overlap: 0,
            copied_upto: 0,
            ..destination()
        };
        assert_eq!(round_trip(&src), src);
        let imp = MigrationRecord {
            peer: None,
            source_spec: r#"{"type":"raw"}"#.into(),
            import_only: true,
            source_identity: r#"{"stream":{}}"#.into(),
            ..destination()
        };
        assert_eq!(round_trip(&imp), imp);
        let ceph = MigrationSpec::decode(&imp.encode()).unwrap();
        assert_eq!((ceph.pool_id, ceph.image_id.as_str()), (-1, ""));
    }

    #[test]
    fn committing_is_executed_for_ceph_and_the_flag_for_rbdm() {
        let r = MigrationRecord {
            state: MigrationState::Committing,
            copied_upto: 0,
            ..destination()
        };
        let ceph = MigrationSpec::decode(&r.encode()).unwrap();
        assert_eq!(ceph.state, CephState::Executed);
        assert!(r.encode_rbdm().is_some());
        // Without rbdm's key (a Ceph client's view), it is executed.
        let alone = MigrationRecord::decode(&r.encode(), None).unwrap();
        assert_eq!(alone.state, MigrationState::Executed);
    }

    #[test]
    fn defaults_write_no_rbdm_key_and_read_without_it() {
        let r = MigrationRecord {
            copied_upto: 0,
            state: MigrationState::Prepared,
            ..destination()
        };
        assert_eq!(r.encode_rbdm(), None);
        let mut h = Header::new(
            1,
            crate::Layout::new(1 << 22, 1 << 22, 1).unwrap(),
            "p".into(),
            1,
            0,
        );
        MigrationRecord::to_header(Some(&destination()), &mut h);
        assert!(h.rbdm_migration.is_some());
        MigrationRecord::to_header(Some(&r), &mut h);
        assert!(h.rbdm_migration.is_none());
        MigrationRecord::to_header(None, &mut h);
        assert!(h.migration.is_none() && MigrationRecord::from_header(&h).unwrap().is_none());
    }

    /// Ceph's commit removed `migration` only; a later migration of the image must not read
    /// the earlier one's progress.
    #[test]
    fn another_migrations_rbdm_key_is_ignored() {
        let old = destination();
        let new = MigrationRecord {
            peer: Some(PeerImage {
                id: "y".into(),
                ..old.peer.clone().unwrap()
            }),
            copied_upto: 0,
            ..old.clone()
        };
        let read = MigrationRecord::decode(&new.encode(), old.encode_rbdm().as_deref()).unwrap();
        assert_eq!(read.copied_upto, 0);
        // Its own key is read, also once a Ceph client moved the state on.
        let executed = MigrationRecord {
            state: MigrationState::Executed,
            state_description: String::new(),
            ..old.clone()
        };
        let read = MigrationRecord::decode(&executed.encode(), old.encode_rbdm().as_deref());
        assert_eq!(read.unwrap().copied_upto, 99);
    }

    #[test]
    fn a_damaged_record_is_an_error() {
        let r = destination();
        assert!(MigrationRecord::decode(&r.encode()[..10], None).is_err());
        assert!(MigrationRecord::decode(&r.encode(), Some(&[1, 1, 2, 0, 0, 0, 0])).is_err());
    }
}
