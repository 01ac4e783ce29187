//! Ceph's RBD records come from the store or a cluster: any bytes, decoded as any record kind,
//! must give an error or a record, never a panic or a huge allocation; whatever decodes
//! re-encodes to a form that decodes to the same record and re-encodes to itself.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rbdm_cls::{Record, RecordKind};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let kind = RecordKind::ALL[selector as usize % RecordKind::ALL.len()];
    if let Ok(record) = Record::decode(kind, bytes) {
        let canonical = record.encode();
        let again = Record::decode(kind, &canonical).expect("canonical form must decode");
        assert_eq!(again, record);
        assert_eq!(again.encode(), canonical);
    }
});
