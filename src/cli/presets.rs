//! `agentd presets ls|get|create|rm`: the caller's presets and the operator's (PresetService).

use super::conn::{CliError, Conn};
use super::exit;
use super::render::{self, Printer};
use crate::pb;
use clap::Subcommand;
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum PresetsCommand {
    /// List your presets, then the operator's.
    Ls,
    /// Show one preset.
    Get { name: String },
    /// Create one of your presets.
    Create(Box<CreateArgs>),
    /// Delete one of your presets.
    Rm { name: String },
}

/// `agentd presets create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    name: String,
    /// The prompt with `{{variables}}` (`\{{` for literal braces).
    #[arg(long, value_name = "TEXT")]
    template: Option<String>,
    #[arg(long)]
    description: Option<String>,
    #[arg(long)]
    agent: Option<String>,
    #[arg(long)]
    model: Option<String>,
    /// Job timeout in seconds.
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<u32>,
    /// A job field that jobs of this preset may set themselves (repeatable).
    #[arg(long = "overridable", value_name = "FIELD")]
    overridable: Vec<String>,
    /// An MCP server of the operator's catalog (repeatable).
    #[arg(long = "mcp", value_name = "NAME")]
    mcp_servers: Vec<String>,
    /// A Claude subagent of the operator's catalog (repeatable).
    #[arg(long = "subagent", value_name = "NAME")]
    subagents: Vec<String>,
    /// A skill of the operator's catalog (repeatable).
    #[arg(long = "skill", value_name = "NAME")]
    skills: Vec<String>,
    /// Replaces the agent's system prompt.
    #[arg(long, value_name = "TEXT")]
    system_prompt: Option<String>,
    /// A tool the agent must not use (repeatable).
    #[arg(long = "disallowed-tool", value_name = "TOOL")]
    disallowed_tools: Vec<String>,
    /// A JSON Schema (the text) the final answer must satisfy.
    #[arg(long, value_name = "JSON")]
    output_schema: Option<String>,
    /// Stream text and thinking deltas.
    #[arg(long)]
    stream_deltas: bool,
    /// A workspace file given to the agent (repeatable).
    #[arg(long = "attach", value_name = "PATH")]
    attachments: Vec<String>,
}

fn client(conn: &Conn) -> pb::preset_service_client::PresetServiceClient<super::conn::Svc> {
    conn.presets()
}

fn to_json(p: &pb::Preset) -> serde_json::Value {
    json!({"type": "preset", "name": p.name, "description": p.description, "agent": p.agent,
           "model": p.model, "prompt_template": p.prompt_template, "overridable": p.overridable,
           "mcp_servers": p.mcp_servers, "subagents": p.subagents, "skills": p.skills,
           "timeout_seconds": p.timeout_seconds, "read_only": p.read_only,
           "system_prompt": p.system_prompt, "disallowed_tools": p.disallowed_tools,
           "output_schema": p.output_schema, "stream_deltas": p.stream_deltas,
           "attachments": p.attachments})
}

fn row(p: &pb::Preset) -> Vec<String> {
    let vars = crate::presets::template::variables(&p.prompt_template);
    vec![
        p.name.clone(),
        if p.read_only { "operator" } else { "yours" }.into(),
        render::or_dash(&p.agent),
        if vars.is_empty() {
            "-".into()
        } else {
            vars.join(",")
        },
        p.description.clone(),
    ]
}

pub(super) async fn presets(
    conn: &Conn,
    json: bool,
    cmd: PresetsCommand,
    p: &mut Printer,
) -> Result<i32, CliError> {
    let mut c = client(conn);
    match cmd {
        PresetsCommand::Ls => {
            let list = c
                .list_presets(pb::ListPresetsRequest {})
                .await
                .map_err(CliError::rpc("listing presets"))?
                .into_inner()
                .presets;
            let header = ["PRESET", "OWNER", "AGENT", "VARIABLES", "DESCRIPTION"];
            p.listing(json, &list, to_json, &header, row).await;
        }
        PresetsCommand::Get { name } => {
            let preset = c
                .get_preset(pb::GetPresetRequest { name })
                .await
                .map_err(CliError::rpc("getting the preset"))?
                .into_inner()
                .preset
                .unwrap_or_default();
            p.json(&to_json(&preset)).await;
        }
        PresetsCommand::Create(a) => {
            let CreateArgs {
                name,
                template,
                description,
                agent,
                model,
                timeout,
                overridable,
                mcp_servers,
                subagents,
                skills,
                system_prompt,
                disallowed_tools,
                output_schema,
                stream_deltas,
                attachments,
            } = *a;
            let preset = pb::Preset {
                name,
                prompt_template: template.unwrap_or_default(),
                description: description.unwrap_or_default(),
                agent: agent.unwrap_or_default(),
                model: model.unwrap_or_default(),
                timeout_seconds: timeout.unwrap_or(0),
                overridable,
                mcp_servers,
                subagents,
                skills,
                system_prompt: system_prompt.unwrap_or_default(),
                disallowed_tools,
                output_schema: output_schema.unwrap_or_default(),
                stream_deltas,
                attachments,
                ..Default::default()
            };
            let created = c
                .create_preset(pb::CreatePresetRequest {
                    preset: Some(preset),
                })
                .await
                .map_err(CliError::rpc("creating the preset"))?
                .into_inner()
                .preset
                .unwrap_or_default();
            if json {
                p.json(&to_json(&created)).await;
            } else {
                p.line(&created.name).await;
            }
        }
        PresetsCommand::Rm { name } => {
            c.delete_preset(pb::DeletePresetRequest { name: name.clone() })
                .await
                .map_err(CliError::rpc("deleting the preset"))?;
            if json {
                p.json(&json!({"type": "deleted", "preset": name})).await;
            }
        }
    }
    Ok(exit::OK)
}
