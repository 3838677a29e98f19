//! Issue #18: the workspace history's snapshot of a big workspace where a job changed a few
//! files, against `git add -A && git commit` of the same tree in the same run (a separate git
//! dir, so neither sees the other's store). Time, and bytes the store grew by vs bytes changed.

use crate::harness::{Env, TempDir};
use crate::report::{Goal, Metric};
use agentd::workspace::history::History;
use anyhow::{Context, Result, ensure};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Source-like text (hex of a xorshift stream, in lines): compressible the way code is.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(format!("{x:016x} ").as_bytes());
        if out.len() % 81 < 17 {
            out.push(b'\n');
        }
    }
    out.truncate(len);
    out
}

fn dir_bytes(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

fn git(git_dir: &Path, tree: &Path, args: &[&str]) -> Result<()> {
    let st = Command::new("git")
        .arg(format!("--git-dir={}", git_dir.display()))
        .arg(format!("--work-tree={}", tree.display()))
        .args([
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@example.com",
        ])
        .args(["-c", "gc.auto=0", "-c", "core.fsync=none"])
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .context("run git")?;
    ensure!(st.success(), "git {args:?} failed");
    Ok(())
}

/// `git add -A && git commit`, timed.
fn git_snapshot(git_dir: &Path, tree: &Path, msg: &str) -> Result<Duration> {
    let t = Instant::now();
    git(git_dir, tree, &["add", "-A"])?;
    git(git_dir, tree, &["commit", "-q", "-m", msg])?;
    Ok(t.elapsed())
}

fn take(
    h: &History,
    tree: &Path,
    prev: Option<&agentd::workspace::history::Tree>,
) -> Result<(Duration, agentd::workspace::history::Taken)> {
    let t = Instant::now();
    let fd: std::os::fd::OwnedFd = std::fs::File::open(tree)?.into();
    let taken = h.take(fd, prev, None).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((t.elapsed(), taken))
}

pub async fn snapshot(env: &Env) -> Result<Vec<Metric>> {
    let (files, total): (usize, usize) = env.size((2_000, 30 << 20), (20_000, 300 << 20));
    let changed = 10usize;
    tokio::task::spawn_blocking(move || run(files, total, changed)).await?
}

fn run(files: usize, total: usize, changed: usize) -> Result<Vec<Metric>> {
    let tmp = TempDir::new("snapshot")?;
    let tree = tmp.path().join("tree");
    let per = total / files;
    for i in 0..files {
        let p = tree.join(format!("d{:03}/f{i}.txt", i % 200));
        if i < 200 {
            std::fs::create_dir_all(p.parent().context("parent")?)?;
        }
        std::fs::write(&p, content(i as u64, per))?;
    }
    let h = History::open(&tmp.path().join("history")).map_err(|e| anyhow::anyhow!("{e}"))?;
    let git_dir = tmp.path().join("git");
    git(&git_dir, &tree, &["init", "-q"])?;
    // Out of the racy window, as a workspace is between jobs.
    std::thread::sleep(Duration::from_millis(200));
    let (first_ours, first) = take(&h, &tree, None)?;
    let first_git = git_snapshot(&git_dir, &tree, "first")?;

    // What a job did: rewrite `changed` files with new content of the same size.
    let mut bytes_changed = 0u64;
    for i in 0..changed {
        let idx = i * (files / changed);
        let p = tree.join(format!("d{:03}/f{idx}.txt", idx % 200));
        let c = content(1_000_000 + i as u64, per);
        bytes_changed += c.len() as u64;
        std::fs::write(&p, c)?;
    }
    let store_before = dir_bytes(&tmp.path().join("history/objects"));
    let git_before = dir_bytes(&git_dir);
    let (ours, second) = take(&h, &tree, Some(&first.tree))?;
    let theirs = git_snapshot(&git_dir, &tree, "second")?;
    let store_added = dir_bytes(&tmp.path().join("history/objects")) - store_before;
    let git_added = dir_bytes(&git_dir).saturating_sub(git_before);
    ensure!(
        second.stats.files_read as usize == changed,
        "snapshot read {} files, {changed} changed",
        second.stats.files_read
    );
    // What a snapshot over a stored listing pays before it walks: reading that listing back and
    // parsing it. A job's after-snapshot starts from the before-snapshot's listing in memory
    // (`history::Basis::Held`), and its before-snapshot from the listing this process took at the
    // session's previous job (`History::listing`); only a listing another replica or an earlier
    // process took is read back.
    let t = Instant::now();
    let listing = h.tree(&first.id).map_err(|e| anyhow::anyhow!("{e}"))?;
    let read_back = t.elapsed();
    ensure!(
        listing.entries.len() == first.tree.entries.len(),
        "listing read back differs"
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(vec![
        Metric::new(
            "first snapshot (whole tree) vs git add+commit",
            ms(first_ours),
            "ms",
        )
        .baseline(ms(first_git)),
        Metric::new(
            &format!("snapshot after {changed} files changed vs git add+commit"),
            ms(ours),
            "ms",
        )
        .baseline(ms(theirs))
        .goal(Goal::RatioAtMost(1.0)),
        Metric::new(
            "bytes stored by that snapshot vs bytes changed",
            store_added as f64,
            "B",
        )
        .baseline(bytes_changed as f64)
        .goal(Goal::RatioAtMost(1.1)),
        Metric::new(
            "bytes git stored for it vs bytes changed",
            git_added as f64,
            "B",
        )
        .baseline(bytes_changed as f64),
        Metric::new(
            &format!("stored listing of {files} files read back and parsed"),
            ms(read_back),
            "ms",
        ),
        Metric::new("tree size", (first.tree.bytes() as f64) / 1e6, "MB"),
    ])
}
