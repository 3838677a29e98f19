//! Which job runs next. Queued jobs wait in one global FIFO (submit order); a job may start when
//! fewer than `max_concurrent` jobs run and no other job of its session runs, so jobs of one
//! session run one at a time, in order, and a busy session never blocks the others.
//!
//! The scheduler only decides; starting a job is the caller's `start` callback, and the caller
//! reports back with [`Scheduler::finished`]. State is in memory: on start-up the job core
//! re-enqueues the store's queued jobs in creation order.

use crate::domain::{JobId, SessionId, TenantId};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};

#[derive(Default)]
struct State {
    queue: VecDeque<(JobId, SessionId)>,
    running: HashMap<JobId, SessionId>,
    busy_sessions: HashSet<SessionId>,
    /// Queued plus running jobs per tenant (reservations included), for per-tenant limits.
    active: HashMap<TenantId, usize>,
    job_tenant: HashMap<JobId, TenantId>,
    /// Once paused (shutdown), nothing new starts.
    paused: bool,
}

impl State {
    fn release(&mut self, tenant: &TenantId) {
        if let Some(n) = self.active.get_mut(tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.active.remove(tenant);
            }
        }
    }

    fn forget(&mut self, job: &JobId) {
        if let Some(t) = self.job_tenant.remove(job) {
            self.release(&t);
        }
    }
}

/// The queue and the running set.
pub struct Scheduler {
    max_concurrent: usize,
    state: Mutex<State>,
}

impl Scheduler {
    pub fn new(max_concurrent: usize) -> Self {
        Self {
            max_concurrent,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves a slot for one more active job of `tenant`; `false` when it already has `limit`
    /// (0 = unlimited). A reservation becomes the job's on [`Scheduler::enqueue`], or is given back
    /// with [`Scheduler::release`] if the job is not created after all.
    pub fn reserve(&self, tenant: &TenantId, limit: usize) -> bool {
        let mut s = self.lock();
        let n = s.active.entry(tenant.clone()).or_insert(0);
        if limit > 0 && *n >= limit {
            return false;
        }
        *n += 1;
        true
    }

    pub fn release(&self, tenant: &TenantId) {
        self.lock().release(tenant);
    }

    /// Appends a job to the queue, taking over a reservation of its tenant.
    pub fn enqueue(&self, job: JobId, session: SessionId, tenant: TenantId) {
        let mut s = self.lock();
        s.job_tenant.insert(job.clone(), tenant);
        s.queue.push_back((job, session));
    }

    /// Appends a job recovered from the store (no reservation was made for it).
    pub fn enqueue_recovered(&self, job: JobId, session: SessionId, tenant: TenantId) {
        *self.lock().active.entry(tenant.clone()).or_insert(0) += 1;
        self.enqueue(job, session, tenant);
    }

    /// Active (queued or running) jobs of a tenant.
    pub fn active_of(&self, tenant: &TenantId) -> usize {
        self.lock().active.get(tenant).copied().unwrap_or(0)
    }

    /// Removes a queued job; `false` if it was not queued (already started or unknown).
    pub fn dequeue(&self, job: &JobId) -> bool {
        let mut s = self.lock();
        let before = s.queue.len();
        s.queue.retain(|(j, _)| j != job);
        let removed = s.queue.len() != before;
        if removed {
            s.forget(job);
        }
        removed
    }

    /// Takes every job that may start now, marking each running.
    pub fn take_runnable(&self) -> Vec<(JobId, SessionId)> {
        let mut s = self.lock();
        let mut out = Vec::new();
        if s.paused {
            return out;
        }
        let mut i = 0;
        while i < s.queue.len() && s.running.len() < self.max_concurrent {
            if s.busy_sessions.contains(&s.queue[i].1) {
                i += 1;
                continue;
            }
            if let Some((job, session)) = s.queue.remove(i) {
                s.busy_sessions.insert(session.clone());
                s.running.insert(job.clone(), session.clone());
                out.push((job, session));
            }
        }
        out
    }

    /// Marks a running job done, freeing its slot and its session.
    pub fn finished(&self, job: &JobId) {
        let mut s = self.lock();
        if let Some(session) = s.running.remove(job) {
            s.busy_sessions.remove(&session);
            s.forget(job);
        }
    }

    /// 1-based position of a queued job in the global queue; `None` if not queued.
    pub fn position(&self, job: &JobId) -> Option<u32> {
        let s = self.lock();
        s.queue
            .iter()
            .position(|(j, _)| j == job)
            .map(|p| u32::try_from(p + 1).unwrap_or(u32::MAX))
    }

    /// Number of queued jobs of one session.
    pub fn queued_in_session(&self, session: &SessionId) -> usize {
        self.lock()
            .queue
            .iter()
            .filter(|(_, s)| s == session)
            .count()
    }

    /// Queued jobs of one session, in order.
    pub fn queued_jobs_of(&self, session: &SessionId) -> Vec<JobId> {
        self.lock()
            .queue
            .iter()
            .filter(|(_, s)| s == session)
            .map(|(j, _)| j.clone())
            .collect()
    }

    /// Stops starting jobs (shutdown).
    pub fn pause(&self) {
        self.lock().paused = true;
    }

    pub fn running_count(&self) -> usize {
        self.lock().running.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<JobId> {
        (0..n).map(|_| JobId::generate()).collect()
    }

    #[test]
    fn one_job_per_session_in_order_and_global_limit() {
        let s = Scheduler::new(2);
        let (a, b, c) = (
            SessionId::generate(),
            SessionId::generate(),
            SessionId::generate(),
        );
        let j = ids(5);
        let t = TenantId("t".into());
        s.enqueue(j[0].clone(), a.clone(), t.clone());
        s.enqueue(j[1].clone(), a.clone(), t.clone());
        s.enqueue(j[2].clone(), b.clone(), t.clone());
        s.enqueue(j[3].clone(), c.clone(), t.clone());
        s.enqueue(j[4].clone(), b.clone(), t.clone());
        let first: Vec<JobId> = s.take_runnable().into_iter().map(|x| x.0).collect();
        assert_eq!(first, vec![j[0].clone(), j[2].clone()]);
        assert_eq!(s.position(&j[1]), Some(1));
        assert_eq!(s.position(&j[3]), Some(2));
        assert!(s.take_runnable().is_empty(), "limit of 2 reached");
        s.finished(&j[0]);
        // j1 (session a, now free) comes before j3 in the queue.
        let next: Vec<JobId> = s.take_runnable().into_iter().map(|x| x.0).collect();
        assert_eq!(next, vec![j[1].clone()]);
        s.finished(&j[2]);
        // j3 (session c) may start; j4 (session b) is behind it in order and b is free now too,
        // but the limit allows only one more.
        let next: Vec<JobId> = s.take_runnable().into_iter().map(|x| x.0).collect();
        assert_eq!(next, vec![j[3].clone()]);
    }

    #[test]
    fn dequeue_and_pause() {
        let s = Scheduler::new(1);
        let a = SessionId::generate();
        let j = ids(2);
        let t = TenantId("t".into());
        s.enqueue(j[0].clone(), a.clone(), t.clone());
        s.enqueue(j[1].clone(), a.clone(), t.clone());
        assert!(s.dequeue(&j[0]));
        assert!(!s.dequeue(&j[0]));
        assert_eq!(s.queued_in_session(&a), 1);
        s.pause();
        assert!(s.take_runnable().is_empty());
    }

    #[test]
    fn tenant_reservations_follow_jobs() {
        let s = Scheduler::new(4);
        let (a, b) = (TenantId("a".into()), TenantId("b".into()));
        let sess = SessionId::generate();
        let j = ids(3);
        assert!(s.reserve(&a, 2));
        s.enqueue(j[0].clone(), sess.clone(), a.clone());
        assert!(s.reserve(&a, 2));
        s.enqueue(j[1].clone(), sess.clone(), a.clone());
        assert!(!s.reserve(&a, 2), "limit of 2 active jobs");
        assert!(s.reserve(&b, 2), "other tenants are not affected");
        s.release(&b);
        assert_eq!(s.active_of(&b), 0);
        let started = s.take_runnable();
        assert_eq!(started.len(), 1, "one per session");
        s.finished(&j[0]);
        assert_eq!(s.active_of(&a), 1);
        assert!(s.dequeue(&j[1]));
        assert_eq!(s.active_of(&a), 0);
        assert!(s.reserve(&a, 0), "0 is unlimited");
        let _ = j[2].clone();
    }
}
