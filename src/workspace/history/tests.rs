use super::*;
use crate::domain::ChangeKind;
use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;

struct Fx {
    _dir: tempfile::TempDir,
    ws: std::path::PathBuf,
    h: History,
}

fn fx() -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    let h = History::open(&dir.path().join("history")).unwrap();
    Fx { _dir: dir, ws, h }
}

impl Fx {
    fn write(&self, p: &str, c: &str) {
        let path = self.ws.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, c).unwrap();
    }
    fn take(&self, prev: Option<&Tree>) -> Taken {
        let fd = crate::workspace::fsops::open_root(&self.ws)
            .unwrap()
            .unwrap();
        self.h.take(fd, prev, None).unwrap()
    }
}

fn kinds(c: &[crate::domain::FileChange]) -> Vec<(String, ChangeKind, Option<String>)> {
    c.iter()
        .map(|c| (c.path.clone(), c.kind, c.from_path.clone()))
        .collect()
}

#[test]
fn identical_content_is_stored_once_and_unchanged_files_are_not_read() {
    let f = fx();
    f.write("a.txt", "same\n");
    f.write("d/b.txt", "same\n");
    f.write("big", &"x".repeat(100_000));
    let first = f.take(None);
    assert_eq!(first.stats.files, 3);
    assert_eq!(
        first.stats.bytes_added,
        5 + 100_000,
        "duplicate content costs nothing"
    );
    // Old enough for the racy-timestamp rule to trust the stat.
    std::thread::sleep(std::time::Duration::from_millis(120));
    let mut prev = Tree::clone(&first.tree);
    prev.taken_ns += 200_000_000;
    f.write("a.txt", "changed\n");
    let second = f.take(Some(&prev));
    assert_eq!(second.stats.files_read, 1, "only the changed file is read");
    assert_eq!(second.stats.bytes_added, 8);
    let mut content = String::new();
    std::io::Read::read_to_string(
        &mut f.h.open_file(&first.tree, "a.txt").unwrap(),
        &mut content,
    )
    .unwrap();
    assert_eq!(
        content, "same\n",
        "the old snapshot still reads the old bytes"
    );
    assert_eq!(
        f.h.tree(&first.id).unwrap(),
        *first.tree,
        "survives a reopen"
    );
}

#[test]
fn an_unchanged_workspace_keeps_its_id_and_its_listing_is_not_written_again() {
    let f = fx();
    f.write("a", "1");
    f.write("d/b", "2");
    let first = f.take(None);
    let stored = f.h.cas.tree_path(&first.id);
    let written = std::fs::read(&stored).unwrap();
    let second = f.take(Some(&first.tree));
    assert_eq!(second.id, first.id, "same content, same id");
    assert_eq!(
        std::fs::read(&stored).unwrap(),
        written,
        "the listing it started from stays (its walk time is not rewritten)"
    );
    // A stat kept only for the next snapshot changes (the ctime, by setting mtime to itself):
    // still the same snapshot, but its stored listing now carries the fresher stat.
    let mtime = std::fs::metadata(f.ws.join("a"))
        .unwrap()
        .modified()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let file = std::fs::File::options()
        .write(true)
        .open(f.ws.join("a"))
        .unwrap();
    file.set_modified(mtime).unwrap();
    let third = f.take(Some(&second.tree));
    assert_eq!(third.id, first.id);
    assert_ne!(
        third.tree.get("a").unwrap().ctime_ns,
        first.tree.get("a").unwrap().ctime_ns
    );
    assert_eq!(
        f.h.tree(&third.id).unwrap(),
        *third.tree,
        "rewritten with the newer stats"
    );
    assert!(
        Arc::ptr_eq(&f.h.listing(&third.id).unwrap(), &third.tree),
        "and held in place of the older listing"
    );
    f.write("a", "changed");
    assert_ne!(
        f.take(Some(&third.tree)).id,
        first.id,
        "new content, new id"
    );
}

#[test]
fn a_rewrite_within_the_racy_window_is_read_again() {
    let f = fx();
    f.write("a", "1");
    let first = f.take(None);
    f.write("a", "2");
    let second = f.take(Some(&first.tree));
    assert_ne!(
        first.tree.get("a").unwrap().blob,
        second.tree.get("a").unwrap().blob
    );
}

#[test]
fn changes_report_adds_edits_deletes_renames_modes_and_links() {
    let f = fx();
    f.write("keep", "k\n");
    f.write("edit", "1\n");
    f.write("gone", "g\n");
    f.write("old/name", "moved content\n");
    f.write("exe", "#!/bin/sh\n");
    std::os::unix::fs::symlink("keep", f.ws.join("link")).unwrap();
    let before = f.take(None).tree;
    f.write("edit", "2\n");
    std::fs::remove_file(f.ws.join("gone")).unwrap();
    std::fs::rename(f.ws.join("old/name"), f.ws.join("new-name")).unwrap();
    f.write("added", "a\n");
    std::fs::set_permissions(f.ws.join("exe"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::remove_file(f.ws.join("link")).unwrap();
    std::os::unix::fs::symlink("edit", f.ws.join("link")).unwrap();
    let after = f.take(Some(&before)).tree;
    assert_eq!(
        kinds(&changes(&before, &after)),
        vec![
            ("added".into(), ChangeKind::Added, None),
            ("edit".into(), ChangeKind::Modified, None),
            ("exe".into(), ChangeKind::Modified, None),
            ("gone".into(), ChangeKind::Deleted, None),
            ("link".into(), ChangeKind::Modified, None),
            (
                "new-name".into(),
                ChangeKind::Renamed,
                Some("old/name".into())
            ),
        ]
    );
    let exe = changes(&before, &after)
        .into_iter()
        .find(|c| c.path == "exe")
        .unwrap();
    assert_eq!(
        (exe.before.unwrap().mode, exe.entry.unwrap().mode),
        (0o644, 0o755)
    );
}

#[test]
fn gc_keeps_what_live_trees_use_and_frees_the_rest() {
    let f = fx();
    f.write("shared", "s\n");
    f.write("only-old", "o\n");
    let old = f.take(None);
    std::fs::remove_file(f.ws.join("only-old")).unwrap();
    let new = f.take(Some(&old.tree));
    // Age everything past the grace period.
    let past = std::time::SystemTime::now() - gc::GRACE - std::time::Duration::from_secs(5);
    for e in walkdir::WalkDir::new(f._dir.path().join("history")) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            let file = std::fs::File::options()
                .append(true)
                .open(e.path())
                .unwrap();
            file.set_modified(past).unwrap();
        }
    }
    let live: HashSet<String> = [new.id.clone()].into();
    let stats = f.h.gc(&live).unwrap();
    assert_eq!(
        (stats.trees_deleted, stats.blobs_deleted, stats.bytes_freed),
        (1, 1, 2)
    );
    assert!(f.h.tree(&old.id).is_err());
    assert!(f.h.open_file(&new.tree, "shared").is_ok());
    // Nothing is live: everything goes.
    let stats = f.h.gc(&HashSet::new()).unwrap();
    assert_eq!((stats.blobs_deleted, stats.bytes_kept), (1, 0));
}

#[test]
fn recent_objects_survive_a_collection_that_does_not_know_them_yet() {
    let f = fx();
    f.write("a", "in flight\n");
    let t = f.take(None);
    let stats = f.h.gc(&HashSet::new()).unwrap();
    assert_eq!(stats.blobs_deleted, 0);
    assert!(f.h.open_file(&t.tree, "a").is_ok());
}

#[test]
fn bad_snapshot_ids_are_not_found_not_paths() {
    let f = fx();
    for id in ["", "../../etc/passwd", &"A".repeat(64), &"0".repeat(64)] {
        let e = f.h.tree(id).unwrap_err();
        assert_eq!(e.reason(), crate::error::Reason::SnapshotNotFound, "{id}");
    }
}

#[test]
fn a_snapshot_restores_byte_for_byte_with_modes_and_links() {
    let f = fx();
    f.write("a/b/c.txt", "deep\n");
    f.write("top", "t");
    std::fs::set_permissions(f.ws.join("top"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("../outside", f.ws.join("a/link")).unwrap();
    std::fs::create_dir(f.ws.join("empty")).unwrap();
    let t = f.take(None);
    let dest = f._dir.path().join("restored");
    f.h.restore_into(&t.tree, &dest).unwrap();
    assert_eq!(std::fs::read(dest.join("a/b/c.txt")).unwrap(), b"deep\n");
    let mode = std::fs::metadata(dest.join("top"))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o755);
    assert_eq!(
        std::fs::read_link(dest.join("a/link")).unwrap(),
        std::path::Path::new("../outside")
    );
    assert!(dest.join("empty").is_dir());
    // The copy is the snapshot again, and writing to it leaves the store alone.
    let fd = crate::workspace::fsops::open_root(&dest).unwrap().unwrap();
    let again = f.h.take(fd, None, None).unwrap();
    assert!(changes(&t.tree, &again.tree).is_empty());
    std::fs::write(dest.join("top"), "changed").unwrap();
    let mut s = String::new();
    std::io::Read::read_to_string(&mut f.h.open_file(&t.tree, "top").unwrap(), &mut s).unwrap();
    assert_eq!(s, "t");
    // An existing destination is refused rather than written through.
    assert!(f.h.restore_into(&t.tree, &dest).is_err());
}

#[test]
fn a_listing_taken_lately_is_not_read_back() {
    let f = fx();
    f.write("a", "1");
    let taken = f.take(None);
    // Gone from disk (as if collected): the handle that took it still holds it, a fresh one
    // would have to read it.
    std::fs::remove_file(f.h.cas.tree_path(&taken.id)).unwrap();
    let held = f.h.listing(&taken.id).unwrap();
    assert!(
        Arc::ptr_eq(&held, &taken.tree),
        "the listing taken, not a parse"
    );
    let fresh = History::open(&f._dir.path().join("history")).unwrap();
    assert_eq!(
        fresh.listing(&taken.id).unwrap_err().reason(),
        Reason::SnapshotNotFound
    );
}
