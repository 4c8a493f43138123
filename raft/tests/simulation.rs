//! The seeded Raft simulation over many seeds (bounded in time for CI).
//!
//! `RAFT_SIM_SEED=<n>` runs one seed (to replay a failure); `RAFT_SIM_SEEDS=<n>` runs n seeds
//! (default 24).

use ringlog_raft::sim::{run, SimConfig};

#[test]
fn committed_entries_survive_crashes_partitions_and_drops() {
    let cfg = SimConfig::default();
    let seeds: Vec<u64> = match std::env::var("RAFT_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("RAFT_SIM_SEED is a number")],
        Err(_) => {
            let n: u64 = std::env::var("RAFT_SIM_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(24);
            (0..n).collect()
        }
    };
    let started = std::time::Instant::now();
    let mut totals = (0u64, 0u64, 0u64, 0u64);
    for seed in seeds {
        // raft-rs's own invariant checks panic without the seed: add it.
        let r = match std::panic::catch_unwind(|| run(seed, &cfg)) {
            Ok(r) => r,
            Err(_) => {
                panic!("raft simulation failed with seed {seed} (rerun: RAFT_SIM_SEED={seed})")
            }
        };
        assert!(r.committed > 0, "seed {seed}: nothing committed: {r:?}");
        totals.0 += r.committed;
        totals.1 += r.crashes;
        totals.2 += r.partitions;
        totals.3 += r.dropped;
        assert!(
            started.elapsed() < std::time::Duration::from_secs(240),
            "simulation over its time budget"
        );
    }
    eprintln!(
        "raft sim: {} entries committed through {} crashes, {} partitions, {} dropped messages",
        totals.0, totals.1, totals.2, totals.3
    );
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let cfg = SimConfig {
        fault_ms: 1_000,
        ..SimConfig::default()
    };
    let a = run(42, &cfg);
    let b = run(42, &cfg);
    assert_eq!(
        (
            a.proposed,
            a.committed,
            a.crashes,
            a.partitions,
            a.dropped,
            a.heal_ms
        ),
        (
            b.proposed,
            b.committed,
            b.crashes,
            b.partitions,
            b.dropped,
            b.heal_ms
        )
    );
}
