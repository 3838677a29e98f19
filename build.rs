//! Compiles `proto/agentd/v1/*.proto` with protox (pure Rust, no protoc needed) and writes the
//! file descriptor set next to the generated code so the server can offer reflection.
//!
//! Also turns the Postgres tests on (cfg `agentd_pg_tests`) when `AGENTD_TEST_DATABASE_URL` is
//! set, so that without it `cargo test` reports them as ignored instead of failing.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo::rustc-check-cfg=cfg(agentd_pg_tests)");
    println!("cargo:rerun-if-env-changed=AGENTD_TEST_DATABASE_URL");
    if std::env::var_os("AGENTD_TEST_DATABASE_URL").is_some_and(|v| !v.is_empty()) {
        println!("cargo:rustc-cfg=agentd_pg_tests");
    }
    let files = [
        "agentd/v1/session.proto",
        "agentd/v1/job.proto",
        "agentd/v1/file.proto",
        "agentd/v1/server_info.proto",
        "agentd/v1/usage.proto",
        "agentd/v1/webhook.proto",
        "agentd/v1/preset.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed=proto/{f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("agentd_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .bytes(".agentd.v1")
        // Malformed requests are the caller's mistake (INVALID_ARGUMENT), not INTERNAL.
        .codec_path("crate::api::codec::Codec")
        // Attach's messages are oneofs of small and large variants; the large ones go on the heap.
        .boxed(".agentd.v1.AttachRequest.action.submit")
        .boxed(".agentd.v1.AttachResponse.kind.ack")
        // Hand-written so that the server can send events encoded once for all readers
        // (src/api/wire.rs); identical on the wire.
        .extern_path(
            ".agentd.v1.StreamJobEventsResponse",
            "crate::api::wire::StreamJobEventsResponse",
        )
        .compile_fds(fds)?;
    Ok(())
}
