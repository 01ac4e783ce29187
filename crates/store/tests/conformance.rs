//! Runs the shared conformance suite against every backend.

mod mem {
    rbdm_store::conformance_tests!(|| {
        let store = rbdm_store::mem::MemStore::new();
        (
            move || std::sync::Arc::new(store.handle()) as rbdm_store::StoreRef,
            (),
        )
    });
}

mod dir {
    rbdm_store::conformance_tests!(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        let open = move || {
            std::sync::Arc::new(rbdm_store::dir::DirStore::open(&root).expect("open dir store"))
                as rbdm_store::StoreRef
        };
        (open, dir)
    });
}
