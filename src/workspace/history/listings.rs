//! The listings this process took lately, by tree id: a session's next snapshot starts from its
//! newest listing without reading it back and parsing it (for a workspace of 20,000 files that
//! is ~15 ms on the job's start, `agentd-bench --only snapshot`). A tree id names what the listing
//! shows (see `Tree::id`), so the listing held under an id is the newest taken with it, its stats
//! the freshest; a listing whose tree was collected meanwhile is still a safe basis (see
//! `Basis`). Bounded by the entries held in all, oldest listing out first.

use super::Tree;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

/// What the history keeps by default: about 25-50 MB at most (a listing entry is a path and its
/// stat and hash), reached only with workspaces of many files.
pub(super) const ENTRIES: usize = 100_000;

#[derive(Debug)]
pub(super) struct Listings {
    budget: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    order: VecDeque<String>,
    by_id: HashMap<String, Arc<Tree>>,
    held: usize,
}

/// A listing's weight against the budget: its entries, and at least one.
fn weight(tree: &Tree) -> usize {
    tree.entries.len().max(1)
}

impl Listings {
    pub(super) fn new(budget: usize) -> Listings {
        Listings {
            budget,
            inner: Mutex::default(),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding it leaves the maps consistent (every step below is one insert
        // or one remove with its count).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn get(&self, id: &str) -> Option<Arc<Tree>> {
        self.inner().by_id.get(id).cloned()
    }

    /// Keeps `tree` as listing `id`, dropping the oldest listings past the budget. A listing
    /// larger than the whole budget is not kept.
    pub(super) fn put(&self, id: &str, tree: &Arc<Tree>) {
        let w = weight(tree);
        if w > self.budget {
            return;
        }
        let mut inner = self.inner();
        // The same id again (an unchanged workspace, or one whose stats alone changed): the
        // newer listing replaces the held one, so the next snapshot compares the freshest stats.
        if let Some(held) = inner.by_id.get_mut(id) {
            let old = weight(held);
            *held = Arc::clone(tree);
            inner.held = inner.held - old + w;
            return;
        }
        while inner.held + w > self.budget {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if let Some(t) = inner.by_id.remove(&old) {
                inner.held -= weight(&t);
            }
        }
        inner.order.push_back(id.to_owned());
        inner.by_id.insert(id.to_owned(), Arc::clone(tree));
        inner.held += w;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::history::TreeEntry;

    fn tree(files: usize) -> Arc<Tree> {
        let mut t = Tree::default();
        for i in 0..files {
            let entry = TreeEntry {
                kind: crate::domain::FileKind::Regular,
                mode: 0o644,
                size: 0,
                blob: None,
                target: None,
                mtime_ns: 0,
                ctime_ns: 0,
                ino: 0,
            };
            t.entries.insert(format!("f{i}"), entry);
        }
        Arc::new(t)
    }

    #[test]
    fn keeps_the_newest_listings_within_the_budget() {
        let l = Listings::new(10);
        let (a, b, c) = (tree(4), tree(4), tree(4));
        l.put("a", &a);
        l.put("b", &b);
        assert!(
            Arc::ptr_eq(&l.get("a").unwrap(), &a),
            "the same listing, not a copy"
        );
        l.put("c", &c);
        assert!(l.get("a").is_none(), "the oldest went to make room");
        assert!(l.get("b").is_some() && l.get("c").is_some());
        l.put("huge", &tree(11));
        assert!(l.get("huge").is_none(), "larger than the budget: not kept");
        assert!(l.get("b").is_some(), "and nothing dropped for it");
        l.put("empty", &tree(0));
        assert!(
            l.get("empty").is_some(),
            "an empty workspace's listing counts as one"
        );
        l.put("d", &tree(4));
        assert!(l.get("b").is_none(), "4 + 4 + 1 + 4 > 10: the oldest went");
        assert!(l.get("c").is_some() && l.get("empty").is_some() && l.get("d").is_some());
        let newer = tree(4);
        l.put("c", &newer);
        assert!(
            Arc::ptr_eq(&l.get("c").unwrap(), &newer),
            "the same id again: the newer listing is held"
        );
        assert!(
            l.get("empty").is_some() && l.get("d").is_some(),
            "in place of the older one, not beside it"
        );
    }
}
