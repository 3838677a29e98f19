//! Memory at rest: agentd's RSS when idle, and what each idle session adds.

use crate::harness::{Agentd, Env, rss_kib};
use crate::report::{Goal, Metric};
use agentd::pb;
use anyhow::Result;
use std::time::Duration;

pub async fn rss(env: &Env) -> Result<Vec<Metric>> {
    let sessions: usize = env.size(1000, 10_000);
    let a = Agentd::start(env, &[])?;
    let mut c = a.clients().await?;
    c.info.get_server_info(pb::GetServerInfoRequest {}).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_kib(a.pid())?;
    let workers = 16;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let mut c = c.clone();
        let mine = sessions / workers + usize::from(w < sessions % workers);
        tasks.spawn(async move {
            for _ in 0..mine {
                c.session().await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let full = rss_kib(a.pid())?;
    let per = full.saturating_sub(idle) as f64 / sessions as f64;
    Ok(vec![
        Metric::new("rss.idle", idle as f64 / 1024.0, "MiB").goal(Goal::AtMost(30.0)),
        Metric::new(&format!("rss.per_session@{sessions}"), per, "KiB").goal(Goal::AtMost(16.0)),
    ])
}
