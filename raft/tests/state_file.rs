//! The group state file on a real disk: round trip, replacement, absence, damage.

use raft::prelude::{ConfState, HardState};
use ringlog_raft::state_file;

fn run<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .spawn(f)
        .expect("executor")
        .join()
        .expect("executor thread");
}

#[test]
fn saves_loads_replaces_and_refuses_damage() {
    // O_DIRECT needs a disk filesystem: the temp dir follows TMPDIR (scripts/test.sh points
    // it at a disk when /tmp is tmpfs).
    let dir = tempfile::tempdir().expect("temp dir");
    let path = std::fs::canonicalize(dir.path())
        .expect("abs")
        .join("raft_state");
    let p = path.clone();
    run(move || async move {
        assert!(state_file::load(&p).await.expect("load").is_none());
        let mut hs = HardState {
            term: 7,
            vote: 2,
            commit: 41,
            ..Default::default()
        };
        let conf = ConfState::from((vec![1, 2, 3], vec![4]));
        state_file::save(&p, &hs, &conf).await.expect("save");
        let (h, c) = state_file::load(&p).await.expect("load").expect("present");
        assert_eq!((h.term, h.vote, h.commit), (7, 2, 41));
        assert_eq!(c, conf);
        hs.term = 8;
        hs.vote = 3;
        state_file::save(&p, &hs, &conf).await.expect("save again");
        let (h, _) = state_file::load(&p).await.expect("load").expect("present");
        assert_eq!((h.term, h.vote), (8, 3));
    });
    // A flipped byte is an error, not a guess.
    let mut bytes = std::fs::read(&path).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).expect("write");
    let p = path.clone();
    run(move || async move {
        assert!(state_file::load(&p).await.is_err());
    });
}
