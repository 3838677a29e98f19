//! The in-namespace bridge of `network = "gateway"`: a process forked by the jail's ns-init
//! before it enters the job's root, listening on loopback ports of the job's own network
//! namespace and forwarding every connection to a unix socket of agentd. The socket's directory is
//! opened first and reached through `/proc/self/fd` afterwards, so the socket need not be visible
//! in the jail and the agent never sees it: all it has is `127.0.0.1:<port>`.

use super::jail::Bridge;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

/// Forks the bridge, which closes every descriptor but its own. `open_dir` opens a host
/// directory (by name, or through the jail's copy of the host tree once ns-init has pivoted).
/// Returns once the ports listen, so the agent can connect at once.
pub fn spawn(
    bridges: &[Bridge],
    open_dir: impl Fn(&std::path::Path) -> Result<OwnedFd, String>,
) -> Result<(), String> {
    let mut targets = Vec::new();
    let mut listeners = Vec::new();
    for b in bridges {
        let dir = b.socket.parent().ok_or("bridge socket has no directory")?;
        let name = b.socket.file_name().ok_or("bridge socket has no name")?;
        let dir = open_dir(dir).map_err(|e| format!("bridge: {e}"))?;
        let listener = TcpListener::bind(("127.0.0.1", b.port))
            .map_err(|e| format!("bridge: cannot listen on 127.0.0.1:{}: {e}", b.port))?;
        targets.push((dir, name.to_string_lossy().into_owned()));
        listeners.push(listener);
    }
    // SAFETY: ns-init is single-threaded; the child only closes descriptors, then runs plain
    // std networking code of its own.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { .. }) => Ok(()),
        Ok(nix::unistd::ForkResult::Child) => {
            let own: Vec<i32> = targets
                .iter()
                .map(|(d, _)| d.as_raw_fd())
                .chain(listeners.iter().map(|l| l.as_raw_fd()))
                .collect();
            close_others(&own);
            serve(listeners, targets)
        }
        Err(e) => Err(format!("bridge: fork: {e}")),
    }
}

/// Closes every descriptor from 3 up but `own`: the supervisor's pipes must reach EOF when
/// ns-init and the agent close them, whatever the bridge does.
fn close_others(own: &[i32]) {
    for fd in 3..4096 {
        if !own.contains(&fd) {
            // SAFETY: closing a descriptor number; unused ones answer EBADF.
            unsafe { libc::close(fd) };
        }
    }
}

fn serve(listeners: Vec<TcpListener>, targets: Vec<(OwnedFd, String)>) -> ! {
    let mut threads = Vec::new();
    for (listener, (dir, name)) in listeners.into_iter().zip(targets) {
        let path = super::sockpath::via(&dir, &name);
        std::mem::forget(dir);
        threads.push(std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let path = path.clone();
                std::thread::spawn(move || forward(conn, &path));
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    // SAFETY: leaving the forked child without running the parent's destructors.
    unsafe { libc::_exit(0) }
}

/// Copies both ways until either side closes.
fn forward(tcp: TcpStream, path: &str) {
    let Ok(unix) = UnixStream::connect(path) else {
        return;
    };
    let _ = tcp.set_nodelay(true);
    let (Ok(tcp2), Ok(unix2)) = (tcp.try_clone(), unix.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || pump(tcp2, unix2, |u| u.shutdown(Shutdown::Write)));
    pump(unix, tcp, |t| t.shutdown(Shutdown::Write));
    let _ = up.join();
}

fn pump<R: Read, W: Write>(mut from: R, mut to: W, done: impl FnOnce(&W) -> std::io::Result<()>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = done(&to);
}
