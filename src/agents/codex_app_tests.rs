use super::*;
use crate::agents::interactive::test_lines::{lines, sent};
use crate::domain::EventKind;

const SAMPLE: &str = include_str!("testdata/codex-app-server-sample.jsonl");

fn app(resume: Option<&str>) -> CodexApp {
    CodexApp::new(Setup {
        resume: resume.map(str::to_owned),
        cwd: "/ws/s1".into(),
        sandbox: "workspace-write".into(),
        model: None,
        developer_instructions: None,
        output_schema: None,
    })
}

#[test]
fn the_handshake_starts_or_resumes_the_thread_then_sends_the_prompt() {
    let p = app(None);
    let hello = lines(&p.prompt("write a.txt hi", &[]));
    let methods: Vec<_> = hello.iter().map(|v| v["method"].clone()).collect();
    assert_eq!(methods, ["initialize", "initialized", "thread/start"]);
    assert_eq!(hello[2]["params"]["approvalPolicy"], "untrusted");
    assert_eq!(hello[2]["params"]["cwd"], "/ws/s1");
    // Input before the thread exists waits for it, in order.
    assert_eq!(p.user_message("and more"), "");
    let started = sent(p.observe(SAMPLE.lines().nth(2).unwrap()));
    assert_eq!(started.len(), 2);
    assert_eq!(started[0]["method"], "turn/start");
    assert_eq!(started[0]["params"]["input"][0]["text"], "write a.txt hi");
    assert_eq!(started[1]["params"]["input"][0]["text"], "and more");
    assert_eq!(
        started[0]["params"]["threadId"],
        "01a24923-c9a4-7690-9cbe-7be278b706bc"
    );

    let resumed = lines(&app(Some("th-1")).prompt("recall", &[]));
    assert_eq!(resumed[2]["method"], "thread/resume");
    assert_eq!(resumed[2]["params"]["threadId"], "th-1");
}

#[test]
fn every_turn_carries_the_jobs_output_schema() {
    let schema = json!({"type": "object", "required": ["n"]});
    let p = CodexApp::new(Setup {
        output_schema: Some(schema.clone()),
        ..Setup::default()
    });
    p.prompt("json {\"n\": 1}", &[]);
    let started = sent(p.observe(SAMPLE.lines().nth(2).unwrap()));
    assert_eq!(started[0]["params"]["outputSchema"], schema);
    let more = lines(&p.user_message("again"));
    assert_eq!(more[0]["params"]["outputSchema"], schema);
    // Without a schema the field is absent, never null.
    let plain = app(None);
    plain.prompt("x", &[]);
    let started = sent(plain.observe(SAMPLE.lines().nth(2).unwrap()));
    assert!(started[0]["params"].get("outputSchema").is_none());
}

#[test]
fn a_command_approval_is_a_bash_permission_request_and_its_answers_are_codexs() {
    let p = app(None);
    p.prompt("write note.txt hello there", &[]);
    for l in SAMPLE.lines().take(14) {
        p.observe(l);
    }
    let ask = SAMPLE
        .lines()
        .find(|l| l.contains("requestApproval"))
        .unwrap();
    let Some(Signal::Permission {
        id, tool, input, ..
    }) = p.observe(ask)
    else {
        panic!("not a permission request");
    };
    assert_eq!((id.as_str(), tool.as_str()), ("0", "Bash"));
    // The model's command, not Codex's `bash -lc` wrapper: rules match what the model wrote.
    assert_eq!(input["command"], "printf '%s\\n' 'hello there' > note.txt");

    let allow = lines(&p.answer(&id, true, "", &input));
    assert_eq!(allow.len(), 1);
    assert_eq!(allow[0]["id"], 0);
    assert_eq!(allow[0]["result"]["decision"], "accept");
    // Answered once: a second answer to the same request writes nothing.
    assert_eq!(p.answer(&id, false, "late", &input), "");
}

#[test]
fn a_denial_steers_its_message_into_the_turn_before_declining() {
    let p = app(None);
    p.prompt("x", &[]);
    p.observe(SAMPLE.lines().nth(2).unwrap());
    let ask = r#"{"method":"item/commandExecution/requestApproval","id":7,"params":{"threadId":"t","turnId":"turn-9","itemId":"c1","command":"/bin/bash -lc 'git push'","cwd":"/ws/s1"}}"#;
    let Some(Signal::Permission { id, input, .. }) = p.observe(ask) else {
        panic!("not a permission request");
    };
    assert_eq!(input["command"], "/bin/bash -lc 'git push'");
    let out = lines(&p.answer(&id, false, "no pushing", &input));
    assert_eq!(out[0]["method"], "turn/steer");
    assert_eq!(out[0]["params"]["expectedTurnId"], "turn-9");
    assert_eq!(
        out[0]["params"]["input"][0]["text"],
        "Permission denied: no pushing"
    );
    assert_eq!(out[1]["id"], 7);
    assert_eq!(out[1]["result"]["decision"], "decline");
}

#[test]
fn a_file_change_approval_names_the_files_of_its_item() {
    let p = app(None);
    p.observe(r#"{"method":"item/started","params":{"item":{"type":"fileChange","id":"fc1","changes":[{"path":"/ws/s1/src/a.rs","kind":{"type":"add"},"diff":"+x"}],"status":"inProgress"}}}"#);
    let ask = r#"{"method":"item/fileChange/requestApproval","id":3,"params":{"threadId":"t","turnId":"u","itemId":"fc1","startedAtMs":1}}"#;
    let Some(Signal::Permission { tool, input, .. }) = p.observe(ask) else {
        panic!("not a permission request");
    };
    assert_eq!(tool, "Write");
    assert_eq!(input["file_path"], "/ws/s1/src/a.rs");
}

#[test]
fn questions_agentd_cannot_ask_are_refused_so_codex_never_waits() {
    let p = app(None);
    let ask = r#"{"method":"item/tool/requestUserInput","id":4,"params":{}}"#;
    let reply = sent(p.observe(ask));
    assert_eq!(reply[0]["id"], 4);
    assert!(reply[0]["error"]["message"].is_string());
}

#[test]
fn turns_end_once_each_and_input_joining_a_turn_ends_with_it() {
    let p = app(None);
    p.prompt("delay 3 remember kiwi", &[]);
    p.observe(SAMPLE.lines().nth(2).unwrap());
    assert_eq!(p.observe(SAMPLE.lines().nth(5).unwrap()), None);
    // Input while the turn runs: Codex answers with the running turn's id.
    p.user_message("remember mango");
    let joined = SAMPLE
        .lines()
        .nth(5)
        .unwrap()
        .replace("agentd-turn-1", "agentd-turn-2");
    assert_eq!(p.observe(&joined), Some(Signal::TurnEnded));
    let done = SAMPLE.lines().last().unwrap();
    assert_eq!(p.observe(done), Some(Signal::TurnEnded));
}

#[test]
fn an_interrupt_names_the_running_turn_or_waits_for_one() {
    let p = app(None);
    p.prompt("delay 60 remember papaya", &[]);
    p.observe(SAMPLE.lines().nth(2).unwrap());
    // Before the turn is known: nothing yet, sent when it starts.
    assert_eq!(p.interrupt(1), "");
    let out = sent(p.observe(SAMPLE.lines().nth(5).unwrap()));
    assert_eq!(out[0]["method"], "turn/interrupt");
    assert_eq!(
        out[0]["params"]["turnId"],
        "01a24923-c9dc-7961-abbc-20db67b50e2e"
    );
    // Once known: at once.
    let again = lines(&p.interrupt(2));
    assert_eq!(again[0]["method"], "turn/interrupt");
}

#[test]
fn the_app_servers_output_makes_the_same_events_as_exec_json() {
    let mut parser = CodexAppParser::default();
    let events: Vec<EventKind> = SAMPLE
        .lines()
        .flat_map(|l| parser.parse_line(l, false))
        .map(|p| p.kind)
        .collect();
    let init = events
        .iter()
        .find_map(|e| match e {
            EventKind::Init {
                conversation_id, ..
            } => Some(conversation_id.clone()),
            _ => None,
        })
        .expect("init");
    assert_eq!(init, "01a24923-c9a4-7690-9cbe-7be278b706bc");
    let texts: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            EventKind::Text { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(texts.first(), Some(&"Writing note.txt."));
    let call = events
        .iter()
        .find_map(|e| match e {
            EventKind::ToolCall {
                name, input_json, ..
            } => Some((name, input_json)),
            _ => None,
        })
        .expect("tool call");
    assert_eq!(call.0, "command_execution");
    assert!(call.1.contains("note.txt"), "{}", call.1);
    assert!(
        events.iter().any(|e| matches!(
            e,
            EventKind::ToolResult {
                is_error: false,
                ..
            }
        )),
        "{events:?}"
    );
    // No token deltas or status flags among the events.
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, EventKind::Other { r#type } if r#type.contains("status"))),
        "{events:?}"
    );
    let s = parser.summary();
    assert_eq!(s.conversation_id.as_deref(), Some(init.as_str()));
    assert_eq!(s.error, None);
    assert!(s.result.unwrap().starts_with("Done. Tool said"));
    assert_eq!((s.usage.input_tokens, s.usage.output_tokens), (200, 40));
    assert_eq!(s.usage.num_turns, 1);
}

#[test]
fn a_failed_turn_or_missing_thread_is_the_jobs_error() {
    let mut parser = CodexAppParser::default();
    parser.parse_line(
        r#"{"id":"agentd-thread","error":{"code":-32600,"message":"no rollout found for thread id th-9"}}"#,
        false,
    );
    let err = parser.summary().error.expect("error");
    assert!(err.contains("no rollout found"), "{err}");

    let mut parser = CodexAppParser::default();
    parser.parse_line(
        r#"{"method":"turn/completed","params":{"turn":{"id":"u","status":"failed","error":{"message":"mock model failure 500"}}}}"#,
        false,
    );
    assert_eq!(
        parser.summary().error.as_deref(),
        Some("mock model failure 500")
    );
    assert_eq!(
        parser.parse_line("not json", false)[0].kind,
        EventKind::Unparsed {
            line: "not json".into(),
            truncated: false
        }
    );
}

/// The first turn carries the job's images as `image` input items whose `data:` URL holds the
/// bytes agentd read; later input is text alone.
#[test]
fn the_first_turn_carries_the_images_as_data_urls() {
    let p = app(None);
    let images = [crate::agents::Image {
        path: "a.png".into(),
        media_type: "image/png",
        data: b"\x89PNG\r\n\x1a\nrest".to_vec(),
    }];
    p.prompt("look", &images);
    let started = sent(p.observe(SAMPLE.lines().nth(2).unwrap()));
    let input = &started[0]["params"]["input"];
    assert_eq!(input[0], json!({"type": "text", "text": "look"}));
    assert_eq!(input[1]["type"], "image");
    assert_eq!(input[1]["url"], images[0].data_url());
    assert!(
        images[0]
            .data_url()
            .starts_with("data:image/png;base64,iVBORw0KGgpyZXN0")
    );
    let more = lines(&p.user_message("again"));
    assert_eq!(
        more[0]["params"]["input"],
        json!([{"type": "text", "text": "again"}])
    );
}
