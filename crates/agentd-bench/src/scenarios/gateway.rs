//! The model gateway (issue #16): a streamed model call through agentd's gateway vs the same call
//! straight to the same mock upstream, interleaved in one run: time to the first response byte
//! and to the end of the stream, p50; and agentd's RSS before, its peak growth while 100 streams
//! pass at once, and what is left resident once they are done.
//! The mock is in this process: an Anthropic-style SSE answer of `CHUNKS` events 1 ms apart.

use crate::harness::{Agentd, Env, mono_ns, ms, peak_kib, percentile, reset_peak, rss_kib};
use crate::report::{Goal, Metric};
use agentd::pb;
use anyhow::{Context, Result, ensure};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CHUNKS: usize = 20;
const KEY: &str = "sk-bench-upstream-key";

/// Answers every request with a streamed message (usage in its first and last events).
async fn mock() -> Result<String> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?.to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut buf = vec![0u8; 16 * 1024];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                            transfer-encoding: chunked\r\nconnection: close\r\n\r\n";
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for i in 0..CHUNKS {
                    let data = match i {
                        0 => r#"{"type":"message_start","message":{"model":"bench","usage":{"input_tokens":100,"output_tokens":1}}}"#.to_owned(),
                        i if i + 1 == CHUNKS => r#"{"type":"message_delta","usage":{"output_tokens":20}}"#.to_owned(),
                        _ => format!(r#"{{"type":"content_block_delta","delta":{{"text":"chunk {i}"}}}}"#),
                    };
                    let event = format!("data: {data}\n\n");
                    let chunk = format!("{:x}\r\n{event}\r\n", event.len());
                    if s.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let _ = s.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    Ok(addr)
}

/// One call: (ns to the first response byte, ns to the end of the answer).
async fn call(addr: &str, path: &str, key: &str) -> Result<(u64, u64)> {
    let body = r#"{"model":"bench","max_tokens":10,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nx-api-key: {key}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let t0 = mono_ns();
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(req.as_bytes()).await?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = s.read(&mut buf).await?;
    let first = mono_ns() - t0;
    ensure!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "call to {addr}{path} not answered 200"
    );
    let mut total = n;
    loop {
        match s.read(&mut buf).await? {
            0 => break,
            n => total += n,
        }
    }
    ensure!(total > CHUNKS * 20, "short answer from {addr}{path}");
    Ok((first, mono_ns() - t0))
}

pub async fn gateway(env: &Env) -> Result<Vec<Metric>> {
    let upstream = mock().await?;
    let config = format!(
        "[agents.gw]\nkind = \"command\"\ncommand = \"/bin/sh\"\n\
         args = [\"-c\", \"echo $AGENTD_GATEWAY_TOKEN; exec sleep 600\"]\n\
         [agents.gw.gateway]\nupstream_url = \"http://{upstream}\"\napi_key = \"{KEY}\"\n\
         api = \"anthropic\"\n"
    );
    // Port 0: the kernel picks a free port and agentd announces it (a fixed or probed port could
    // be taken by another process between the probe and agentd's bind).
    let a = Agentd::start_with(env, &config, &["--gateway-listen", "127.0.0.1:0"])?;
    let gw = a
        .proc
        .gateway_addr
        .clone()
        .context("agentd announced no gateway address")?;
    // A job of the gateway profile prints its token and waits: the token is valid meanwhile.
    let mut c = a.clients().await?;
    let session = c.session().await?;
    let job_id = c.submit_to(&session, "gw", "hold").await?;
    let token = fetch_token(&a, &job_id).await?;
    ensure!(token.starts_with("agj_"), "no job token ({token:?})");
    let rounds = env.size(50, 500);
    let (mut d_first, mut d_all, mut g_first, mut g_all) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        let (f, t) = call(&upstream, "/v1/messages", KEY).await?;
        d_first.push(f);
        d_all.push(t);
        let (f, t) = call(&gw, "/gw/gw/v1/messages", &token).await?;
        g_first.push(f);
        g_all.push(t);
    }
    let pid = a.pid();
    let before = rss_kib(pid)?;
    reset_peak(pid)?;
    let streams = env.size(20, 100);
    let all: Vec<_> = (0..streams)
        .map(|_| {
            let (gw, token) = (gw.clone(), token.clone());
            tokio::spawn(async move { call(&gw, "/gw/gw/v1/messages", &token).await })
        })
        .collect();
    for h in all {
        h.await.context("stream task")??;
    }
    let growth = peak_kib(pid)?.saturating_sub(before) as f64 / 1024.0;
    // Flat means it also comes back down: what the streams left resident once they are all done.
    let left = rss_kib(pid)?.saturating_sub(before) as f64 / 1024.0;
    let p50 = |v: &mut Vec<u64>| ms(percentile(v, 50.0));
    Ok(vec![
        Metric::new("ttfb.p50", p50(&mut g_first), "ms")
            .baseline(p50(&mut d_first))
            .goal(Goal::OverheadAtMost(1.0)),
        Metric::new("stream.p50", p50(&mut g_all), "ms")
            .baseline(p50(&mut d_all))
            .goal(Goal::RatioAtMost(1.1)),
        Metric::new("rss_before_streams", before as f64 / 1024.0, "MiB"),
        Metric::new(&format!("rss_growth.{streams}_streams"), growth, "MiB")
            .goal(Goal::AtMost(32.0)),
        Metric::new(&format!("rss_left.{streams}_streams"), left, "MiB"),
    ])
}

/// The token the job printed (its first text event).
async fn fetch_token(a: &Agentd, job: &str) -> Result<String> {
    let mut c = a.clients().await?;
    for _ in 0..100 {
        let mut s = c.stream(job).await?;
        let msg = tokio::time::timeout(Duration::from_millis(500), s.message()).await;
        if let Ok(Ok(Some(m))) = msg {
            for e in m.events {
                if let Some(pb::job_event::Kind::Text(t)) = e.kind {
                    return Ok(t.text.trim().to_owned());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the gateway job printed no token")
}
