//! Every backend runs the same conformance suite.

use mail_queue::{RedbStore, SledStore, conformance};

#[test]
fn sled_backend_conforms() {
    conformance::run(|dir| SledStore::open(dir).expect("open sled"));
}

#[test]
fn redb_backend_conforms() {
    conformance::run(|dir| {
        std::fs::create_dir_all(dir).expect("dir");
        RedbStore::open(&dir.join("meta.redb")).expect("open redb")
    });
}
