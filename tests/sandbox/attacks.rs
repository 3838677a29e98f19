//! The escape attempts, in one place: each is a bash snippet run from inside a job, what the jail
//! must make of it (`blocked`) and what proves it got through (`escaped`). [`script`] turns a list
//! into one bash script that runs them in order and writes one marker line per attempt to
//! `escape-report.txt` in the workspace (and to stdout); [`parse`] reads that report back and
//! [`judge`] holds each outcome to its expectation.
//!
//! Every attempt is built so that it really gets through on a host without the jail (the suite's
//! baseline mode proves that), and so that getting through does no harm: whatever it creates it
//! removes, it signals agentd with signal 0 only, it detaches at once from what it attaches to.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

/// What an attempt needs to know about the host it attacks.
#[derive(Debug, Clone)]
pub struct Target {
    /// Unique per run: names what the attempts create, and finds their processes.
    pub token: String,
    /// The content of `secret.txt` in the other session's workspace.
    pub secret: String,
    pub other_session: String,
    /// The other session's workspace, as a host path.
    pub other_ws: PathBuf,
    pub data_dir: PathBuf,
    /// The directory holding every session (`<data dir>/sessions`).
    pub ws_root: PathBuf,
    pub agentd_pid: u32,
    pub agentd_bin: PathBuf,
    pub config: PathBuf,
    /// A file the test put in the host's /tmp, with `secret` as its content.
    pub host_tmp_marker: PathBuf,
    /// An API key only agentd's environment holds.
    pub api_key: String,
}

/// What an attempt's outcome must look like.
#[derive(Debug, Clone)]
pub enum Expect {
    /// Non-zero exit, and the output contains one of these (any output when empty).
    Fails(&'static [&'static str]),
    /// Exit 0 and exactly this output (trimmed).
    Prints(String),
    /// The output contains one of these.
    ContainsAny(Vec<String>),
    /// The output contains none of these.
    Lacks(Vec<String>),
    /// Exit 0.
    Succeeds,
    /// Exactly this exit code.
    Exit(i32),
    /// Every `Cap*:` line of /proc/self/status is all zeros.
    CapsZero,
    Not(Box<Expect>),
    All(Vec<Expect>),
    Any(Vec<Expect>),
}

impl Expect {
    fn contains(s: &str) -> Expect {
        Expect::ContainsAny(vec![s.to_owned()])
    }

    fn lacks(items: &[&str]) -> Expect {
        Expect::Lacks(items.iter().map(|s| (*s).to_owned()).collect())
    }

    fn errno(names: &[&str]) -> Expect {
        Expect::ContainsAny(names.iter().map(|s| format!("errno={s}")).collect())
    }

    pub fn holds(&self, o: &Outcome) -> bool {
        match self {
            Expect::Fails(texts) => {
                o.rc != 0 && (texts.is_empty() || texts.iter().any(|t| o.out.contains(t)))
            }
            Expect::Prints(s) => o.rc == 0 && o.out.trim() == s,
            Expect::ContainsAny(items) => items.iter().any(|t| o.out.contains(t.as_str())),
            Expect::Lacks(items) => !items.iter().any(|t| o.out.contains(t.as_str())),
            Expect::Succeeds => o.rc == 0,
            Expect::Exit(n) => o.rc == *n,
            Expect::CapsZero => {
                let caps: Vec<&str> = o.out.lines().filter(|l| l.starts_with("Cap")).collect();
                caps.len() == 5
                    && caps
                        .iter()
                        .all(|l| l.split_whitespace().nth(1) == Some("0000000000000000"))
            }
            Expect::Not(e) => !e.holds(o),
            Expect::All(es) => es.iter().all(|e| e.holds(o)),
            Expect::Any(es) => es.iter().any(|e| e.holds(o)),
        }
    }
}

/// One attempt. An attempt with an empty `cmd` is made by the test through the API (a download),
/// which fills in its outcome.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub name: &'static str,
    pub cmd: String,
    /// What the jail must produce.
    pub blocked: Expect,
    /// What shows the attempt got through.
    pub escaped: Expect,
    /// Must hold with the jail and without it: legitimate work, and attempts that another
    /// layer already stops (the API refusing symlinks that lead out of the workspace).
    pub always: bool,
}

impl Attempt {
    fn new(name: &'static str, cmd: impl Into<String>, blocked: Expect, escaped: Expect) -> Self {
        Attempt {
            name,
            cmd: cmd.into(),
            blocked,
            escaped,
            always: false,
        }
    }

    fn always(name: &'static str, cmd: impl Into<String>, expect: Expect) -> Self {
        Attempt {
            name,
            cmd: cmd.into(),
            blocked: expect.clone(),
            escaped: expect,
            always: true,
        }
    }

    /// This attempt, made to hold with and without the jail (for what an unprivileged agentd
    /// already stops on its own).
    pub fn held_anyway(mut self) -> Self {
        self.always = true;
        self
    }

    /// An attempt made through the API that must fail with the jail and without it.
    pub fn api_always(name: &'static str, expect: Expect) -> Self {
        Attempt::always(name, "", expect)
    }

    /// An attempt made through the API by the test itself.
    pub fn api(name: &'static str, blocked: Expect, escaped: Expect) -> Self {
        Attempt::new(name, "", blocked, escaped)
    }
}

/// What came back from one attempt.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub rc: i32,
    pub out: String,
}

/// A shell word.
pub fn sq(s: impl AsRef<str>) -> String {
    format!("'{}'", s.as_ref().replace('\'', r"'\''"))
}

fn p(path: &std::path::Path) -> String {
    sq(path.to_string_lossy())
}

const NOT_THERE: &[&str] = &["No such file or directory"];
const READ_ONLY: &[&str] = &[
    "Read-only file system",
    "Permission denied",
    "No such file or directory",
];
const EPERM_TEXT: &[&str] = &["Operation not permitted"];

/// A python3 program with `sc(nr, *args)`: the raw syscall's result, `errno=ok` or `errno=<NAME>`.
fn py(body: &str) -> String {
    format!(
        "python3 - <<'PY'\n\
import ctypes, errno, os, socket, sys\n\
libc = ctypes.CDLL(None, use_errno=True)\n\
libc.syscall.restype = ctypes.c_long\n\
def sc(nr, *args):\n    \
    conv = [ctypes.c_char_p(a) if isinstance(a, bytes) else ctypes.c_long(a) for a in args]\n    \
    r = libc.syscall(ctypes.c_long(nr), *conv)\n    \
    e = ctypes.get_errno()\n    \
    return 'errno=ok' if r >= 0 else 'errno=' + errno.errorcode.get(e, str(e))\n\
def connect(family, addr):\n    \
    s = socket.socket(family, socket.SOCK_STREAM)\n    \
    s.settimeout(5)\n    \
    try:\n        \
        s.connect(addr)\n        \
        return 'errno=ok'\n    \
    except OSError as e:\n        \
        return 'errno=' + errno.errorcode.get(e.errno or 0, str(e))\n\
{body}\n\
PY"
    )
}

/// A syscall that the seccomp filter must refuse with EPERM; on a host without the jail (as
/// root) the kernel gets to it and answers anything else.
fn syscall(name: &'static str, call: &str) -> Attempt {
    Attempt::new(
        name,
        py(&format!("print({call})")),
        Expect::errno(&["EPERM"]),
        Expect::Not(Box::new(Expect::errno(&["EPERM"]))),
    )
}

/// Creates `path` and removes it again whatever happened; exits like the creation.
fn create_and_remove(path: &str) -> String {
    format!("touch {path}; rc=$?; rm -f {path} 2>/dev/null; exit $rc")
}

/// The job's own work: must succeed with the jail as without it.
pub fn legit(t: &Target) -> Vec<Attempt> {
    let tok = &t.token;
    vec![
        Attempt::always(
            "legit_workspace_write",
            format!("echo legit-{tok} > legit.txt && cat legit.txt"),
            Expect::Prints(format!("legit-{tok}")),
        ),
        Attempt::always(
            "legit_tmp_write",
            format!(
                "echo tmp-ok > /tmp/legit-{tok} && cat /tmp/legit-{tok} && rm /tmp/legit-{tok}"
            ),
            Expect::Prints("tmp-ok".into()),
        ),
        Attempt::always(
            "legit_home_write",
            format!("echo home-ok > \"$HOME/legit-{tok}\" && cat \"$HOME/legit-{tok}\""),
            Expect::Prints("home-ok".into()),
        ),
        Attempt::always(
            "legit_python",
            "python3 -c 'print(6 * 7)'",
            Expect::Prints("42".into()),
        ),
        // Standbys are set up at SCHED_IDLE; an agent left there starves on a busy host.
        // Field 41 of stat is the policy: 0 = SCHED_OTHER.
        Attempt::always(
            "legit_normal_priority",
            "cut -d' ' -f41 /proc/self/stat",
            Expect::Prints("0".into()),
        ),
    ]
}

/// Other sessions, the data dir, the store, agentd's files, host paths.
pub fn filesystem(t: &Target) -> Vec<Attempt> {
    let tok = &t.token;
    let other = &t.other_session;
    let secret_at = t.other_ws.join("secret.txt");
    let got_secret = Expect::contains(&t.secret);
    vec![
        Attempt::new(
            "other_session_relative",
            format!("cat ../../{other}/workspace/secret.txt"),
            Expect::All(vec![
                Expect::Fails(NOT_THERE),
                Expect::Lacks(vec![t.secret.clone()]),
            ]),
            got_secret.clone(),
        ),
        Attempt::new(
            "other_session_absolute",
            format!("cat {}", p(&secret_at)),
            Expect::All(vec![
                Expect::Fails(NOT_THERE),
                Expect::Lacks(vec![t.secret.clone()]),
            ]),
            got_secret.clone(),
        ),
        Attempt::new(
            "walk_up_listing",
            "ls -a .. ../.. ../../.. ../../../..",
            Expect::Lacks(vec![
                other.clone(),
                "agentd.db".into(),
                "agentd.toml".into(),
            ]),
            Expect::contains(other),
        ),
        Attempt::new(
            "data_dir_listing",
            format!("ls -la {} {}", p(&t.data_dir), p(&t.ws_root)),
            Expect::Lacks(vec![other.clone(), "agentd.db".into()]),
            Expect::contains("agentd.db"),
        ),
        Attempt::new(
            "store_file",
            format!("head -c 15 {}", p(&t.data_dir.join("agentd.db"))),
            Expect::Fails(NOT_THERE),
            Expect::contains("SQLite format 3"),
        ),
        Attempt::new(
            "proc_1_root",
            format!(
                "cat /proc/1/root{} /proc/1/root{}",
                p(&secret_at),
                p(&t.data_dir.join("agentd.db"))
            ),
            Expect::All(vec![
                Expect::Fails(&["No such file or directory", "Permission denied"]),
                Expect::Lacks(vec![t.secret.clone(), "SQLite".into()]),
            ]),
            got_secret.clone(),
        ),
        Attempt::new(
            "etc_shadow",
            "cat /etc/shadow /etc/gshadow",
            Expect::lacks(&["root:"]),
            Expect::contains("root:"),
        ),
        Attempt::new(
            "write_usr",
            create_and_remove(&format!("/usr/escape-{tok}")),
            Expect::Fails(READ_ONLY),
            Expect::Succeeds,
        ),
        Attempt::new(
            "write_etc",
            create_and_remove(&format!("/etc/escape-{tok}")),
            Expect::Fails(READ_ONLY),
            Expect::Succeeds,
        ),
        Attempt::new(
            "write_workspace_root_relative",
            create_and_remove(&format!("../../escape-rel-{tok}")),
            Expect::Fails(READ_ONLY),
            Expect::Succeeds,
        ),
        Attempt::new(
            "write_workspace_root_absolute",
            create_and_remove(&p(&t.ws_root.join(format!("escape-abs-{tok}")))),
            Expect::Fails(READ_ONLY),
            Expect::Succeeds,
        ),
        Attempt::new(
            "agentd_binary",
            format!("wc -c < {}", p(&t.agentd_bin)),
            Expect::Fails(NOT_THERE),
            Expect::Succeeds,
        ),
        Attempt::new(
            "agentd_config",
            format!("cat {}", p(&t.config)),
            Expect::Fails(NOT_THERE),
            Expect::contains("[agents."),
        ),
        Attempt::new(
            "host_tmp",
            format!("cat {}", p(&t.host_tmp_marker)),
            Expect::All(vec![
                Expect::Fails(NOT_THERE),
                Expect::Lacks(vec![t.secret.clone()]),
            ]),
            got_secret.clone(),
        ),
        Attempt::new(
            "root_home",
            "ls -a /root/.cargo /root/.bashrc",
            Expect::Fails(&["No such file or directory", "Permission denied"]),
            Expect::Succeeds,
        ),
        Attempt::new(
            "sys",
            "ls /sys/fs/cgroup",
            Expect::Fails(NOT_THERE),
            Expect::Succeeds,
        ),
        Attempt::new(
            "postgres_socket_dir",
            "ls -a /var/run/postgresql",
            Expect::Fails(NOT_THERE),
            Expect::contains(".s.PGSQL"),
        ),
        Attempt::new(
            "proc_sys_write",
            "v=$(cat /proc/sys/kernel/domainname) && echo \"$v\" > /proc/sys/kernel/domainname",
            Expect::Fails(&[
                "Read-only file system",
                "Permission denied",
                "Operation not permitted",
            ]),
            Expect::Succeeds,
        ),
        Attempt::new(
            "dev_kmsg",
            "dd if=/dev/kmsg of=/dev/null bs=8192 count=1 iflag=nonblock",
            Expect::Fails(&[
                "No such file or directory",
                "Permission denied",
                "Operation not permitted",
            ]),
            Expect::Succeeds,
        ),
        // Links the test then tries to download through the API.
        Attempt::always(
            "symlinks_to_host",
            format!(
                "ln -s /etc/passwd link-passwd && ln -s {} link-secret && ln -s {} link-store \
                 && echo linked",
                p(&secret_at),
                p(&t.data_dir.join("agentd.db"))
            ),
            Expect::Prints("linked".into()),
        ),
        Attempt::new(
            "hardlink_other_session",
            format!("ln {} hard-secret", p(&secret_at)),
            Expect::Fails(NOT_THERE),
            Expect::Succeeds,
        ),
        Attempt::new(
            "hardlink_shadow",
            "ln /etc/shadow hard-shadow",
            Expect::Fails(&[
                "Invalid cross-device link",
                "Operation not permitted",
                "No such file or directory",
            ]),
            Expect::Succeeds,
        ),
        // DownloadFile already refuses a symlink leading out of the workspace; the jail must
        // not change that.
        Attempt::api_always("download_symlink_passwd", Expect::lacks(&["root:x:0:0"])),
        // DownloadFile already refuses a symlink leading out of the workspace; the jail must
        // not change that.
        Attempt::api_always(
            "download_symlink_other_session",
            Expect::Lacks(vec![t.secret.clone()]),
        ),
        // DownloadFile already refuses a symlink leading out of the workspace; the jail must
        // not change that.
        Attempt::api_always(
            "download_symlink_store",
            Expect::lacks(&["SQLite format 3"]),
        ),
        Attempt::api(
            "download_hardlink_other_session",
            Expect::Lacks(vec![t.secret.clone()]),
            got_secret,
        ),
        Attempt::api(
            "download_hardlink_shadow",
            Expect::lacks(&["root:"]),
            Expect::contains("root:"),
        ),
    ]
}

/// Who the agent is: uid, capabilities, setuid binaries, mount, new namespaces.
pub fn identity(t: &Target) -> Vec<Attempt> {
    let mnt = format!("mnt-{}", t.token);
    // On lines of their own: a heredoc's terminator must be alone on its line.
    let mount_then_undo = |cmd: &str| {
        format!(
            "mkdir -p {mnt} || exit 99\n{cmd}\nrc=$?\numount {mnt} 2>/dev/null\nrmdir {mnt}\nexit $rc"
        )
    };
    vec![
        Attempt::new(
            "uid",
            "id -u",
            Expect::Prints("1000".into()),
            Expect::Not(Box::new(Expect::Prints("1000".into()))),
        ),
        Attempt::new(
            "gid",
            "id -g",
            Expect::Prints("1000".into()),
            Expect::Not(Box::new(Expect::Prints("1000".into()))),
        ),
        Attempt::new(
            "capabilities",
            "grep ^Cap /proc/self/status",
            Expect::CapsZero,
            Expect::Not(Box::new(Expect::CapsZero)),
        ),
        Attempt::new(
            "no_new_privs_and_seccomp",
            "awk '/^(NoNewPrivs|Seccomp):/ {print $1 $2}' /proc/self/status",
            Expect::Prints("NoNewPrivs:1\nSeccomp:2".into()),
            Expect::Not(Box::new(Expect::Prints("NoNewPrivs:1\nSeccomp:2".into()))),
        ),
        Attempt::new(
            "setuid_su",
            "su root -c 'id -u'",
            Expect::All(vec![
                Expect::Fails(&[]),
                Expect::Not(Box::new(Expect::Prints("0".into()))),
            ]),
            Expect::Prints("0".into()),
        ),
        Attempt::new(
            "setuid_passwd",
            "passwd -S root",
            Expect::Fails(&[
                "You may not view or modify password information",
                "Permission denied",
                "Operation not permitted",
            ]),
            Expect::Succeeds,
        ),
        Attempt::new(
            "setuid_mount",
            mount_then_undo(&format!("mount -t tmpfs none {mnt}")),
            Expect::Fails(&[
                "must be superuser",
                "Operation not permitted",
                "permission denied",
            ]),
            Expect::Succeeds,
        ),
        Attempt::new(
            "mount_syscall",
            mount_then_undo(&py(&format!(
                "r = sc(165, b'none', os.path.abspath('{mnt}').encode(), b'tmpfs', 0, 0)\n\
                 print(r)\nsys.exit(0 if r == 'errno=ok' else 1)"
            ))),
            Expect::errno(&["EPERM"]),
            Expect::Succeeds,
        ),
        Attempt::new(
            "chroot",
            "chroot / true",
            Expect::Fails(EPERM_TEXT),
            Expect::Succeeds,
        ),
        Attempt::new(
            "unshare_user",
            "unshare -U true",
            Expect::Fails(EPERM_TEXT),
            Expect::Succeeds,
        ),
        Attempt::new(
            "unshare_map_root",
            "unshare -r id -u",
            Expect::Fails(EPERM_TEXT),
            Expect::Prints("0".into()),
        ),
        Attempt::new(
            "unshare_mount_net",
            "unshare -m -n true",
            Expect::Fails(EPERM_TEXT),
            Expect::Succeeds,
        ),
    ]
}

/// Raw syscalls the seccomp filter refuses.
pub fn syscalls(_t: &Target) -> Vec<Attempt> {
    vec![
        // bpf(BPF_PROG_LOAD, NULL, 0)
        syscall("bpf", "sc(321, 5, 0, 0)"),
        // keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0)
        syscall("keyctl", "sc(250, 0, -3, 0)"),
        // add_key("user", "escape", "x", 1, KEY_SPEC_PROCESS_KEYRING)
        syscall("add_key", "sc(248, b'user', b'escape', b'x', 1, -2)"),
        // perf_event_open(NULL, 0, -1, -1, 0)
        syscall("perf_event_open", "sc(298, 0, 0, -1, -1, 0)"),
        syscall(
            "pivot_root",
            "sc(155, b'/nonexistent-escape', b'/nonexistent-escape')",
        ),
        syscall("umount2", "sc(166, b'/nonexistent-escape', 0)"),
        // unshare(CLONE_NEWUSER)
        syscall("unshare_syscall", "sc(272, 0x10000000)"),
        syscall(
            "setns",
            "sc(308, os.open('/proc/self/ns/mnt', os.O_RDONLY), 0)",
        ),
        syscall("userfaultfd", "sc(323, 0)"),
        // open_by_handle_at(AT_FDCWD, NULL, 0)
        syscall("open_by_handle_at", "sc(304, -100, 0, 0)"),
        // init_module(NULL, 0, "")
        syscall("init_module", "sc(175, 0, 0, b'')"),
        syscall("swapon", "sc(167, b'/nonexistent-escape', 0)"),
    ]
}

/// agentd's own process: signals, ptrace, its memory and environment.
pub fn agentd_process(t: &Target) -> Vec<Attempt> {
    let pid = t.agentd_pid;
    vec![
        // Signal 0 first: where agentd is reachable that already proves it, and it stays alive.
        Attempt::new(
            "kill_agentd",
            format!("if kill -0 {pid}; then echo reachable; exit 0; fi; kill -9 {pid}"),
            Expect::Fails(&["No such process"]),
            Expect::Prints("reachable".into()),
        ),
        Attempt::new(
            "ptrace_agentd",
            // PTRACE_SEIZE does not stop agentd; PTRACE_DETACH lets it go at once.
            py(&format!(
                "r = sc(101, 0x4206, {pid}, 0, 0)\nprint(r)\n\
                 if r == 'errno=ok':\n    sc(101, 17, {pid}, 0, 0)"
            )),
            Expect::errno(&["EPERM", "ESRCH"]),
            Expect::errno(&["ok"]),
        ),
        Attempt::new(
            "process_vm_readv_agentd",
            py(&format!("print(sc(310, {pid}, 0, 0, 0, 0, 0))")),
            Expect::errno(&["EPERM", "ESRCH"]),
            Expect::errno(&["ok"]),
        ),
        Attempt::new(
            "agentd_environ",
            format!("tr '\\0' '\\n' < /proc/{pid}/environ | grep AGENTD_API_KEYS"),
            Expect::All(vec![
                Expect::Fails(&["No such file or directory", "Permission denied"]),
                Expect::Lacks(vec![t.api_key.clone()]),
            ]),
            Expect::contains(&t.api_key),
        ),
        Attempt::new(
            "agentd_in_proc",
            format!("test -d /proc/{pid} && echo visible"),
            Expect::Fails(&[]),
            Expect::Prints("visible".into()),
        ),
    ]
}

/// Host services over loopback and unix sockets, with `network = "none"`.
pub fn network() -> Vec<Attempt> {
    vec![
        Attempt::new(
            "postgres_tcp",
            py("print(connect(socket.AF_INET, ('127.0.0.1', 5432)))"),
            Expect::errno(&["ECONNREFUSED"]),
            Expect::errno(&["ok"]),
        ),
        Attempt::new(
            "postgres_dev_tcp",
            "timeout 5 bash -c 'echo > /dev/tcp/127.0.0.1/5432'",
            Expect::Fails(&["Connection refused"]),
            Expect::Succeeds,
        ),
        Attempt::new(
            "postgres_unix_socket",
            py("print(connect(socket.AF_UNIX, '/var/run/postgresql/.s.PGSQL.5432'))"),
            Expect::errno(&["ENOENT"]),
            Expect::errno(&["ok"]),
        ),
        Attempt::new(
            "interfaces",
            "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '",
            Expect::Prints("lo".into()),
            Expect::Not(Box::new(Expect::Prints("lo".into()))),
        ),
    ]
}

/// Forks far past `max_pids` (bounded, so that without the jail it cannot hurt the host).
pub fn fork_bomb() -> Vec<Attempt> {
    vec![Attempt::new(
        "fork_bomb",
        py("pids, err = [], 'none'\n\
for i in range(300):\n    \
    try:\n        \
        p = os.fork()\n    \
    except OSError as e:\n        \
        err = errno.errorcode.get(e.errno, str(e.errno))\n        \
        break\n    \
    if p == 0:\n        \
        import time\n        \
        time.sleep(30)\n        \
        os._exit(0)\n    \
    pids.append(p)\n\
for p in pids:\n    \
    os.kill(p, 9)\n    \
    os.waitpid(p, 0)\n\
print('forked', len(pids), 'error', err)"),
        Expect::All(vec![
            Expect::contains("error EAGAIN"),
            Expect::lacks(&["forked 300 "]),
        ]),
        Expect::contains("forked 300 "),
    )]
}

/// Allocates and touches 256 MiB: over a 64 MiB `memory_mb` the kernel kills it.
pub fn memory_hog() -> Vec<Attempt> {
    vec![Attempt::new(
        "memory_hog",
        "python3 -c 'b = bytearray(256 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\nprint(\"allocated\")'",
        Expect::All(vec![Expect::Exit(137), Expect::lacks(&["allocated"])]),
        Expect::contains("allocated"),
    )]
}

/// Writes 32 MiB to /tmp: over an 8 MiB `tmp_mb` that fails with ENOSPC.
pub fn fill_tmp(t: &Target) -> Vec<Attempt> {
    let f = format!("/tmp/fill-{}", t.token);
    vec![Attempt::new(
        "fill_tmp",
        format!("dd if=/dev/zero of={f} bs=1M count=32; rc=$?; rm -f {f}; exit $rc"),
        Expect::Fails(&["No space left on device"]),
        Expect::Succeeds,
    )]
}

/// Over a 16 MiB `workspace_mb`: one 32 MiB file (past the per-file limit), then two files of
/// 10 MiB (past the total, which stops the job: `survived` is never printed).
pub fn fill_workspace() -> Vec<Attempt> {
    vec![
        Attempt::new(
            "fill_workspace_one_file",
            "dd if=/dev/zero of=big.bin bs=1M count=32; rc=$?; rm -f big.bin; exit $rc",
            // RLIMIT_FSIZE: SIGXFSZ kills dd (128 + 25; the shell of a command substitution
            // prints nothing), or EFBIG where the signal is ignored.
            Expect::Any(vec![
                Expect::Exit(153),
                Expect::Fails(&[
                    "File too large",
                    "File size limit exceeded",
                    "Disk quota exceeded",
                    "No space left on device",
                ]),
            ]),
            Expect::Succeeds,
        ),
        Attempt::new(
            "fill_workspace_total",
            "dd if=/dev/zero of=fill-1.bin bs=1M count=10 && dd if=/dev/zero of=fill-2.bin bs=1M \
             count=10 && sleep 8 && echo survived",
            Expect::lacks(&["survived"]),
            Expect::contains("survived"),
        ),
    ]
}

/// Over a 16 MiB `workspace_mb`: two files of 10 MiB in the session's private HOME, which lasts
/// as long as the session and so counts toward the same total: the job is stopped.
pub fn fill_home() -> Vec<Attempt> {
    vec![Attempt::new(
        "fill_home_total",
        "dd if=/dev/zero of=\"$HOME/fill-1.bin\" bs=1M count=10 && dd if=/dev/zero \
         of=\"$HOME/fill-2.bin\" bs=1M count=10 && sleep 8 && echo survived",
        Expect::lacks(&["survived"]),
        Expect::contains("survived"),
    )]
}

/// Over a `workspace_files` of 2,000: 5,000 empty files, which no byte count sees: the job is
/// stopped.
pub fn fill_entries() -> Vec<Attempt> {
    vec![Attempt::new(
        "fill_workspace_files",
        "mkdir many && seq -f 'many/%g' 1 5000 | xargs touch && sleep 8 && echo survived",
        Expect::lacks(&["survived"]),
        Expect::contains("survived"),
    )]
}

/// Over a 16 MiB `workspace_mb`: two sparse files of 12 MiB. They take no blocks, but the job's
/// snapshots and downloads read and store every byte: the job is stopped.
pub fn fill_sparse() -> Vec<Attempt> {
    vec![Attempt::new(
        "fill_workspace_sparse",
        "truncate -s 12M sparse-1.bin && truncate -s 12M sparse-2.bin && sleep 8 && echo survived",
        Expect::lacks(&["survived"]),
        Expect::contains("survived"),
    )]
}

/// Directories nested past PATH_MAX: 1,500 levels of `dddd`, 7,500 bytes of path in fewer
/// entries than `workspace_files`. No client could name the bottom, and each level costs every
/// walk of agentd's its whole path again: the job is stopped.
pub fn nest() -> Vec<Attempt> {
    vec![Attempt::new(
        "nest_past_path_max",
        "python3 -c 'import os\nfor _ in range(1500):\n    os.mkdir(\"dddd\"); os.chdir(\"dddd\")' \
         && sleep 8 && echo survived",
        Expect::lacks(&["survived"]),
        Expect::contains("survived"),
    )]
}

/// The attempts named, in the order named (panics on an unknown name: a typo must not shrink a
/// suite silently).
pub fn pick(all: &[Attempt], names: &[&str]) -> Vec<Attempt> {
    names
        .iter()
        .map(|n| {
            all.iter()
                .find(|a| a.name == *n)
                .unwrap_or_else(|| panic!("no attempt named {n}"))
                .clone()
        })
        .collect()
}

/// The report file the script writes in the workspace.
pub const REPORT: &str = "escape-report.txt";

/// One bash script running every attempt in order (each in a subshell, stdin from /dev/null,
/// stdout and stderr captured), writing `@@ <name> <exit code> <base64 output>` per attempt to
/// [`REPORT`] and stdout. It always exits 0: the verdicts are the test's.
pub fn script(attempts: &[Attempt]) -> String {
    let mut s = String::from(
        "#!/bin/bash\n\
         # Escape attempts generated by tests/sandbox.rs (tests/sandbox/attacks.rs).\n\
         report=escape-report.txt\n\
         : > \"$report\"\n\
         attempt() {\n  \
           local out rc\n  \
           out=$(\"a_$1\" 2>&1 </dev/null)\n  \
           rc=$?\n  \
           printf '@@ %s %d %s\\n' \"$1\" \"$rc\" \"$(printf '%s' \"$out\" | head -c 700 | base64 -w0)\" \
             | tee -a \"$report\"\n\
         }\n",
    );
    for a in attempts.iter().filter(|a| !a.cmd.is_empty()) {
        let _ = write!(s, "a_{}() {{\n{}\n}}\nattempt {}\n", a.name, a.cmd, a.name);
    }
    s.push_str("echo '@@ end'\nexit 0\n");
    s
}

/// The outcomes in a report, by attempt name.
pub fn parse(report: &str) -> BTreeMap<String, Outcome> {
    use base64::Engine;
    let mut out = BTreeMap::new();
    for line in report.lines() {
        let mut w = line.splitn(4, ' ');
        if w.next() != Some("@@") {
            continue;
        }
        let (Some(name), Some(rc)) = (w.next(), w.next().and_then(|r| r.parse().ok())) else {
            continue;
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(w.next().unwrap_or("").trim())
            .unwrap_or_default();
        out.insert(
            name.to_owned(),
            Outcome {
                rc,
                out: String::from_utf8_lossy(&bytes).into_owned(),
            },
        );
    }
    out
}

/// Holds every attempt to its expectation: `blocked` with the jail, `escaped` in baseline mode
/// (`expect_escape`, `always` attempts excepted). Returns the table of verdicts and the names that
/// failed; an attempt without an outcome fails.
pub fn judge(
    attempts: &[Attempt],
    outcomes: &BTreeMap<String, Outcome>,
    expect_escape: bool,
) -> (String, Vec<&'static str>) {
    let mut table = String::new();
    let mut failed = Vec::new();
    for a in attempts {
        let want = if expect_escape && !a.always {
            &a.escaped
        } else {
            &a.blocked
        };
        let (ok, line) = match outcomes.get(a.name) {
            None => (false, "no outcome (the attempt never reported)".to_owned()),
            Some(o) => {
                let ok = want.holds(o) && (expect_escape || a.always || !a.escaped.holds(o));
                let text: String = o
                    .out
                    .trim()
                    .replace('\n', " | ")
                    .chars()
                    .take(160)
                    .collect();
                (ok, format!("exit {} | {text}", o.rc))
            }
        };
        if !ok {
            failed.push(a.name);
        }
        let _ = writeln!(
            table,
            "  {} {:<32} {line}",
            if ok { "ok  " } else { "FAIL" },
            a.name
        );
    }
    (table, failed)
}
