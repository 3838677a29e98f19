//! What WatchFiles may hold of the host, so that one tenant cannot take it from the others: the
//! sessions watched at once (each holds an inotify instance and a thread; the host allows 128
//! instances per user by default, shared with the jails' supervisors), and the directories
//! watched (each holds one of the user's inotify watches, `fs.inotify.max_user_watches`, shared
//! with every other process of agentd's user). A tenant may hold a quarter of the directories
//! agentd allows itself, which is half of the host's watches.

use super::tree::MAX_DIRS;
use crate::domain::TenantId;
use crate::error::{Error, Reason, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Sessions one tenant may watch at once, and the whole server.
pub const MAX_WATCHED_PER_TENANT: usize = 16;
pub const MAX_WATCHED: usize = 64;
/// The host's watches agentd allows itself: one in this many.
const HOST_SHARE: usize = 2;
/// agentd's directories one tenant may hold: one in this many.
const TENANT_SHARE: usize = 4;
/// `fs.inotify.max_user_watches` when it cannot be read (the kernel's smallest default).
const HOST_WATCHES_DEFAULT: usize = 8_192;

/// The counts, shared by every watch of the server.
#[derive(Clone)]
pub(super) struct Bounds(Arc<Mutex<Counts>>);

struct Counts {
    sessions: HashMap<TenantId, usize>,
    sessions_total: usize,
    dirs: HashMap<TenantId, usize>,
    dirs_total: usize,
    dirs_max: usize,
    dirs_tenant_max: usize,
}

impl Default for Bounds {
    fn default() -> Bounds {
        let host = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(HOST_WATCHES_DEFAULT);
        Bounds::with_dirs(host / HOST_SHARE)
    }
}

fn lock(m: &Mutex<Counts>) -> MutexGuard<'_, Counts> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Decrements `tenant`'s count in `map` by `n`, forgetting it at zero.
fn release(map: &mut HashMap<TenantId, usize>, tenant: &TenantId, n: usize) {
    if let Some(held) = map.get_mut(tenant) {
        *held = held.saturating_sub(n);
        if *held == 0 {
            map.remove(tenant);
        }
    }
}

impl Bounds {
    /// Bounds allowing `dirs_max` directories in all (a tenant: a quarter, at least one
    /// workspace's worth).
    pub(super) fn with_dirs(dirs_max: usize) -> Bounds {
        Bounds(Arc::new(Mutex::new(Counts {
            sessions: HashMap::new(),
            sessions_total: 0,
            dirs: HashMap::new(),
            dirs_total: 0,
            dirs_max,
            dirs_tenant_max: (dirs_max / TENANT_SHARE).max(MAX_DIRS.min(dirs_max)),
        })))
    }

    /// A place for one more watched session of `tenant`.
    pub(super) fn session(&self, tenant: &TenantId) -> Result<Slot> {
        let mut c = lock(&self.0);
        let mine = c.sessions.get(tenant).copied().unwrap_or(0);
        if mine >= MAX_WATCHED_PER_TENANT {
            return Err(exhausted(format!(
                "this tenant watches {mine} sessions already, the most it may at once (a watch \
                 ends a minute after its last stream); close a stream or retry later"
            )));
        }
        if c.sessions_total >= MAX_WATCHED {
            return Err(exhausted(format!(
                "the server watches {MAX_WATCHED} sessions already, the most it may at once; \
                 retry later"
            )));
        }
        c.sessions_total += 1;
        *c.sessions.entry(tenant.clone()).or_default() += 1;
        drop(c);
        Ok(Slot {
            bounds: self.clone(),
            tenant: tenant.clone(),
        })
    }
}

fn exhausted(message: String) -> Error {
    Error::exhausted(Reason::WatchLimitReached, message)
}

/// One watched session's place, given back when its watch is dropped; its watches' directories
/// are counted through it.
pub(super) struct Slot {
    bounds: Bounds,
    tenant: TenantId,
}

impl Slot {
    /// What the session's watch counts its directories against.
    pub(super) fn dirs(&self) -> DirBudget {
        DirBudget {
            bounds: self.bounds.clone(),
            tenant: self.tenant.clone(),
            held: 0,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = lock(&self.bounds.0);
        c.sessions_total = c.sessions_total.saturating_sub(1);
        release(&mut c.sessions, &self.tenant, 1);
    }
}

/// The directories one watch holds, given back as they go and when it is dropped.
pub(super) struct DirBudget {
    bounds: Bounds,
    tenant: TenantId,
    held: usize,
}

impl DirBudget {
    /// One more directory, within the tenant's and the server's bounds.
    pub(super) fn take(&mut self) -> Result<()> {
        let mut c = lock(&self.bounds.0);
        let mine = c.dirs.get(&self.tenant).copied().unwrap_or(0);
        if mine >= c.dirs_tenant_max {
            return Err(exhausted(format!(
                "this tenant's watches follow {mine} directories already, the most it may; close \
                 a stream or retry later"
            )));
        }
        if c.dirs_total >= c.dirs_max {
            return Err(exhausted(format!(
                "the server's watches follow {} directories already, the most it may (half the \
                 host's fs.inotify.max_user_watches); retry later",
                c.dirs_total
            )));
        }
        c.dirs_total += 1;
        *c.dirs.entry(self.tenant.clone()).or_default() += 1;
        self.held += 1;
        Ok(())
    }

    /// One directory less.
    pub(super) fn give(&mut self) {
        if self.held == 0 {
            return;
        }
        self.held -= 1;
        let mut c = lock(&self.bounds.0);
        c.dirs_total = c.dirs_total.saturating_sub(1);
        release(&mut c.dirs, &self.tenant, 1);
    }
}

impl Drop for DirBudget {
    fn drop(&mut self) {
        let mut c = lock(&self.bounds.0);
        c.dirs_total = c.dirs_total.saturating_sub(self.held);
        release(&mut c.dirs, &self.tenant, self.held);
    }
}

#[cfg(test)]
impl Bounds {
    /// (sessions watched, directories followed) in all.
    pub(super) fn held(&self) -> (usize, usize) {
        let c = lock(&self.0);
        (c.sessions_total, c.dirs_total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(i: usize) -> TenantId {
        TenantId(format!("t{i}"))
    }

    #[test]
    fn watched_sessions_are_bounded_per_tenant_and_in_all_and_given_back() {
        let b = Bounds::with_dirs(1_000_000);
        let mut held: Vec<Slot> = (0..MAX_WATCHED_PER_TENANT)
            .map(|_| b.session(&t(0)).expect("within the tenant's bound"))
            .collect();
        let Err(e) = b.session(&t(0)) else {
            panic!("a tenant passed its bound");
        };
        assert_eq!(e.reason(), Reason::WatchLimitReached);
        assert!(e.to_string().contains("this tenant"), "{e}");
        held.pop();
        held.push(b.session(&t(0)).expect("a slot given back is free again"));
        let mut i = 1;
        while held.len() < MAX_WATCHED {
            held.push(b.session(&t(i / MAX_WATCHED_PER_TENANT + 1)).expect("free"));
            i += 1;
        }
        let Err(e) = b.session(&t(999)) else {
            panic!("the server passed its bound");
        };
        assert!(e.to_string().contains("the server"), "{e}");
        drop(held);
        assert_eq!(b.held(), (0, 0));
        assert!(lock(&b.0).sessions.is_empty());
    }

    #[test]
    fn directories_are_bounded_per_tenant_and_in_all_and_given_back() {
        let b = Bounds::with_dirs(4 * MAX_DIRS);
        let one = b.session(&t(1)).expect("slot");
        let mut first = one.dirs();
        for _ in 0..MAX_DIRS {
            first.take().expect("a quarter of the server's directories");
        }
        let mut second = one.dirs();
        let e = second.take().expect_err("past the tenant's quarter");
        assert!(e.to_string().contains("this tenant"), "{e}");
        first.give();
        second.take().expect("a directory given back is free again");
        // Three other tenants fill the rest; a fifth finds none.
        let others: Vec<(Slot, DirBudget)> = (2..5)
            .map(|i| {
                let s = b.session(&t(i)).expect("slot");
                let mut d = s.dirs();
                for _ in 0..MAX_DIRS {
                    d.take().expect("within the bounds");
                }
                (s, d)
            })
            .collect();
        let fifth = b.session(&t(5)).expect("slot");
        let e = fifth.dirs().take().expect_err("past the server's bound");
        assert!(e.to_string().contains("the server's"), "{e}");
        drop((first, second, others, fifth, one));
        assert_eq!(b.held(), (0, 0));
    }
}
