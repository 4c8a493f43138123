//! Small checked files (indexes, checkpoints) written and read through glommio DMA files.
//!
//! Runs on the owning core. Format: `magic u32 "RLG1", payload_len u32, crc32c(payload) u32,
//! reserved u32, payload`, padded with zeros to the 4 KiB alignment and then truncated to the
//! exact length. Written to `<name>.tmp`, synced, renamed over `<name>`: a reader sees the old
//! file or the new one, never half of one. The caller syncs the directory when the rename must
//! be durable.

use std::path::{Path, PathBuf};

use bytes::{Buf, BufMut, BytesMut};
use glommio::io::{DmaFile, OpenOptions};

use crate::error::{Result, StorageError};

const MAGIC: u32 = 0x524c_4731;
const HEADER_BYTES: usize = 16;

/// Writes `payload` to `path` atomically (tmp + fdatasync + rename).
pub async fn write_checked(path: &Path, payload: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(&tmp)
        .await
        .map_err(|e| StorageError::glommio("creating", &tmp, e))?;
    let len = HEADER_BYTES + payload.len();
    let aligned = file.align_up(len as u64) as usize;
    let mut buf = file.alloc_dma_buffer(aligned);
    let bytes = buf.as_bytes_mut();
    bytes.fill(0);
    let mut head = BytesMut::with_capacity(HEADER_BYTES);
    head.put_u32(MAGIC);
    head.put_u32(payload.len() as u32);
    head.put_u32(crc32c::crc32c(payload));
    head.put_u32(0);
    bytes[..HEADER_BYTES].copy_from_slice(&head);
    bytes[HEADER_BYTES..len].copy_from_slice(payload);
    let result = async {
        file.write_at(buf, 0).await?;
        file.truncate(len as u64).await?;
        file.fdatasync().await?;
        file.rename(path).await?;
        Ok::<_, glommio::GlommioError<()>>(())
    }
    .await;
    let _ = file.close().await;
    result.map_err(|e| StorageError::glommio("writing", path, e))
}

/// What reading a checked file found.
enum Checked {
    Missing,
    Damaged(String),
    Valid(Vec<u8>),
}

async fn read_and_check(path: &Path) -> Result<Checked> {
    let file = match DmaFile::open(path).await {
        Ok(f) => f,
        Err(e) => {
            let e: std::io::Error = e.into();
            if e.kind() == std::io::ErrorKind::NotFound {
                return Ok(Checked::Missing);
            }
            return Err(StorageError::io("opening", path, e));
        }
    };
    let result = async {
        let size = file.file_size().await?;
        let data = file.read_at(0, size as usize).await?;
        Ok::<_, glommio::GlommioError<()>>(data.to_vec())
    }
    .await;
    let _ = file.close().await;
    let data = result.map_err(|e| StorageError::glommio("reading", path, e))?;
    if data.len() < HEADER_BYTES {
        return Ok(Checked::Damaged(format!(
            "{} bytes, shorter than the header",
            data.len()
        )));
    }
    let mut h = &data[..HEADER_BYTES];
    let (magic, len, crc) = (h.get_u32(), h.get_u32() as usize, h.get_u32());
    if magic != MAGIC {
        return Ok(Checked::Damaged(format!("bad magic {magic:#x}")));
    }
    if data.len() != HEADER_BYTES + len {
        return Ok(Checked::Damaged(format!(
            "{} bytes, the header says {}",
            data.len(),
            HEADER_BYTES + len
        )));
    }
    let payload = &data[HEADER_BYTES..];
    if crc32c::crc32c(payload) != crc {
        return Ok(Checked::Damaged("checksum mismatch".into()));
    }
    Ok(Checked::Valid(payload.to_vec()))
}

/// Reads a file written by [`write_checked`]. `Ok(None)` when it is missing, short, or fails its
/// checksum: the caller rebuilds what it held.
pub async fn read_checked(path: &Path) -> Result<Option<Vec<u8>>> {
    Ok(match read_and_check(path).await? {
        Checked::Valid(p) => Some(p),
        Checked::Missing | Checked::Damaged(_) => None,
    })
}

/// Like [`read_checked`], for state that can not be rebuilt (a Raft vote): `Ok(None)` only
/// when the file is missing; a damaged file is [`StorageError::Corrupt`].
pub async fn read_checked_strict(path: &Path) -> Result<Option<Vec<u8>>> {
    match read_and_check(path).await? {
        Checked::Valid(p) => Ok(Some(p)),
        Checked::Missing => Ok(None),
        Checked::Damaged(reason) => Err(StorageError::Corrupt {
            path: path.to_path_buf(),
            position: 0,
            reason,
        }),
    }
}

/// Removes a file, treating "already gone" as success.
pub async fn remove_if_exists(path: &Path) -> Result<()> {
    let p = path.to_path_buf();
    // unlink is a metadata operation with no io_uring-free glommio equivalent for a closed
    // file; it is rare (segment deletion), so the short blocking call is accepted here.
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io("removing", p, e)),
    }
}

/// Syncs a directory so that creations, renames and deletions in it are durable.
pub async fn sync_dir(dir: &Path) -> Result<()> {
    let d = glommio::io::Directory::open(dir)
        .await
        .map_err(|e| StorageError::glommio("opening directory", dir, e))?;
    let r = d.sync().await;
    let _ = d.close().await;
    r.map_err(|e| StorageError::glommio("syncing directory", dir, e))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}
