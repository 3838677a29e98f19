//! The kernel's process events (the netlink proc connector): every fork, exec and exit on the
//! machine, each stamped by the kernel with CLOCK_MONOTONIC, the clock of [`crate::harness::mono_ns`].
//! With them an agent's own start (its exec) and end (its exit) are timed the same way whether
//! agentd started it, inside its PID namespace, or the bench did: pids are the host's in both.
//! Needs CAP_NET_ADMIN (root) in the initial namespaces.

use anyhow::{Context, Result, bail};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_EVENT_FORK: u32 = 0x1;
const PROC_EVENT_EXEC: u32 = 0x2;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;
const NLMSG_HDR: usize = 16;
const CN_MSG_HDR: usize = 20;

/// One process event: kernel time (CLOCK_MONOTONIC ns) and what happened.
#[derive(Debug, Clone, Copy)]
pub enum Ev {
    /// A new process (threads are left out): its parent's and its own tgid.
    Fork { parent: u32, child: u32 },
    /// A process (its main thread) executed a program.
    Exec { pid: u32 },
    /// A thread group's leader exited.
    Exit { pid: u32 },
}

/// Listens from creation to drop; [`Watch::events`] is everything seen so far.
pub struct Watch {
    events: Arc<Mutex<Vec<(u64, Ev)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watch {
    pub fn start() -> Result<Watch> {
        // SAFETY: plain socket(2); the fd is owned right after.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_CONNECTOR,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("netlink connector socket");
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        // A busy machine (other builds) sends many events; a large buffer keeps ours from being
        // dropped while the reader thread waits for the CPU.
        let size: libc::c_int = 32 << 20;
        // SAFETY: setsockopt reads `size` for its length; failure only leaves the default.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        // SAFETY: as above; the timeout lets the reader notice `stop`.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        // SAFETY: sockaddr_nl is plain data; zeroed is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = CN_IDX_PROC;
        // SAFETY: addr lives across the call and its size is given.
        if unsafe {
            libc::bind(
                fd,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        } != 0
        {
            return Err(std::io::Error::last_os_error()).context("bind the proc connector");
        }
        let mut msg = Vec::with_capacity(NLMSG_HDR + CN_MSG_HDR + 4);
        let len = (NLMSG_HDR + CN_MSG_HDR + 4) as u32;
        msg.extend_from_slice(&len.to_ne_bytes());
        msg.extend_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
        msg.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&4u16.to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes());
        msg.extend_from_slice(&PROC_CN_MCAST_LISTEN.to_ne_bytes());
        // SAFETY: msg lives across the call.
        if unsafe { libc::send(fd, msg.as_ptr().cast(), msg.len(), 0) } < 0 {
            return Err(std::io::Error::last_os_error()).context("subscribe to process events");
        }
        let events = Arc::new(Mutex::new(Vec::with_capacity(1 << 16)));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (events, stop) = (events.clone(), stop.clone());
            std::thread::Builder::new()
                .name("procwatch".into())
                .spawn(move || read_loop(sock, &events, &stop))?
        };
        Ok(Watch {
            events,
            stop,
            thread: Some(thread),
        })
    }

    pub fn events(&self) -> Vec<(u64, Ev)> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// The agent started under `root`: the first exec at or after `since` by `root` itself (when
    /// `include_root`) or by a descendant of it. Returns its pid and exec time.
    pub fn first_exec(&self, root: u32, include_root: bool, since: u64) -> Option<(u32, u64)> {
        let events = self.events();
        let mut tree = vec![root];
        for (_, ev) in &events {
            if let Ev::Fork { parent, child } = *ev
                && tree.contains(&parent)
                && !tree.contains(&child)
            {
                tree.push(child);
            }
        }
        events.iter().find_map(|(t, ev)| match *ev {
            Ev::Exec { pid }
                if *t >= since && tree.contains(&pid) && (include_root || pid != root) =>
            {
                Some((pid, *t))
            }
            _ => None,
        })
    }

    /// When `pid` exited after `since`.
    pub fn exit_of(&self, pid: u32, since: u64) -> Option<u64> {
        self.events().iter().rev().find_map(|(t, ev)| match *ev {
            Ev::Exit { pid: p } if p == pid && *t >= since => Some(*t),
            _ => None,
        })
    }

    /// Waits (up to `within`) until the exit of `pid` after `since` was seen.
    pub fn wait_exit(&self, pid: u32, since: u64, within: std::time::Duration) -> Result<u64> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(t) = self.exit_of(pid, since) {
                return Ok(t);
            }
            if std::time::Instant::now() > deadline {
                bail!("no exit event of pid {pid} (events dropped?)");
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_loop(sock: OwnedFd, events: &Mutex<Vec<(u64, Ev)>>, stop: &AtomicBool) {
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: buf outlives the call and its length is given.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            continue;
        }
        let mut off = 0usize;
        let n = n as usize;
        let mut got = Vec::new();
        while off + NLMSG_HDR <= n {
            let len = u32_at(&buf, off) as usize;
            if len < NLMSG_HDR || off + len > n {
                break;
            }
            let ev = off + NLMSG_HDR + CN_MSG_HDR;
            if ev + 24 <= off + len {
                let what = u32_at(&buf, ev);
                let ts = u64::from_ne_bytes(buf[ev + 8..ev + 16].try_into().unwrap_or([0; 8]));
                let data = ev + 16;
                let parsed = match what {
                    PROC_EVENT_FORK if ev + 32 <= off + len => {
                        let (parent, pid, tgid) = (
                            u32_at(&buf, data + 4),
                            u32_at(&buf, data + 8),
                            u32_at(&buf, data + 12),
                        );
                        (pid == tgid).then_some(Ev::Fork {
                            parent,
                            child: tgid,
                        })
                    }
                    PROC_EVENT_EXEC => Some(Ev::Exec {
                        pid: u32_at(&buf, data + 4),
                    }),
                    PROC_EVENT_EXIT => {
                        let (pid, tgid) = (u32_at(&buf, data), u32_at(&buf, data + 4));
                        (pid == tgid).then_some(Ev::Exit { pid })
                    }
                    _ => None,
                };
                if let Some(p) = parsed {
                    got.push((ts, p));
                }
            }
            off += (len + 3) & !3;
        }
        if !got.is_empty()
            && let Ok(mut e) = events.lock()
        {
            e.extend(got);
        }
    }
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap_or([0; 4]))
}
