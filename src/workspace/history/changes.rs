//! Exact changes between two snapshots: added, modified (content, mode, or kind — a file that
//! became a symlink, a link with a new target), deleted, and renamed (a deleted path whose exact
//! content reappears at an added path, git's 100% similarity). Directories are not reported.

use super::{Tree, TreeEntry};
use crate::domain::{ChangeKind, FileChange, FileKind};
use std::collections::{BTreeMap, HashMap};

fn reportable(e: &TreeEntry) -> bool {
    e.kind != FileKind::Directory
}

/// What identifies a content across paths for rename pairing (is a symlink, blob or target).
fn content_key(e: &TreeEntry) -> Option<(bool, &str)> {
    match e.kind {
        FileKind::Regular => e.blob.as_deref().map(|b| (false, b)),
        FileKind::Symlink => e.target.as_deref().map(|t| (true, t)),
        FileKind::Directory => None,
    }
}

/// The changes from `before` to `after`, sorted by path (a rename sorts by its new path).
pub fn changes(before: &Tree, after: &Tree) -> Vec<FileChange> {
    let mut out: BTreeMap<String, FileChange> = BTreeMap::new();
    let mut added: Vec<(&str, &TreeEntry)> = Vec::new();
    for (path, a) in after.entries.iter().filter(|(_, e)| reportable(e)) {
        match before.entries.get(path).filter(|b| reportable(b)) {
            Some(b) if b.same_content(a) => {}
            Some(b) => {
                out.insert(
                    path.clone(),
                    change(path, ChangeKind::Modified, Some(b), Some(a)),
                );
            }
            None => added.push((path, a)),
        }
    }
    let mut deleted: HashMap<(bool, &str), Vec<(&str, &TreeEntry)>> = HashMap::new();
    let mut plain_deleted: Vec<(&str, &TreeEntry)> = Vec::new();
    for (path, b) in before.entries.iter().filter(|(_, e)| reportable(e)) {
        if after.entries.get(path).is_some_and(reportable) {
            continue;
        }
        match content_key(b) {
            Some(k) => deleted.entry(k).or_default().push((path, b)),
            None => plain_deleted.push((path, b)),
        }
    }
    // Pair in path order so the result does not depend on hashing.
    for v in deleted.values_mut() {
        v.sort_by(|x, y| y.0.cmp(x.0));
    }
    for (path, a) in added {
        let source = content_key(a)
            .and_then(|k| deleted.get_mut(&k))
            .and_then(Vec::pop);
        let c = match source {
            Some((from, b)) => {
                let mut c = change(path, ChangeKind::Renamed, Some(b), Some(a));
                c.from_path = Some(from.to_owned());
                c
            }
            None => change(path, ChangeKind::Added, None, Some(a)),
        };
        out.insert(path.to_owned(), c);
    }
    for (path, b) in deleted.into_values().flatten().chain(plain_deleted) {
        out.insert(
            path.to_owned(),
            change(path, ChangeKind::Deleted, Some(b), None),
        );
    }
    out.into_values().collect()
}

fn change(
    path: &str,
    kind: ChangeKind,
    before: Option<&TreeEntry>,
    after: Option<&TreeEntry>,
) -> FileChange {
    FileChange {
        path: path.to_owned(),
        kind,
        entry: after.map(|e| e.describe(path)),
        from_path: None,
        before: before.map(|e| e.describe(path)),
    }
}
