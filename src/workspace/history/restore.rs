//! Materializing a snapshot: a fresh directory filled from the store. Writing into a directory
//! this function created itself (never into a live workspace) is what makes it safe: no entry in
//! it was made by an agent, so plain path operations cannot be redirected by a symlink.

use super::{History, Tree};
use crate::domain::FileKind;
use crate::error::{Error, Result};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

fn io(what: &str, path: &str, e: std::io::Error) -> Error {
    Error::internal(format!("history: cannot restore {what} {path:?}: {e}"))
}

pub(super) fn restore_into(h: &History, tree: &Tree, dest: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dest)
        .map_err(|e| io("into", &dest.display().to_string(), e))?;
    // BTreeMap order puts every directory before what it holds.
    for (path, e) in &tree.entries {
        if path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(Error::internal(format!(
                "history: tree holds a bad path {path:?}"
            )));
        }
        let target = dest.join(path);
        match e.kind {
            FileKind::Directory => std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&target)
                .map_err(|err| io("directory", path, err))?,
            FileKind::Symlink => {
                std::os::unix::fs::symlink(e.target.as_deref().unwrap_or(""), &target)
                    .map_err(|err| io("symlink", path, err))?
            }
            FileKind::Regular => {
                let blob = e.blob.as_deref().unwrap_or("");
                let mut src = h.open_blob(blob)?;
                let mut out =
                    std::fs::File::create(&target).map_err(|err| io("file", path, err))?;
                std::io::copy(&mut src, &mut out).map_err(|err| io("file", path, err))?;
                out.set_permissions(std::fs::Permissions::from_mode(e.mode & 0o7777))
                    .map_err(|err| io("mode of", path, err))?;
            }
        }
    }
    // Directory modes last: a read-only directory would refuse its own entries.
    for (path, e) in tree.entries.iter().rev() {
        if e.kind == FileKind::Directory {
            std::fs::set_permissions(
                dest.join(path),
                std::fs::Permissions::from_mode(e.mode & 0o7777),
            )
            .map_err(|err| io("mode of", path, err))?;
        }
    }
    Ok(())
}
