//! Unified diffs between two snapshots, in git's format (`diff --git`, mode and rename headers,
//! `Binary files … differ`) so `git apply` takes them. Produced one file at a time so the API can
//! stream it; a byte cap ends the diff with a marker line instead of growing without bound.

use super::{History, Tree, TreeEntry};
use crate::domain::{ChangeKind, FileChange, FileKind};
use crate::error::Result;
use similar::TextDiff;
use std::fmt::Write;

/// Files larger than this are not diffed line by line (marked instead).
pub const MAX_FILE_BYTES: u64 = 8 << 20;

/// The marker that ends a diff cut at its byte cap.
pub const TRUNCATED_MARKER: &str = "# agentd: diff truncated at the byte cap\n";

/// What a diff shows.
#[derive(Debug, Clone)]
pub struct DiffOptions {
    /// Only changes at or under these paths (empty: all).
    pub paths: Vec<String>,
    pub context_lines: usize,
    /// Bytes of diff text after which the rest is cut.
    pub max_bytes: u64,
}

pub fn selected(change: &FileChange, paths: &[String]) -> bool {
    let under = |p: &str| {
        paths.iter().any(|sel| {
            let sel = sel.trim_end_matches('/');
            sel.is_empty() || p == sel || p.strip_prefix(sel).is_some_and(|r| r.starts_with('/'))
        })
    };
    paths.is_empty() || under(&change.path) || change.from_path.as_deref().is_some_and(under)
}

fn git_mode(e: &TreeEntry) -> String {
    match e.kind {
        FileKind::Symlink => "120000".into(),
        _ if e.mode & 0o111 != 0 => "100755".into(),
        _ => "100644".into(),
    }
}

/// Text of one side: the content, a link's target, or nothing.
enum Side {
    Absent,
    Text(String),
    Binary,
    TooLarge,
}

fn side(h: &History, e: Option<&TreeEntry>) -> Result<Side> {
    let Some(e) = e else { return Ok(Side::Absent) };
    match e.kind {
        FileKind::Symlink => Ok(Side::Text(e.target.clone().unwrap_or_default())),
        FileKind::Directory => Ok(Side::Absent),
        FileKind::Regular if e.size > MAX_FILE_BYTES => Ok(Side::TooLarge),
        FileKind::Regular => {
            let bytes = match &e.blob {
                Some(b) => h.read_blob(b)?,
                None => Vec::new(),
            };
            // git's rule: a NUL in the first 8000 bytes makes a file binary.
            if bytes.iter().take(8000).any(|&b| b == 0) {
                return Ok(Side::Binary);
            }
            Ok(String::from_utf8(bytes).map_or(Side::Binary, Side::Text))
        }
    }
}

/// The diff text of one change (before → after trees).
pub fn file_diff(
    h: &History,
    before: &Tree,
    after: &Tree,
    c: &FileChange,
    context: usize,
) -> Result<String> {
    let old_path = c.from_path.as_deref().unwrap_or(&c.path);
    let old = match c.kind {
        ChangeKind::Added => None,
        _ => before.get(old_path),
    };
    let new = match c.kind {
        ChangeKind::Deleted => None,
        _ => after.get(&c.path),
    };
    let mut out = String::new();
    let _ = writeln!(out, "diff --git a/{old_path} b/{}", c.path);
    // A change of kind (file ↔ symlink) is a deletion and an addition in git's terms.
    if let (Some(o), Some(n)) = (old, new)
        && o.kind != n.kind
    {
        let mut del = c.clone();
        del.kind = ChangeKind::Deleted;
        let mut add = c.clone();
        add.kind = ChangeKind::Added;
        return Ok(file_diff(h, before, after, &del, context)?
            + &file_diff(h, before, after, &add, context)?);
    }
    match (old, new) {
        (None, Some(n)) => {
            let _ = writeln!(out, "new file mode {}", git_mode(n));
        }
        (Some(o), None) => {
            let _ = writeln!(out, "deleted file mode {}", git_mode(o));
        }
        (Some(o), Some(n)) => {
            if git_mode(o) != git_mode(n) {
                let _ = writeln!(out, "old mode {}\nnew mode {}", git_mode(o), git_mode(n));
            }
            if c.kind == ChangeKind::Renamed {
                let _ = writeln!(
                    out,
                    "similarity index 100%\nrename from {old_path}\nrename to {}",
                    c.path
                );
            }
        }
        (None, None) => return Ok(String::new()),
    }
    let a_name = if old.is_some() {
        format!("a/{old_path}")
    } else {
        "/dev/null".into()
    };
    let b_name = if new.is_some() {
        format!("b/{}", c.path)
    } else {
        "/dev/null".into()
    };
    if old.is_some_and(|o| new.is_some_and(|n| o.blob == n.blob && o.target == n.target)) {
        return Ok(out);
    }
    match (side(h, old)?, side(h, new)?) {
        (Side::Binary, _) | (_, Side::Binary) => {
            let _ = writeln!(out, "Binary files {a_name} and {b_name} differ");
        }
        (Side::TooLarge, _) | (_, Side::TooLarge) => {
            let _ = writeln!(
                out,
                "# agentd: file larger than {MAX_FILE_BYTES} bytes, not diffed"
            );
        }
        (a, b) => {
            let text = |s: Side| match s {
                Side::Text(t) => t,
                _ => String::new(),
            };
            let (a, b) = (text(a), text(b));
            let td = TextDiff::from_lines(&a, &b);
            let _ = writeln!(out, "--- {a_name}\n+++ {b_name}");
            let mut ud = td.unified_diff();
            ud.context_radius(context).missing_newline_hint(true);
            for hunk in ud.iter_hunks() {
                let _ = write!(out, "{hunk}");
            }
        }
    }
    Ok(out)
}
