use super::*;
use crate::agents::interactive::test_lines::{lines, sent};

const SAMPLE: &str = include_str!("testdata/opencode-acp-sample.jsonl");

fn acp(resume: Option<&str>) -> Acp {
    Acp::new(Setup {
        resume: resume.map(str::to_owned),
        cwd: "/ws/s1".into(),
        new_if_unloadable: false,
        replay_ends_with_commands: false,
    })
}

const SESSION: &str = r#"{"jsonrpc":"2.0","id":"agentd-session","result":{"sessionId":"ses_1"}}"#;
const ASK: &str = r#"{"jsonrpc":"2.0","id":0,"method":"session/request_permission","params":{"sessionId":"ses_1","toolCall":{"toolCallId":"call_1","title":"/ws/s1/note.txt","kind":"edit","status":"pending","locations":[{"path":"/ws/s1/note.txt"}],"rawInput":{"filepath":"/ws/s1/note.txt","diff":"+hi"},"content":[{"type":"diff","path":"/ws/s1/note.txt","oldText":"","newText":"hi\n"}]},"options":[{"optionId":"once","kind":"allow_once","name":"Allow once"},{"optionId":"always","kind":"allow_always","name":"Always allow"},{"optionId":"reject","kind":"reject_once","name":"Reject"}]}}"#;

#[test]
fn the_handshake_opens_or_loads_the_session_then_prompts() {
    let p = acp(None);
    let hello = lines(&p.prompt("write note.txt hi", &[]));
    assert_eq!(hello[0]["method"], "initialize");
    assert_eq!(hello[0]["params"]["clientCapabilities"]["terminal"], false);
    assert_eq!(hello[1]["method"], "session/new");
    assert_eq!(hello[1]["params"]["cwd"], "/ws/s1");
    assert_eq!(p.user_message("more"), "");
    // One turn at a time: the input waits for the first turn's end.
    let prompts = sent(p.observe(SESSION));
    assert_eq!(prompts.len(), 1);
    assert_eq!(prompts[0]["method"], "session/prompt");
    assert_eq!(prompts[0]["params"]["sessionId"], "ses_1");
    assert_eq!(
        prompts[0]["params"]["prompt"][0]["text"],
        "write note.txt hi"
    );
    let first = r#"{"jsonrpc":"2.0","id":"agentd-prompt-1","result":{"stopReason":"end_turn"}}"#;
    let Some(Signal::TurnEndedThen(next)) = p.observe(first) else {
        panic!("the held input was not sent at the turn's end");
    };
    assert_eq!(lines(&next)[0]["params"]["prompt"][0]["text"], "more");

    let p = acp(Some("ses_0"));
    let hello = lines(&p.prompt("recall", &[]));
    assert_eq!(hello[1]["method"], "session/load");
    assert_eq!(hello[1]["params"]["sessionId"], "ses_0");
    // session/load answers null: the session is the one asked for.
    let prompts = sent(p.observe(r#"{"jsonrpc":"2.0","id":"agentd-session","result":null}"#));
    assert_eq!(prompts[0]["params"]["sessionId"], "ses_0");
}

#[test]
fn input_sent_mid_turn_is_held_until_the_turn_ends() {
    let p = acp(None);
    p.prompt("delay 6 remember kiwi", &[]);
    sent(p.observe(SESSION));
    assert_eq!(
        p.user_message("remember mango"),
        "",
        "not folded into the running turn"
    );
    let first = r#"{"jsonrpc":"2.0","id":"agentd-prompt-1","result":{"stopReason":"end_turn"}}"#;
    let Some(Signal::TurnEndedThen(next)) = p.observe(first) else {
        panic!("the held input was not sent at the turn's end");
    };
    let next = lines(&next);
    assert_eq!(next[0]["params"]["prompt"][0]["text"], "remember mango");
    let id = next[0]["id"].as_str().unwrap().to_owned();
    let done = format!(r#"{{"jsonrpc":"2.0","id":"{id}","result":{{"stopReason":"end_turn"}}}}"#);
    assert_eq!(p.observe(&done), Some(Signal::TurnEnded));
    // Between turns, input goes at once.
    assert_eq!(
        lines(&p.user_message("again"))[0]["params"]["prompt"][0]["text"],
        "again"
    );
}

#[test]
fn a_permission_request_names_the_tool_and_the_answers_pick_once_options() {
    let p = acp(None);
    p.prompt("x", &[]);
    p.observe(SESSION);
    let Some(Signal::Permission {
        id,
        tool,
        input,
        suggestion,
    }) = p.observe(ASK)
    else {
        panic!("not a permission request");
    };
    assert_eq!((id.as_str(), tool.as_str()), ("0", "Write"));
    assert_eq!(input["file_path"], "/ws/s1/note.txt");
    assert!(suggestion.is_some());
    let allow = lines(&p.answer(&id, true, "", &input));
    assert_eq!(allow.len(), 1);
    assert_eq!(allow[0]["result"]["outcome"]["optionId"], "once");
    assert_eq!(p.answer(&id, false, "late", &input), "");

    p.observe(ASK);
    let deny = lines(&p.answer("0", false, "not there", &input));
    assert_eq!(deny[0]["result"]["outcome"]["optionId"], "reject");
}

#[test]
fn a_denied_turn_ends_with_the_prompt_carrying_its_message() {
    let p = acp(None);
    p.prompt("x", &[]);
    p.observe(SESSION);
    p.observe(ASK);
    assert_eq!(lines(&p.answer("0", false, "no", &json!({}))).len(), 1);
    // The turn the denial ended: the message goes to the model as the next prompt.
    let first = r#"{"jsonrpc":"2.0","id":"agentd-prompt-1","result":{"stopReason":"end_turn"}}"#;
    let note = sent(p.observe(first));
    assert_eq!(note[0]["method"], "session/prompt");
    assert_eq!(
        note[0]["params"]["prompt"][0]["text"],
        "Permission denied: no"
    );
    let note_id = note[0]["id"].as_str().unwrap().to_owned();
    let done =
        format!(r#"{{"jsonrpc":"2.0","id":"{note_id}","result":{{"stopReason":"end_turn"}}}}"#);
    assert_eq!(p.observe(&done), Some(Signal::TurnEnded));
}

#[test]
fn commands_and_unknown_requests() {
    let p = acp(None);
    let bash = r#"{"jsonrpc":"2.0","id":5,"method":"session/request_permission","params":{"toolCall":{"toolCallId":"c","title":"git push","kind":"execute","rawInput":{"command":"git push"}},"options":[{"optionId":"r","kind":"reject_always"}]}}"#;
    let Some(Signal::Permission { tool, input, .. }) = p.observe(bash) else {
        panic!("not a permission request");
    };
    assert_eq!(
        (tool.as_str(), input["command"].as_str()),
        ("Bash", Some("git push"))
    );
    // No reject_once offered: cancelled, never an `always` option.
    let deny = lines(&p.answer("5", false, "", &input));
    assert_eq!(deny[0]["result"]["outcome"]["outcome"], "cancelled");
    // A request agentd does not serve is refused at once.
    let fs = r#"{"jsonrpc":"2.0","id":1,"method":"fs/write_text_file","params":{"path":"/x","content":""}}"#;
    let reply = sent(p.observe(fs));
    assert_eq!(reply[0]["id"], 1);
    assert!(reply[0]["error"].is_object());
}

#[test]
fn an_interrupt_is_a_cancel_of_the_session() {
    let p = acp(None);
    p.prompt("delay 60 remember papaya", &[]);
    // Before the session exists: sent with the first prompt.
    assert_eq!(p.interrupt(1), "");
    let out = sent(p.observe(SESSION));
    assert_eq!(out.last().unwrap()["method"], "session/cancel");
    let again = lines(&p.interrupt(2));
    assert_eq!(again[0]["params"]["sessionId"], "ses_1");
}

#[test]
fn the_agents_updates_are_the_jobs_events() {
    let p = acp(None);
    let mut parser = p.parser().unwrap();
    let events: Vec<EventKind> = SAMPLE
        .lines()
        .flat_map(|l| parser.parse_line(l, false))
        .map(|p| p.kind)
        .collect();
    let init = events.iter().find_map(|e| match e {
        EventKind::Init {
            conversation_id, ..
        } => Some(conversation_id.clone()),
        _ => None,
    });
    let s = parser.summary();
    assert_eq!(init, s.conversation_id, "{events:?}");
    assert!(init.unwrap().starts_with("ses_"));
    let call = events.iter().find_map(|e| match e {
        EventKind::ToolCall {
            name, input_json, ..
        } => Some((name.clone(), input_json.clone())),
        _ => None,
    });
    let (name, input) = call.expect("a tool call");
    assert_eq!(name, "write");
    assert!(input.contains("denied.txt"), "{input}");
    // The sample's write was rejected by the caller.
    assert!(
        events
            .iter()
            .any(|e| matches!(e, EventKind::ToolResult { is_error: true, .. }))
    );
    assert!(
        events.iter().any(|e| matches!(e, EventKind::Text { .. })),
        "{events:?}"
    );
    assert_eq!(s.error, None);
    assert!(s.result.is_some());
    assert_eq!((s.usage.input_tokens, s.usage.num_turns), (200, 2));
}

#[test]
fn a_loaded_sessions_replay_is_not_this_jobs_output() {
    let p = acp(Some("ses_0"));
    let mut parser = p.parser().unwrap();
    let replay = r#"{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"ses_0","update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"old answer"}}}}"#;
    assert!(parser.parse_line(replay, false).is_empty());
    let loaded = parser.parse_line(
        r#"{"jsonrpc":"2.0","id":"agentd-session","result":null}"#,
        false,
    );
    assert!(
        matches!(&loaded[0].kind, EventKind::Init { conversation_id, .. } if conversation_id == "ses_0")
    );
    let refused = parser.parse_line(
        r#"{"jsonrpc":"2.0","id":"agentd-prompt-1","error":{"code":-32603,"message":"mock model failure 500"}}"#,
        false,
    );
    assert!(!refused.is_empty());
    assert_eq!(
        parser.summary().error.as_deref(),
        Some("mock model failure 500")
    );
}

/// Gemini CLI 0.61's request (captured): no rawInput, the path only in its locations and diff.
const GEMINI_ASK: &str = r#"{"jsonrpc":"2.0","id":0,"method":"session/request_permission","params":{"sessionId":"g1","options":[{"optionId":"proceed_always","name":"Allow for this session","kind":"allow_always"},{"optionId":"proceed_once","name":"Allow","kind":"allow_once"},{"optionId":"cancel","name":"Reject","kind":"reject_once"}],"toolCall":{"toolCallId":"write_file__write_file_1_0","status":"pending","title":"Writing to hello.txt","content":[{"type":"diff","path":"/ws/s1/hello.txt","oldText":"","newText":"hi there\n","_meta":{"kind":"add"}}],"locations":[{"path":"/ws/s1/hello.txt"}],"kind":"edit"}}}"#;

#[test]
fn gemini_requests_and_usage_read_like_opencodes() {
    let p = acp(None);
    p.prompt("write hello.txt hi there", &[]);
    p.observe(r#"{"jsonrpc":"2.0","id":"agentd-session","result":{"sessionId":"g1"}}"#);
    let Some(Signal::Permission {
        id, tool, input, ..
    }) = p.observe(GEMINI_ASK)
    else {
        panic!("not a permission request");
    };
    assert_eq!(
        (tool.as_str(), input["file_path"].as_str()),
        ("Write", Some("/ws/s1/hello.txt"))
    );
    let allow = lines(&p.answer(&id, true, "", &input));
    assert_eq!(allow[0]["result"]["outcome"]["optionId"], "proceed_once");
    p.observe(GEMINI_ASK);
    let deny = lines(&p.answer(&id, false, "", &input));
    assert_eq!(deny[0]["result"]["outcome"]["optionId"], "cancel");

    let mut parser = p.parser().unwrap();
    let end = r#"{"jsonrpc":"2.0","id":"agentd-prompt-1","result":{"stopReason":"end_turn","_meta":{"quota":{"token_count":{"input_tokens":200,"output_tokens":40}}}}}"#;
    parser.parse_line(end, false);
    let u = parser.summary().usage;
    assert_eq!((u.input_tokens, u.output_tokens, u.num_turns), (200, 40, 1));
}

/// The first prompt carries the job's images as ACP `image` blocks (base64 `data`, `mimeType`);
/// later input is text alone.
#[test]
fn the_first_prompt_carries_the_images_as_image_blocks() {
    use base64::Engine as _;
    let p = acp(None);
    let images = [crate::agents::Image {
        path: "a.png".into(),
        media_type: "image/png",
        data: b"\x89PNG\r\n\x1a\nrest".to_vec(),
    }];
    p.prompt("look", &images);
    assert_eq!(p.user_message("more"), "");
    let prompts = sent(p.observe(SESSION));
    let content = &prompts[0]["params"]["prompt"];
    assert_eq!(content[0], json!({"type": "text", "text": "look"}));
    assert_eq!(content[1]["type"], "image");
    assert_eq!(content[1]["mimeType"], "image/png");
    let data = base64::engine::general_purpose::STANDARD
        .decode(content[1]["data"].as_str().unwrap())
        .unwrap();
    assert_eq!(data, images[0].data);
    let first = r#"{"jsonrpc":"2.0","id":"agentd-prompt-1","result":{"stopReason":"end_turn"}}"#;
    let Some(Signal::TurnEndedThen(next)) = p.observe(first) else {
        panic!("the held input was not sent at the turn's end");
    };
    assert_eq!(
        lines(&next)[0]["params"]["prompt"],
        json!([{"type": "text", "text": "more"}])
    );
}

#[test]
fn a_conversation_gemini_cannot_load_is_followed_by_a_new_one() {
    let refused = r#"{"jsonrpc":"2.0","id":"agentd-session","error":{"code":-32603,"message":"Internal error","data":{"details":"No previous sessions found for this project."}}}"#;
    let p = Acp::new(Setup {
        resume: Some("gone".into()),
        cwd: "/ws/s1".into(),
        new_if_unloadable: true,
        replay_ends_with_commands: true,
    });
    let mut parser = p.parser().expect("parser");
    assert_eq!(lines(&p.prompt("recall", &[]))[1]["method"], "session/load");
    let again = sent(p.observe(refused));
    assert_eq!(again[0]["method"], "session/new");
    assert_eq!(again[0]["params"]["cwd"], "/ws/s1");
    let kinds: Vec<EventKind> = parser
        .parse_line(refused, false)
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, [other("conversation_not_loaded")]);
    let prompts = sent(p.observe(SESSION));
    assert_eq!(prompts[0]["params"]["sessionId"], "ses_1");
    assert_eq!(prompts[0]["params"]["prompt"][0]["text"], "recall");
    parser.parse_line(SESSION, false);
    let summary = parser.summary();
    assert_eq!(summary.conversation_id.as_deref(), Some("ses_1"));
    assert_eq!(summary.error, None);
    // Refused twice, the job ends with the agent's words.
    assert_eq!(p.observe(refused), Some(Signal::TurnEnded));

    // Without the option (OpenCode) a refused load fails the job as before.
    let p = acp(Some("gone"));
    let mut parser = p.parser().expect("parser");
    p.prompt("recall", &[]);
    assert_eq!(p.observe(refused), Some(Signal::TurnEnded));
    parser.parse_line(refused, false);
    assert_eq!(parser.summary().error.as_deref(), Some("Internal error"));
}

#[test]
fn gemini_replays_a_loaded_conversation_after_its_answer_up_to_its_commands() {
    let p = Acp::new(Setup {
        resume: Some("g0".into()),
        cwd: "/ws/s1".into(),
        new_if_unloadable: true,
        replay_ends_with_commands: true,
    });
    let mut parser = p.parser().expect("parser");
    let update = |kind: &str, rest: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","method":"session/update","params":{{"sessionId":"g0","update":{{"sessionUpdate":"{kind}"{rest}}}}}}}"#
        )
    };
    let text = |t: &str| {
        update(
            "agent_message_chunk",
            &format!(r#","content":{{"type":"text","text":"{t}"}}"#),
        )
    };
    let mut events = Vec::new();
    // Gemini CLI 0.61's order (captured): the answer, then the replay, then its commands.
    for line in [
        update(
            "user_message_chunk",
            r#","content":{"type":"text","text":"<session_context>"}"#,
        ),
        r#"{"jsonrpc":"2.0","id":"agentd-session","result":{"modes":{}}}"#.to_owned(),
        update(
            "user_message_chunk",
            r#","content":{"type":"text","text":"bash echo hi"}"#,
        ),
        text("Running it."),
        update(
            "tool_call",
            r#","toolCallId":"t0","status":"completed","title":"Shell","kind":"execute""#,
        ),
        text("Done. Tool said: hi"),
        update("available_commands_update", r#","availableCommands":[]"#),
        text("You asked me "),
        text("to remember kiwi."),
        r#"{"jsonrpc":"2.0","id":"agentd-prompt-1","result":{"stopReason":"end_turn"}}"#.to_owned(),
    ] {
        events.extend(parser.parse_line(&line, false).into_iter().map(|e| e.kind));
    }
    let texts: Vec<&EventKind> = events
        .iter()
        .filter(|e| matches!(e, EventKind::Text { .. } | EventKind::ToolCall { .. }))
        .collect();
    assert_eq!(
        texts,
        [&EventKind::Text {
            text: "You asked me to remember kiwi.".into()
        }]
    );
    assert_eq!(
        parser.summary().result.as_deref(),
        Some("You asked me to remember kiwi.")
    );
    assert_eq!(parser.summary().conversation_id.as_deref(), Some("g0"));
}
