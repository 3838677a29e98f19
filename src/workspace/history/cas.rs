//! The object store of workspace history: file contents by the SHA-256 of their bytes, each
//! written once (`objects/ab/cdef…`), and trees (`trees/<id>`). Objects are copies, never hard
//! links to workspace files: an agent writing through a link would rewrite history.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Contents up to this size are read into memory, hashed and written only if new; larger ones
/// are streamed into a temp file while hashed (one read of the workspace either way).
const IN_MEMORY_MAX: u64 = 4 << 20;

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone)]
pub(crate) struct Cas {
    root: PathBuf,
}

fn io(what: &str, e: std::io::Error) -> Error {
    Error::internal(format!("history: cannot {what}: {e}"))
}

impl Cas {
    pub(crate) fn open(root: &Path) -> Result<Cas> {
        for d in ["objects", "trees", "tmp"] {
            std::fs::create_dir_all(root.join(d)).map_err(|e| io("create the store", e))?;
        }
        Ok(Cas {
            root: root.to_path_buf(),
        })
    }

    pub(crate) fn blob_path(&self, hash: &str) -> PathBuf {
        let (a, b) = hash.split_at(hash.len().min(2));
        self.root.join("objects").join(a).join(b)
    }

    pub(crate) fn tree_path(&self, id: &str) -> PathBuf {
        self.root.join("trees").join(id)
    }

    pub(crate) fn objects_dir(&self) -> PathBuf {
        self.root.join("objects")
    }

    pub(crate) fn trees_dir(&self) -> PathBuf {
        self.root.join("trees")
    }

    fn temp(&self) -> PathBuf {
        let n = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{}-{n}", std::process::id()))
    }

    /// Stores `size` bytes read from `src`; returns the hash and the bytes newly stored (0 when
    /// the content was already there).
    pub(crate) fn put_reader(&self, src: &mut impl Read, size: u64) -> Result<(String, u64)> {
        if size <= IN_MEMORY_MAX {
            let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            src.read_to_end(&mut buf)
                .map_err(|e| io("read a file", e))?;
            return self.put_bytes(&buf);
        }
        let tmp = self.temp();
        let mut out = std::fs::File::create(&tmp).map_err(|e| io("create a temp object", e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut n_total = 0u64;
        loop {
            let n = src.read(&mut buf).map_err(|e| io("read a file", e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| io("write an object", e))?;
            n_total += n as u64;
        }
        drop(out);
        let hash = hex::encode(hasher.finalize());
        let dest = self.blob_path(&hash);
        if touch(&dest) {
            let _ = std::fs::remove_file(&tmp);
            return Ok((hash, 0));
        }
        self.install(&tmp, &dest)?;
        Ok((hash, n_total))
    }

    pub(crate) fn put_bytes(&self, bytes: &[u8]) -> Result<(String, u64)> {
        let hash = hex::encode(Sha256::digest(bytes));
        let dest = self.blob_path(&hash);
        if touch(&dest) {
            return Ok((hash, 0));
        }
        let tmp = self.temp();
        std::fs::write(&tmp, bytes).map_err(|e| io("write an object", e))?;
        self.install(&tmp, &dest)?;
        Ok((hash, bytes.len() as u64))
    }

    /// Renames a finished temp file into place; readers never see a partial object.
    fn install(&self, tmp: &Path, dest: &Path) -> Result<()> {
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io("create an object dir", e))?;
        }
        std::fs::rename(tmp, dest).map_err(|e| io("install an object", e))
    }

    /// Whether tree `id` is stored; found, it is touched (see `gc::GRACE`).
    pub(crate) fn keep_tree(&self, id: &str) -> bool {
        touch(&self.tree_path(id))
    }

    /// Stores listing `json` as tree `id`, replacing one stored under it (the same content with
    /// older stats) in one rename.
    pub(crate) fn put_tree(&self, id: &str, json: &[u8]) -> Result<()> {
        let dest = self.tree_path(id);
        let tmp = self.temp();
        std::fs::write(&tmp, json).map_err(|e| io("write a tree", e))?;
        std::fs::rename(&tmp, &dest).map_err(|e| io("install a tree", e))
    }

    pub(crate) fn read_tree(&self, id: &str) -> Result<Option<Vec<u8>>> {
        match std::fs::read(self.tree_path(id)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("read a tree", e)),
        }
    }

    pub(crate) fn open_blob(&self, hash: &str) -> Result<std::fs::File> {
        std::fs::File::open(self.blob_path(hash)).map_err(|e| io("open an object", e))
    }
}

/// True when `path` exists; its mtime is set to now so a collection running meanwhile keeps it
/// (see `gc::GRACE`).
fn touch(path: &Path) -> bool {
    std::fs::File::options()
        .append(true)
        .open(path)
        .and_then(|f| f.set_modified(std::time::SystemTime::now()))
        .is_ok()
}

/// True for a lowercase 64-hex id, the only shape a tree or blob name may have (ids come from
/// the store, and are joined to paths).
pub(crate) fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
