//! Fuzzes the opencode adapter's stdout line parser: any bytes, any line cut flags, never a panic.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| common::run(agentd::agents::AgentKind::Opencode, data));
