//! The capability options of a job (#20) at submit time, and the structured-output check at its
//! end: `output_schema` must compile as a JSON Schema, and the final answer must satisfy it. The
//! agent-specific half (which agent can do what, its flags) is in `agents`.

use crate::agents;
use crate::domain::JobCaps;
use crate::error::{Error, Reason, Result};
use serde_json::Value;

/// Largest `output_schema` and `system_prompt` accepted: both may travel in one argv string,
/// which Linux caps at 128 KiB.
const MAX_ARG_BYTES: usize = 64 * 1024;
/// Most tool names or attachments one job may list.
const MAX_LIST: usize = 64;
/// Validation errors quoted back to the model or in the failure message.
const MAX_ERRORS: usize = 8;

impl super::Core {
    /// Each attachment must be a regular file of the session's workspace when the job is
    /// submitted (the agent is told to read it).
    pub(super) async fn check_attachments(
        &self,
        session: &crate::domain::SessionId,
        caps: &JobCaps,
    ) -> Result<()> {
        for (i, path) in caps.attachments.iter().enumerate() {
            if let Err(e) = self.workspaces.open_read(session, path, 0, false).await {
                return Err(Error::invalid(
                    e.reason(),
                    format!("attachments[{i}]"),
                    format!("attachments[{i}]: {e}"),
                ));
            }
        }
        Ok(())
    }

    /// The job's attachments that are images, read now (they may have changed since submit),
    /// for an agent that takes images: sniffed by content, each at most
    /// [`agents::MAX_IMAGE_BYTES`] and all together [`agents::MAX_IMAGES_TOTAL`]. Anything else
    /// (not an image, too large, gone) stays a path in the prompt, as for agents without images.
    pub(super) async fn attachment_images(
        &self,
        session: &crate::domain::SessionId,
        spec: &crate::domain::JobSpec,
        kind: agents::AgentKind,
    ) -> Vec<agents::Image> {
        use tokio::io::AsyncReadExt as _;
        let mut out = Vec::new();
        if !agents::takes_images(kind) {
            return out;
        }
        let mut total = 0;
        for path in &spec.caps.attachments {
            let Ok((entry, file)) = self.workspaces.open_read(session, path, 0, false).await else {
                continue;
            };
            let fits =
                |n: usize| n <= agents::MAX_IMAGE_BYTES && total + n <= agents::MAX_IMAGES_TOTAL;
            if !usize::try_from(entry.size).is_ok_and(fits) {
                continue;
            }
            let mut data = Vec::with_capacity(entry.size as usize);
            // One byte over the cap tells a file that grew since its stat.
            let cap = (agents::MAX_IMAGE_BYTES + 1) as u64;
            if file.take(cap).read_to_end(&mut data).await.is_err() || !fits(data.len()) {
                continue;
            }
            if let Some(media_type) = agents::sniff_image(&data) {
                total += data.len();
                out.push(agents::Image {
                    path: path.clone(),
                    media_type,
                    data,
                });
            }
        }
        out
    }
}

/// Checks and normalizes the capability fields of a submit request (empty strings: unset).
pub(super) fn job_caps(
    stream_deltas: bool,
    output_schema: String,
    system_prompt: String,
    disallowed_tools: Vec<String>,
    attachments: Vec<String>,
) -> Result<JobCaps> {
    let output_schema = non_empty(output_schema);
    if let Some(schema) = &output_schema {
        check_size("output_schema", schema)?;
        compile(schema)?;
    }
    let system_prompt = non_empty(system_prompt);
    if let Some(s) = &system_prompt {
        check_size("system_prompt", s)?;
    }
    check_list("disallowed_tools", &disallowed_tools, 256, |t| {
        !t.trim().is_empty() && !t.chars().any(char::is_control)
    })?;
    check_list("attachments", &attachments, 4096, relative_path)?;
    Ok(JobCaps {
        stream_deltas,
        output_schema,
        system_prompt,
        disallowed_tools,
        attachments,
    })
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn check_size(field: &str, value: &str) -> Result<()> {
    if value.len() > MAX_ARG_BYTES || value.contains('\0') {
        return Err(Error::invalid(
            Reason::InvalidField,
            field,
            format!("{field} must be at most {MAX_ARG_BYTES} bytes with no NUL byte"),
        ));
    }
    Ok(())
}

fn check_list(
    field: &str,
    items: &[String],
    max_len: usize,
    ok: impl Fn(&str) -> bool,
) -> Result<()> {
    if items.len() > MAX_LIST {
        return Err(Error::invalid(
            Reason::InvalidField,
            field,
            format!("{field} may list at most {MAX_LIST} entries"),
        ));
    }
    for (i, item) in items.iter().enumerate() {
        if item.is_empty() || item.len() > max_len || item.contains('\0') || !ok(item) {
            return Err(Error::invalid(
                Reason::InvalidField,
                format!("{field}[{i}]"),
                format!("{field}[{i}] is not a valid entry (1-{max_len} bytes)"),
            ));
        }
    }
    Ok(())
}

/// A workspace-relative path without `..`: the agent reads it from its working directory.
fn relative_path(p: &str) -> bool {
    !p.starts_with('/') && p.split('/').all(|c| !c.is_empty() && c != "..")
}

fn compile(schema: &str) -> Result<jsonschema::Validator> {
    crate::domain::compile_output_schema(schema)
}

/// The answer as compact JSON satisfying `schema`, or what is wrong with it (in words the model
/// can act on). The answer may be the agent's structured output or its final text, where a
/// model often wraps the JSON in a code fence.
pub(crate) fn check_answer(
    schema: &str,
    structured: Option<&str>,
    text: &str,
) -> std::result::Result<String, String> {
    let validator = compile(schema).map_err(|e| e.to_string())?;
    let candidate = structured.unwrap_or_else(|| unfence(text));
    let value: Value = serde_json::from_str(candidate)
        .map_err(|e| format!("the answer is not a JSON value: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .take(MAX_ERRORS)
        .map(|e| format!("at {:?}: {e}", e.instance_path().as_str()))
        .collect();
    if errors.is_empty() {
        Ok(value.to_string())
    } else {
        Err(format!(
            "the answer does not satisfy the output schema: {}",
            errors.join("; ")
        ))
    }
}

/// A finished run's outcome and result text under the job's `output_schema`: a successful run
/// whose answer satisfies it keeps the answer as compact JSON; one whose answer does not fails
/// with reason `OUTPUT_SCHEMA`. Without a schema, or when the run failed anyway, as they are.
pub(crate) fn structured(
    spec: &crate::domain::JobSpec,
    outcome: crate::domain::Outcome,
    summary: &crate::agents::Summary,
) -> (crate::domain::Outcome, String) {
    let text = summary.result.clone().unwrap_or_default();
    let (Some(schema), crate::domain::Outcome::Succeeded) = (&spec.caps.output_schema, &outcome)
    else {
        return (outcome, text);
    };
    match check_answer(schema, summary.structured.as_deref(), &text) {
        Ok(json) => (outcome, json),
        Err(message) => (crate::domain::Outcome::OutputSchema { message }, text),
    }
}

/// Two turns' usage as one.
pub(crate) fn add_usage(
    a: &crate::domain::Usage,
    b: &crate::domain::Usage,
) -> crate::domain::Usage {
    crate::domain::Usage {
        input_tokens: a.input_tokens + b.input_tokens,
        output_tokens: a.output_tokens + b.output_tokens,
        cache_read_input_tokens: a.cache_read_input_tokens + b.cache_read_input_tokens,
        cache_creation_input_tokens: a.cache_creation_input_tokens + b.cache_creation_input_tokens,
        cost_usd: match (a.cost_usd, b.cost_usd) {
            (None, None) => None,
            (x, y) => Some(x.unwrap_or(0.0) + y.unwrap_or(0.0)),
        },
        num_turns: a.num_turns + b.num_turns,
        duration_ms: a.duration_ms + b.duration_ms,
    }
}

/// The text inside a Markdown code fence, if the whole answer is one.
fn unfence(text: &str) -> &str {
    let t = text.trim();
    let Some(inner) = t.strip_prefix("```").and_then(|r| r.strip_suffix("```")) else {
        return t;
    };
    // Skip the info string (`json`) on the fence's first line.
    inner
        .split_once('\n')
        .map_or(inner, |(_, body)| body)
        .trim()
}

/// The follow-up prompt of the one corrective turn.
pub(crate) fn corrective_prompt(schema: &str, problem: &str) -> String {
    format!(
        "Your previous answer was rejected: {problem}.\n\nAnswer again with only a JSON value \
         (no other text, no code fence) that satisfies this JSON Schema:\n{schema}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str =
        r#"{"type":"object","properties":{"n":{"type":"integer"}},"required":["n"]}"#;

    #[test]
    fn a_schema_that_does_not_compile_is_refused_at_submit() {
        for bad in ["{", r#"{"type": 12}"#] {
            let err = job_caps(false, bad.into(), String::new(), vec![], vec![]).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidArgument { field, .. } if field == "output_schema"),
                "{err:?}"
            );
        }
        let ok = job_caps(false, SCHEMA.into(), String::new(), vec![], vec![]).unwrap();
        assert_eq!(ok.output_schema.as_deref(), Some(SCHEMA));
    }

    #[test]
    fn attachments_must_stay_inside_the_workspace() {
        for bad in ["/etc/passwd", "../x", "a/../../b", "a//b", ""] {
            let r = job_caps(
                false,
                String::new(),
                String::new(),
                vec![],
                vec![bad.into()],
            );
            assert!(r.is_err(), "{bad:?} accepted");
        }
        let ok = job_caps(
            false,
            "".into(),
            "".into(),
            vec![],
            vec!["img/a.png".into()],
        );
        assert!(ok.is_ok());
    }

    #[test]
    fn answers_are_checked_against_the_schema() {
        assert_eq!(
            check_answer(SCHEMA, None, r#" {"n": 3} "#).unwrap(),
            r#"{"n":3}"#
        );
        assert_eq!(
            check_answer(SCHEMA, None, "```json\n{\"n\": 4}\n```").unwrap(),
            r#"{"n":4}"#
        );
        assert_eq!(
            check_answer(SCHEMA, Some(r#"{"n":5}"#), "ignored").unwrap(),
            r#"{"n":5}"#
        );
        let err = check_answer(SCHEMA, None, r#"{"n": "three"}"#).unwrap_err();
        assert!(err.contains("/n"), "{err}");
        let err = check_answer(SCHEMA, None, "not json").unwrap_err();
        assert!(err.contains("not a JSON value"), "{err}");
    }
}
