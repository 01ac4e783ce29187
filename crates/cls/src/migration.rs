//! The `migration` header key: `cls::rbd::MigrationSpec` (version 3; 1 and 2 decoded), on
//! both the source and the destination image of a live migration.

use crate::denc::{byte_enum, decode_versioned, encode_versioned};
use crate::error::DecodeError;

byte_enum! {
/// Which end of a migration this header is (`MigrationHeaderType`, one byte).
pub enum MigrationHeaderType("migration header_type") {
    Source = 1,
    Destination = 2,
}
}

byte_enum! {
/// `cls::rbd::MigrationState`, one byte.
pub enum MigrationState("migration state") {
    Error = 0,
    Preparing = 1,
    Prepared = 2,
    Executing = 3,
    Executed = 4,
    Aborting = 5,
}
}

/// One end's view of a migration. On the source, pool/namespace/name/id name the
/// destination; on the destination they name the source, or `source_spec` holds the JSON
/// spec of an import-only migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationSpec {
    pub header_type: MigrationHeaderType,
    pub pool_id: i64,
    pub pool_namespace: String,
    pub image_name: String,
    pub image_id: String,
    /// Source snapshot id to destination snapshot id (`std::map<uint64_t, uint64_t>`).
    pub snap_seqs: Vec<(u64, u64)>,
    pub overlap: u64,
    pub flatten: bool,
    pub mirroring: bool,
    pub state: MigrationState,
    pub state_description: String,
    /// `MirrorImageMode` (0 journal, 1 snapshot), version 2 on.
    pub mirror_image_mode: u8,
    /// The import source's JSON spec, version 3 on; empty for image-to-image migrations.
    pub source_spec: String,
}

impl MigrationSpec {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_versioned("MigrationSpec", bytes, 3, 1, |d, sv| {
            let header_type = MigrationHeaderType::decode(d)?;
            let pool_id = d.i64()?;
            let pool_namespace = d.string()?;
            let image_name = d.string()?;
            let image_id = d.string()?;
            let snap_seqs = d.vec(16, |d| Ok((d.u64()?, d.u64()?)))?;
            let overlap = d.u64()?;
            let flatten = d.bool()?;
            let mirroring = d.bool()?;
            let state = MigrationState::decode(d)?;
            let state_description = d.string()?;
            let mirror_image_mode = if sv.v >= 2 { d.u8()? } else { 0 };
            let source_spec = if sv.v >= 3 {
                d.string()?
            } else {
                String::new()
            };
            Ok(MigrationSpec {
                header_type,
                pool_id,
                pool_namespace,
                image_name,
                image_id,
                snap_seqs,
                overlap,
                flatten,
                mirroring,
                state,
                state_description,
                mirror_image_mode,
                source_spec,
            })
        })
    }

    /// Version 3; compat 3 when there is a source spec (older clients must not mistake an
    /// import for an image-to-image migration), else 1, as Ceph does.
    pub fn encode(&self) -> Vec<u8> {
        let compat = if self.source_spec.is_empty() { 1 } else { 3 };
        encode_versioned(3, compat, |e| {
            e.u8(self.header_type as u8);
            e.i64(self.pool_id);
            e.string(&self.pool_namespace);
            e.string(&self.image_name);
            e.string(&self.image_id);
            e.seq(&self.snap_seqs, |e, (a, b)| {
                e.u64(*a);
                e.u64(*b);
            });
            e.u64(self.overlap);
            e.bool(self.flatten);
            e.bool(self.mirroring);
            e.u8(self.state as u8);
            e.string(&self.state_description);
            e.u8(self.mirror_image_mode);
            e.string(&self.source_spec);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::denc::Encoder;

    fn spec(source_spec: &str) -> MigrationSpec {
        MigrationSpec {
            header_type: MigrationHeaderType::Destination,
            pool_id: -1,
            pool_namespace: String::new(),
            image_name: String::new(),
            image_id: String::new(),
            snap_seqs: vec![(4, 8), (5, 9)],
            overlap: 1 << 20,
            flatten: false,
            mirroring: false,
            state: MigrationState::Executing,
            state_description: "copying".into(),
            mirror_image_mode: 0,
            source_spec: source_spec.into(),
        }
    }

    #[test]
    fn compat_follows_the_source_spec() {
        assert_eq!(spec("").encode()[1], 1);
        assert_eq!(spec("{\"type\":\"raw\"}").encode()[1], 3);
        for s in [spec(""), spec("{}")] {
            assert_eq!(MigrationSpec::decode(&s.encode()).unwrap(), s);
        }
    }

    #[test]
    fn version_1_has_no_mode_or_source_spec() {
        let full = spec("");
        let mut e = Encoder::new();
        e.versioned(1, 1, |e| {
            e.u8(2);
            e.i64(-1);
            e.string("");
            e.string("");
            e.string("");
            e.u32(0);
            e.u64(0);
            e.bool(false);
            e.bool(false);
            e.u8(3);
            e.string("copying");
        });
        let old = MigrationSpec::decode(&e.into_bytes()).unwrap();
        assert_eq!(old.state, full.state);
        assert_eq!(old.source_spec, "");
    }
}
