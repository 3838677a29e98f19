//! `agentd.v1.ServerInfoService`.

use crate::core::Core;
use crate::pb;
use crate::pb::server_info_service_server::ServerInfoService;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct ServerInfoApi {
    core: Arc<Core>,
}

impl ServerInfoApi {
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }
}

fn secs(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

#[tonic::async_trait]
impl ServerInfoService for ServerInfoApi {
    async fn get_server_info(
        &self,
        _req: Request<pb::GetServerInfoRequest>,
    ) -> Result<Response<pb::GetServerInfoResponse>, Status> {
        let cfg = self.core.config();
        let l = &cfg.limits;
        let catalog = self.core.catalog();
        Ok(Response::new(pb::GetServerInfoResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            agents: self
                .core
                .agents()
                .iter()
                .map(|a| pb::AgentInfo {
                    name: a.name.clone(),
                    kind: a.kind.clone(),
                    command: a.command.clone(),
                    available: a.available,
                    version: a.version.clone(),
                    problem: a.problem.clone(),
                    sandbox: Some(sandbox(cfg.sandbox.profiles.get(&a.name))),
                    controls: cfg
                        .agents
                        .get(&a.name)
                        .map(|p| crate::agents::interactive::controls(p.kind))
                        .unwrap_or_default()
                        .iter()
                        .map(|c| (*c).to_owned())
                        .collect(),
                    capabilities: cfg
                        .agents
                        .get(&a.name)
                        .map(|p| crate::agents::capabilities(p.kind))
                        .unwrap_or_default()
                        .iter()
                        .map(|c| (*c).to_owned())
                        .collect(),
                })
                .collect(),
            default_agent: cfg.default_agent.clone(),
            limits: Some(pb::ServerLimits {
                max_concurrent_jobs: u32::try_from(l.max_concurrent_jobs).unwrap_or(u32::MAX),
                max_queued_jobs_per_session: u32::try_from(l.max_queued_jobs_per_session)
                    .unwrap_or(u32::MAX),
                job_timeout_default_seconds: secs(l.job_timeout_default),
                job_timeout_max_seconds: secs(l.job_timeout_max),
                session_ttl_default_seconds: secs(l.session_ttl_default),
                session_ttl_max_seconds: secs(l.session_ttl_max),
                max_files_per_session: l.max_files_per_session,
                max_session_bytes: l.max_session_bytes,
                max_file_bytes: l.max_file_bytes,
                max_upload_chunk_bytes: super::file::CHUNK_BYTES as u32,
            }),
            sandbox: Some(support(self.core.host_support())),
            mcp_servers: catalog.mcp.keys().cloned().collect(),
            subagents: catalog.subagents.keys().cloned().collect(),
            skills: catalog.skills.keys().cloned().collect(),
        }))
    }
}

fn support(h: &crate::runner::jail::probe::HostSupport) -> pb::SandboxSupport {
    pb::SandboxSupport {
        user_namespaces: h.user_ns,
        mount_namespaces: h.mount_ns,
        pid_namespaces: h.pid_ns,
        network_namespaces: h.net_ns,
        seccomp: h.seccomp,
        landlock_abi: h.landlock_abi,
        cgroup_version: h.cgroup_version.clone(),
        cgroup_controllers: h.cgroup_controllers.clone(),
    }
}

fn sandbox(s: Option<&crate::config::Sandbox>) -> pb::AgentSandbox {
    let Some(s) = s else {
        return pb::AgentSandbox::default();
    };
    let mb = |b: Option<u64>| b.map_or(0, |b| b >> 20);
    let paths = |v: &[std::path::PathBuf]| v.iter().map(|p| p.display().to_string()).collect();
    pb::AgentSandbox {
        enabled: s.enabled,
        network: s.network.as_str().to_owned(),
        memory_mb: mb(s.limits.memory_bytes),
        max_pids: s.limits.max_pids.unwrap_or(0),
        cpu_millis: s.limits.cpu_millis.unwrap_or(0),
        tmp_mb: s.limits.tmp_bytes >> 20,
        workspace_mb: mb(s.limits.workspace_bytes),
        workspace_files: s.limits.workspace_files.unwrap_or(0),
        read_only: paths(&s.read_only),
        read_write: paths(&s.read_write),
    }
}
