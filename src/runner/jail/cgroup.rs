//! Per-job cgroups (stub until the cgroup work lands: no limits are applied).

#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub max_pids: Option<u64>,
    pub cpu_millis: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

#[derive(Debug, Clone, Default)]
pub struct Probe {
    pub version: Option<Version>,
    pub controllers: Vec<String>,
}

pub fn probe(_parent: &str) -> Probe {
    Probe::default()
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    pub oom_kills: u64,
    pub pids_hits: u64,
    pub memory_bytes: u64,
}

#[derive(Debug)]
pub struct JobCgroup;

impl JobCgroup {
    pub fn create(_parent: &str, _name: &str, _limits: &Limits) -> Result<JobCgroup, String> {
        Err("cgroups are not implemented yet".into())
    }
    pub fn attach(&self, _pid: i32) -> Result<(), String> {
        Ok(())
    }
    pub fn counters(&self) -> Counters {
        Counters::default()
    }
    pub fn procs(&self) -> Vec<i32> {
        Vec::new()
    }
    pub fn kill_all(&self) {}
    pub fn remove(self) -> Result<(), String> {
        Ok(())
    }
}
