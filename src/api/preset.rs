//! `agentd.v1.PresetService`: the caller's presets (and the operator's, read-only).

use super::{convert, tenant};
use crate::core::{Core, PresetView};
use crate::error::{Error, Reason};
use crate::pb;
use crate::pb::preset_service_server::PresetService;
use crate::presets::Preset;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct PresetApi {
    core: Arc<Core>,
}

impl PresetApi {
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }
}

fn opt<T: PartialEq + Default>(v: T) -> Option<T> {
    (v != T::default()).then_some(v)
}

/// The wire preset as the core's (name apart); output-only fields are ignored.
fn from_pb(p: Option<pb::Preset>) -> Result<(String, Preset), Error> {
    let p =
        p.ok_or_else(|| Error::invalid(Reason::MissingField, "preset", "preset is required"))?;
    let preset = Preset {
        description: opt(p.description),
        agent: opt(p.agent),
        model: opt(p.model),
        append_system_prompt: opt(p.append_system_prompt),
        permission_mode: opt(p.permission_mode),
        allowed_tools: p.allowed_tools,
        max_turns: opt(p.max_turns),
        timeout_seconds: opt(p.timeout_seconds),
        max_cost_usd: opt(p.max_cost_usd),
        max_tokens: opt(p.max_tokens),
        mcp_servers: p.mcp_servers,
        subagents: p.subagents,
        skills: p.skills,
        env: p.env.into_iter().collect(),
        prompt_template: opt(p.prompt_template),
        overridable: p.overridable,
        system_prompt: opt(p.system_prompt),
        disallowed_tools: p.disallowed_tools,
        output_schema: opt(p.output_schema),
        stream_deltas: p.stream_deltas,
        attachments: p.attachments,
        allow_rules: p.allow_rules,
        deny_rules: p.deny_rules,
        permission_timeout_seconds: opt(p.permission_timeout_seconds),
        webhook_url: opt(p.webhook_url),
    };
    Ok((p.name, preset))
}

fn to_pb(v: PresetView) -> pb::Preset {
    let p = v.preset;
    pb::Preset {
        name: v.name,
        description: p.description.unwrap_or_default(),
        agent: p.agent.unwrap_or_default(),
        model: p.model.unwrap_or_default(),
        append_system_prompt: p.append_system_prompt.unwrap_or_default(),
        permission_mode: p.permission_mode.unwrap_or_default(),
        allowed_tools: p.allowed_tools,
        max_turns: p.max_turns.unwrap_or_default(),
        timeout_seconds: p.timeout_seconds.unwrap_or_default(),
        max_cost_usd: p.max_cost_usd.unwrap_or_default(),
        max_tokens: p.max_tokens.unwrap_or_default(),
        mcp_servers: p.mcp_servers,
        subagents: p.subagents,
        skills: p.skills,
        env: p.env.into_iter().collect(),
        prompt_template: p.prompt_template.unwrap_or_default(),
        overridable: p.overridable,
        system_prompt: p.system_prompt.unwrap_or_default(),
        disallowed_tools: p.disallowed_tools,
        output_schema: p.output_schema.unwrap_or_default(),
        stream_deltas: p.stream_deltas,
        attachments: p.attachments,
        allow_rules: p.allow_rules,
        deny_rules: p.deny_rules,
        permission_timeout_seconds: p.permission_timeout_seconds.unwrap_or_default(),
        webhook_url: p.webhook_url.unwrap_or_default(),
        read_only: v.read_only,
        create_time: v.created.map(convert::ts),
        update_time: v.updated.map(convert::ts),
    }
}

#[tonic::async_trait]
impl PresetService for PresetApi {
    async fn create_preset(
        &self,
        req: Request<pb::CreatePresetRequest>,
    ) -> Result<Response<pb::CreatePresetResponse>, Status> {
        let tenant = tenant(&req)?;
        let (name, preset) = from_pb(req.into_inner().preset)?;
        let view = self.core.create_preset(&tenant, name, preset).await?;
        Ok(Response::new(pb::CreatePresetResponse {
            preset: Some(to_pb(view)),
        }))
    }

    async fn get_preset(
        &self,
        req: Request<pb::GetPresetRequest>,
    ) -> Result<Response<pb::GetPresetResponse>, Status> {
        let tenant = tenant(&req)?;
        let view = self.core.get_preset(&tenant, &req.get_ref().name).await?;
        Ok(Response::new(pb::GetPresetResponse {
            preset: Some(to_pb(view)),
        }))
    }

    async fn list_presets(
        &self,
        req: Request<pb::ListPresetsRequest>,
    ) -> Result<Response<pb::ListPresetsResponse>, Status> {
        let tenant = tenant(&req)?;
        let views = self.core.list_presets(&tenant).await?;
        Ok(Response::new(pb::ListPresetsResponse {
            presets: views.into_iter().map(to_pb).collect(),
        }))
    }

    async fn update_preset(
        &self,
        req: Request<pb::UpdatePresetRequest>,
    ) -> Result<Response<pb::UpdatePresetResponse>, Status> {
        let tenant = tenant(&req)?;
        let (name, preset) = from_pb(req.into_inner().preset)?;
        let view = self.core.update_preset(&tenant, name, preset).await?;
        Ok(Response::new(pb::UpdatePresetResponse {
            preset: Some(to_pb(view)),
        }))
    }

    async fn delete_preset(
        &self,
        req: Request<pb::DeletePresetRequest>,
    ) -> Result<Response<pb::DeletePresetResponse>, Status> {
        let tenant = tenant(&req)?;
        self.core
            .delete_preset(&tenant, &req.get_ref().name)
            .await?;
        Ok(Response::new(pb::DeletePresetResponse {}))
    }
}
