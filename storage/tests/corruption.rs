//! Damaged files on reopen: a corrupt tail of the active segment is cut, a corrupt batch in a
//! sealed segment fails its reads (never served), and damaged or missing index files of sealed
//! segments are rebuilt with the same reads as before.
//!
//! Every case builds a log, closes it (the executor finishes, so every file is closed), damages
//! files with plain `std::fs`, and reopens.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;
use common::*;
use ringlog_storage::{
    Batch, BatchHeader, LogConfig, ManualClock, Offset, StorageError, Term, TimestampMs,
};

const SEGMENT_BYTES: u64 = 64 * 1024;

fn config() -> LogConfig {
    small_config(SEGMENT_BYTES)
}

/// The batch appended `i`-th: sizes and record counts vary with `i`.
fn nth_batch(i: u64) -> bytes::BytesMut {
    batch(1 + (i % 5) as usize, i, 40 + ((i * 37) % 300) as usize)
}

fn clock() -> Rc<ManualClock> {
    Rc::new(ManualClock::new(1_700_000_000_000))
}

/// Appends batches `from..to` (by [`nth_batch`]) with a flush every few, and closes the log.
/// Returns the end offset.
fn append_batches(dir: &Path, from: u64, to: u64) -> Offset {
    let d = dir.to_path_buf();
    run_local(move || async move {
        let log = open(&d, config(), small_limits(), clock()).await;
        for i in from..to {
            log.append(nth_batch(i), Term(1)).await.expect("append");
            if i % 7 == 0 {
                log.flush().await.expect("flush");
            }
        }
        let end = log.flush().await.expect("flush");
        log.close().await.expect("close");
        end
    })
}

/// Reopens the log, reads every batch from the start, and closes it: (end offset, batches).
fn reopen_and_read_all(dir: &Path) -> (Offset, Vec<Bytes>) {
    let d = dir.to_path_buf();
    run_local(move || async move {
        let log = open(&d, config(), small_limits(), clock()).await;
        let end = log.end_offset();
        let mut at = log.start_offset();
        let mut out = Vec::new();
        while at < end {
            let got = log.read(at, 64 * 1024, end).await.expect("read");
            assert!(
                !got.is_empty(),
                "read at {at} below the end {end} returned nothing"
            );
            for b in got {
                let h = BatchHeader::read(&b);
                assert_eq!(h.base_offset, at, "offsets are consecutive");
                Batch::parse(b.clone()).expect("every batch served is valid");
                at = h.last_offset().plus(1);
                out.push(b);
            }
        }
        assert_eq!(at, end);
        log.close().await.expect("close");
        (end, out)
    })
}

/// `.log` files by base offset.
fn segments(dir: &Path) -> BTreeMap<i64, PathBuf> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| {
            let e = e.expect("entry");
            let name = e.file_name().to_string_lossy().into_owned();
            let base = name.strip_suffix(".log")?.parse().ok()?;
            Some((base, e.path()))
        })
        .collect()
}

/// The batches of the segment starting at `base` (ending before `next`), with their byte
/// positions in the segment file, checked against the file's bytes.
fn layout(path: &Path, batches: &[Bytes], base: i64, next: Option<i64>) -> Vec<(u64, Bytes)> {
    let file = std::fs::read(path).expect("read segment");
    let mut pos = 0u64;
    let mut out = Vec::new();
    for b in batches {
        let h = BatchHeader::read(b);
        if h.base_offset.0 < base || next.is_some_and(|n| h.base_offset.0 >= n) {
            continue;
        }
        let at = pos as usize;
        assert_eq!(
            &file[at..at + b.len()],
            &b[..],
            "layout of {} at {at}",
            path.display()
        );
        out.push((pos, b.clone()));
        pos += b.len() as u64;
    }
    out
}

/// XORs `mask` into the byte at `pos`.
fn flip(path: &Path, pos: u64, mask: u8) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes[pos as usize] ^= mask;
    std::fs::write(path, bytes).expect("write");
}

/// Overwrites 4 bytes at `pos`.
fn put_u32(path: &Path, pos: u64, v: u32) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes[pos as usize..pos as usize + 4].copy_from_slice(&v.to_be_bytes());
    std::fs::write(path, bytes).expect("write");
}

#[derive(Clone, Copy, Debug)]
enum TailDamage {
    /// A byte of the records (covered by the CRC).
    RecordByte,
    /// A byte of the stored CRC itself.
    CrcField,
    /// The magic byte.
    Magic,
    /// `batchLength` made huge: the batch would run past the end of the file.
    LengthHuge,
    /// `batchLength` one byte short: the CRC no longer matches the bytes it covers.
    LengthShort,
}

#[test]
fn corrupt_batch_at_the_tail_of_the_active_segment_is_cut_off() {
    use TailDamage::*;
    for from_end in [1usize, 2] {
        for damage in [RecordByte, CrcField, Magic, LengthHuge, LengthShort] {
            let dir = tempfile::tempdir_in("/tmp").expect("tempdir");
            let end = append_batches(dir.path(), 0, 400);
            let (end_read, original) = reopen_and_read_all(dir.path());
            assert_eq!(end_read, end);
            let segs = segments(dir.path());
            assert!(segs.len() >= 3, "rolled: {segs:?}");
            let (&active_base, active_path) = segs.iter().next_back().expect("active");
            let active = layout(active_path, &original, active_base, None);
            assert!(active.len() >= 4, "the active segment holds a few batches");
            let (pos, victim) = &active[active.len() - from_end];
            let victim_base = BatchHeader::read(victim).base_offset;
            match damage {
                RecordByte => flip(active_path, pos + victim.len() as u64 - 3, 0x20),
                CrcField => flip(active_path, pos + 18, 0x01),
                Magic => flip(active_path, pos + 16, 0x03),
                LengthHuge => put_u32(active_path, pos + 8, 0x00ff_ffff),
                LengthShort => put_u32(active_path, pos + 8, (victim.len() - 12 - 1) as u32),
            }
            let case = format!("{damage:?}, batch {from_end} from the end at {victim_base}");

            let (end, kept) = reopen_and_read_all(dir.path());
            assert_eq!(
                end, victim_base,
                "{case}: the log ends at the corrupt batch"
            );
            let n_kept = original.len() - from_end;
            assert_eq!(kept.len(), n_kept, "{case}");
            assert!(
                kept[..] == original[..n_kept],
                "{case}: the batches before it read back"
            );

            // Appends go on from the cut, and survive another reopen.
            let new_end = append_batches(dir.path(), 1000, 1010);
            let (end2, after) = reopen_and_read_all(dir.path());
            assert_eq!(end2, new_end, "{case}");
            assert!(new_end > victim_base, "{case}");
            assert_eq!(after.len(), n_kept + 10, "{case}");
            assert!(
                after[..n_kept] == original[..n_kept],
                "{case}: old batches unchanged"
            );
            assert_eq!(
                BatchHeader::read(&after[n_kept]).base_offset,
                victim_base,
                "{case}"
            );
            for (i, b) in after[n_kept..].iter().enumerate() {
                let want = nth_batch(1000 + i as u64);
                assert_eq!(
                    &b[21..],
                    &want[21..],
                    "{case}: new batch {i} holds what was appended"
                );
            }
        }
    }
}

#[test]
fn corrupt_batch_in_a_sealed_segment_fails_its_reads_and_nothing_else() {
    let dir = tempfile::tempdir_in("/tmp").expect("tempdir");
    append_batches(dir.path(), 0, 600);
    let (end, original) = reopen_and_read_all(dir.path());
    let segs = segments(dir.path());
    assert!(segs.len() >= 4, "rolled: {segs:?}");
    let bases: Vec<i64> = segs.keys().copied().collect();
    let (base, next) = (bases[1], bases[2]);
    let path = segs[&base].clone();
    let batches = layout(&path, &original, base, Some(next));
    let size = std::fs::metadata(&path).expect("metadata").len();
    let mid = size / 2;
    let victim_i = batches
        .iter()
        .position(|(p, b)| *p <= mid && mid < p + b.len() as u64)
        .expect("a batch holds the middle byte");
    let (vpos, victim) = batches[victim_i].clone();
    let vh = BatchHeader::read(&victim);
    // The middle of the batch's CRC-covered bytes (baseOffset and the term are not covered).
    flip(&path, vpos + 21 + (victim.len() as u64 - 21) / 2, 0x5a);

    let path2 = path.clone();
    run_local(move || async move {
        let log = open(dir.path(), config(), small_limits(), clock()).await;
        assert_eq!(
            log.end_offset(),
            end,
            "sealed segments with a valid index are not rescanned"
        );
        let is_corrupt = |r: &Result<Vec<Bytes>, StorageError>| matches!(r, Err(StorageError::Corrupt { path, .. }) if *path == path2);
        // Every offset of the corrupt batch: a Corrupt error naming the segment, every time.
        for o in vh.base_offset.0..=vh.last_offset().0 {
            for max_bytes in [1, 1 << 20] {
                let r = log.read(Offset(o), max_bytes, end).await;
                assert!(is_corrupt(&r), "read at {o}: {:?}", r.map(|v| v.len()));
            }
        }
        // Every other batch: either exactly what was written, or (when the read has to walk
        // over the corrupt batch from an index entry before it) a Corrupt error. Never garbage.
        // Batches before it in its segment, and in every other segment, read fine.
        for b in &original {
            let h = BatchHeader::read(b);
            if h.base_offset == vh.base_offset {
                continue;
            }
            let r = log.read(h.base_offset, 1, end).await;
            let in_victim_segment = h.base_offset.0 >= base && h.base_offset.0 < next;
            let must_work = !in_victim_segment || h.base_offset < vh.base_offset;
            match r {
                Ok(got) => {
                    assert_eq!(got.len(), 1, "read at {}", h.base_offset);
                    assert_eq!(&got[0], b, "read at {}", h.base_offset);
                }
                Err(e) => {
                    assert!(!must_work, "read at {} fails: {e:?}", h.base_offset);
                    assert!(
                        matches!(e, StorageError::Corrupt { .. }),
                        "read at {}: {e:?}",
                        h.base_offset
                    );
                }
            }
        }
        // A long read that runs into the corrupt batch fails as a whole.
        let r = log.read(Offset(base), 1 << 20, end).await;
        assert!(
            is_corrupt(&r),
            "read over the corrupt batch: {:?}",
            r.map(|v| v.len())
        );
        // The active segment is unaffected: the log still takes appends.
        let info = log.append(nth_batch(5000), Term(1)).await.expect("append");
        assert_eq!(info.base_offset, end);
        log.flush().await.expect("flush");
        log.close().await.expect("close");
    });
}

#[derive(Clone, Copy, Debug)]
enum IndexDamage {
    Delete,
    TruncateHalf,
    TruncateEmpty,
    Garbage,
    /// A valid header but one flipped payload byte (caught by the file's CRC32C).
    PayloadByte,
    /// The index of another segment (valid on its own, wrong for this one).
    OtherSegments,
}

fn damage_file(path: &Path, other: &Path, damage: IndexDamage) {
    match damage {
        IndexDamage::Delete => std::fs::remove_file(path).expect("remove"),
        IndexDamage::TruncateHalf => {
            let len = std::fs::metadata(path).expect("metadata").len();
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(len / 2))
                .expect("truncate");
        }
        IndexDamage::TruncateEmpty => std::fs::write(path, b"").expect("truncate"),
        IndexDamage::Garbage => {
            let len = std::fs::metadata(path).expect("metadata").len() as usize;
            let junk: Vec<u8> = (0..len)
                .map(|i| (i as u8).wrapping_mul(151).wrapping_add(7))
                .collect();
            std::fs::write(path, junk).expect("write");
        }
        IndexDamage::PayloadByte => {
            let len = std::fs::metadata(path).expect("metadata").len();
            assert!(len > 20);
            flip(path, 16 + (len - 16) / 2, 0x10);
        }
        IndexDamage::OtherSegments => {
            std::fs::copy(other, path).expect("copy");
        }
    }
}

#[test]
fn damaged_or_missing_index_files_are_rebuilt() {
    use IndexDamage::*;
    let dir = tempfile::tempdir_in("/tmp").expect("tempdir");
    append_batches(dir.path(), 0, 600);
    let (end, original) = reopen_and_read_all(dir.path());
    let segs = segments(dir.path());
    assert!(segs.len() >= 4, "rolled: {segs:?}");
    let bases: Vec<i64> = segs.keys().copied().collect();
    let target = segs[&bases[1]].clone();
    let other = segs[&bases[2]].clone();
    assert_ne!(
        std::fs::metadata(&target).expect("metadata").len(),
        std::fs::metadata(&other).expect("metadata").len(),
        "the other segment's index does not fit this one"
    );
    // Timestamps of a few batches, for time lookups that go through the time index.
    let probes: Vec<TimestampMs> = original
        .iter()
        .step_by(9)
        .map(|b| BatchHeader::read(b).max_timestamp)
        .collect();
    let lookups = |dir: PathBuf, probes: Vec<TimestampMs>| {
        run_local(move || async move {
            let log = open(&dir, config(), small_limits(), clock()).await;
            let mut out = Vec::new();
            for ts in probes {
                let r = log
                    .offset_for_timestamp(ts)
                    .await
                    .expect("offset for timestamp");
                out.push(r.map(|(o, t)| (o.0, t.0)));
            }
            // Point reads through the offset index, batch by batch.
            let mut reads = Vec::new();
            let mut at = log.start_offset();
            while at < log.end_offset() {
                let got = log.read(at, 1, log.end_offset()).await.expect("point read");
                assert_eq!(got.len(), 1);
                at = BatchHeader::read(&got[0]).last_offset().plus(1);
                reads.push(got[0].clone());
            }
            log.close().await.expect("close");
            (out, reads)
        })
    };
    let (times_before, _) = lookups(dir.path().to_path_buf(), probes.clone());
    assert!(times_before.iter().all(|t| t.is_some()));

    for ext in ["index", "timeindex"] {
        for damage in [
            Delete,
            TruncateHalf,
            TruncateEmpty,
            Garbage,
            PayloadByte,
            OtherSegments,
        ] {
            let case = format!("{damage:?} .{ext}");
            let path = target.with_extension(ext);
            let other_index = other.with_extension(ext);
            let before_index = std::fs::read(target.with_extension("index")).expect("index");
            let before_times =
                std::fs::read(target.with_extension("timeindex")).expect("timeindex");
            damage_file(&path, &other_index, damage);

            let (end2, batches) = reopen_and_read_all(dir.path());
            assert_eq!(end2, end, "{case}");
            assert!(
                batches == original,
                "{case}: every batch reads back the same"
            );
            assert!(path.exists(), "{case}: rebuilt");
            assert_eq!(
                std::fs::read(target.with_extension("index")).expect("index"),
                before_index,
                "{case}: the rebuilt .index equals the one written when the segment was sealed"
            );
            let times_now = std::fs::read(target.with_extension("timeindex")).expect("timeindex");
            if matches!(damage, OtherSegments) && ext == "timeindex" {
                // Known gap (see the storage report): a `.timeindex` with a valid checksum is
                // not checked against its segment (base offset, offsets, timestamps), so
                // another segment's copy is accepted as is. Lookups must still be right.
                if times_now != before_times {
                    println!("{case}: accepted without a rebuild");
                }
            } else {
                assert_eq!(
                    times_now, before_times,
                    "{case}: the rebuilt .timeindex equals the one written when the segment was sealed"
                );
            }
            let (times, reads) = lookups(dir.path().to_path_buf(), probes.clone());
            assert_eq!(times, times_before, "{case}: time lookups");
            assert!(reads == original, "{case}: point reads");
            // Put the original back if it was accepted as is (the known gap above), so the
            // next case starts from the sealed state.
            std::fs::write(target.with_extension("timeindex"), &before_times).expect("restore");
        }
    }

    // Every sealed segment's indexes gone at once.
    for (base, p) in segs.iter().take(segs.len() - 1) {
        for ext in ["index", "timeindex"] {
            std::fs::remove_file(p.with_extension(ext))
                .unwrap_or_else(|e| panic!("{base}.{ext}: {e}"));
        }
    }
    let (end3, batches) = reopen_and_read_all(dir.path());
    assert_eq!(end3, end);
    assert!(batches == original, "all indexes rebuilt: same batches");
    for p in segs.values().take(segs.len() - 1) {
        assert!(p.with_extension("index").exists() && p.with_extension("timeindex").exists());
    }
    let (times, reads) = lookups(dir.path().to_path_buf(), probes);
    assert_eq!(times, times_before);
    assert!(reads == original);
}

/// `baseOffset` is not covered by the batch CRC, so a read must check offsets itself: a batch in
/// a sealed segment whose stored base offset went backwards is corruption, not data.
#[test]
fn corrupt_base_offset_in_a_sealed_segment_is_not_served() {
    let dir = tempfile::tempdir_in("/tmp").expect("tempdir");
    append_batches(dir.path(), 0, 600);
    let (end, original) = reopen_and_read_all(dir.path());
    let segs = segments(dir.path());
    let bases: Vec<i64> = segs.keys().copied().collect();
    let path = segs[&bases[1]].clone();
    let batches = layout(&path, &original, bases[1], Some(bases[2]));
    let (vpos, victim) = batches[batches.len() / 2].clone();
    let vh = BatchHeader::read(&victim);
    // The base offset moves back by more than the previous batch holds.
    let bad = vh.base_offset.0 - 100;
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[vpos as usize..vpos as usize + 8].copy_from_slice(&bad.to_be_bytes());
    std::fs::write(&path, bytes).expect("write");
    run_local(move || async move {
        let log = open(dir.path(), config(), small_limits(), clock()).await;
        assert_eq!(log.end_offset(), end);
        let r = log.read(vh.base_offset, 1, end).await;
        match r {
            Err(StorageError::Corrupt { .. }) => {}
            Ok(got) => panic!(
                "read at {} served the batch at {} (records {}..={} skipped silently)",
                vh.base_offset,
                BatchHeader::read(&got[0]).base_offset,
                vh.base_offset,
                vh.last_offset()
            ),
            Err(e) => panic!("read at {}: {e:?}", vh.base_offset),
        }
        log.close().await.expect("close");
    });
}
