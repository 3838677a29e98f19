//! Appending and reading job events in Postgres: the write transaction that numbers events,
//! applies job updates and records changes under row locks in `pk` order (retried when Postgres
//! breaks a deadlock), reads by `seq`, and retention pruning.

use super::{DEADLOCK_RETRIES, Fail, PgStore, changes, db, is_deadlock, listen, rows};
use crate::domain::{JobEvent, JobId, JobState, Timestamp};
use crate::error::Result;
use crate::store::{JobUpdate, JobWrite, rules};
use rows::{int, to_json};
use std::collections::HashMap;

impl PgStore {
    /// Runs `append`'s transaction, retried when Postgres broke a deadlock by aborting it.
    pub(super) async fn write_events(
        &self,
        writes: &[JobWrite],
        only_unclaimed: bool,
    ) -> Result<bool> {
        let mut attempt = 0;
        loop {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(db)?;
            match self.apply(&tx, writes, only_unclaimed).await {
                Ok(false) => return Ok(false),
                Ok(true) => match tx.commit().await {
                    Ok(()) => return Ok(true),
                    Err(e) if is_deadlock(&e) && attempt < DEADLOCK_RETRIES => {}
                    Err(e) => return Err(db(e)),
                },
                Err(Fail::Db(e)) if is_deadlock(&e) && attempt < DEADLOCK_RETRIES => {}
                Err(Fail::Db(e)) => return Err(db(e)),
                Err(Fail::Refused(e)) => return Err(e),
            }
            attempt += 1;
        }
    }

    /// Applies `writes` in `tx` (see [`Store::append`]), with the NOTIFYs announcing them. With
    /// `only_unclaimed`, does nothing and answers `false` unless the (single) job exists and is
    /// QUEUED and unowned.
    pub(super) async fn apply(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        writes: &[JobWrite],
        only_unclaimed: bool,
    ) -> Result<bool, Fail> {
        if writes.is_empty() {
            return Ok(true);
        }
        let mut ids: Vec<&str> = writes.iter().map(|w| w.job_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let lock = tx
            .prepare_cached(
                "SELECT id, pk, last_seq, state_name, session_id, owner IS NULL, tenant FROM jobs \
                 WHERE id = ANY($1) ORDER BY pk FOR UPDATE",
            )
            .await?;
        let found = tx.query(&lock, &[&ids]).await?;
        if only_unclaimed && found.is_empty() {
            // Deleted meanwhile: nothing to cancel.
            return Ok(false);
        }

        struct Pending<'a> {
            pk: i64,
            session_id: String,
            last_seq: u64,
            stored_seq: u64,
            finished: bool,
            update: Option<&'a JobUpdate>,
            tenant: String,
            /// The state name after the writes seen so far, to spot the ones that change it.
            state_name: String,
        }
        let mut jobs: HashMap<String, Pending> = HashMap::with_capacity(found.len());
        for row in &found {
            let state_name: &str = rows::get(row, 3, "jobs.state_name")?;
            let unowned: bool = rows::get(row, 5, "jobs.owner")?;
            if only_unclaimed && (state_name != "QUEUED" || !unowned) {
                return Ok(false);
            }
            let last_seq = rows::uint(row, 2, "jobs.last_seq")?;
            jobs.insert(
                rows::get(row, 0, "jobs.id")?,
                Pending {
                    pk: rows::get(row, 1, "jobs.pk")?,
                    session_id: rows::get(row, 4, "jobs.session_id")?,
                    last_seq,
                    stored_seq: last_seq,
                    finished: !matches!(state_name, "QUEUED" | "RUNNING"),
                    update: None,
                    tenant: rows::get(row, 6, "jobs.tenant")?,
                    state_name: state_name.to_owned(),
                },
            );
        }

        let n: usize = writes.iter().map(|w| w.events.len()).sum();
        let (mut pks, mut seqs, mut times) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut raws, mut kinds) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mut changed = Vec::new();
        for w in writes {
            let Some(j) = jobs.get_mut(w.job_id.as_str()) else {
                return Err(rules::missing_job(&w.job_id).into());
            };
            let last = rules::check_append(&w.job_id, j.finished, j.last_seq, &w.events)?;
            for e in &w.events {
                pks.push(j.pk);
                seqs.push(int(e.seq));
                times.push(e.time.micros());
                raws.push(e.raw.as_deref());
                kinds.push(to_json(&e.kind, "event")?);
            }
            j.last_seq = last;
            if let Some(u) = &w.update {
                j.update = Some(u);
                j.finished = u.state.is_finished();
                if u.state.name() != j.state_name {
                    j.state_name = u.state.name().to_owned();
                    changed.push(changes::Change::of(&j.tenant, &w.job_id, u, j.last_seq)?);
                }
            }
        }

        // The job rows, each with its last update of the batch.
        let (mut u_pk, mut u_seq, mut u_state, mut u_name) = (vec![], vec![], vec![], vec![]);
        let (mut u_result, mut u_usage, mut u_conv, mut u_fin) = (vec![], vec![], vec![], vec![]);
        let (mut conv_sessions, mut convs) = (vec![], vec![]);
        let mut notes = Vec::new();
        let mut jobs_changed = false;
        for (id, j) in &jobs {
            if j.last_seq != j.stored_seq {
                notes.push(listen::events_payload(id, j.last_seq));
            }
            if j.update.is_none() && j.last_seq == j.stored_seq {
                continue;
            }
            u_pk.push(j.pk);
            u_seq.push(int(j.last_seq));
            match j.update {
                Some(u) => {
                    u_state.push(Some(to_json(&u.state, "job state")?));
                    u_name.push(Some(u.state.name()));
                    u_result.push(Some(u.result.as_str()));
                    u_usage.push(Some(to_json(&u.usage, "job usage")?));
                    u_conv.push(u.conversation_id.as_deref());
                    u_fin.push(j.finished);
                    if j.finished {
                        jobs_changed = true;
                        if let (JobState::Finished(_), Some(conv)) = (&u.state, &u.conversation_id)
                        {
                            conv_sessions.push(j.session_id.as_str());
                            convs.push(conv.as_str());
                        }
                    }
                }
                None => {
                    u_state.push(None);
                    u_name.push(None);
                    u_result.push(None);
                    u_usage.push(None);
                    u_conv.push(None);
                    u_fin.push(false);
                }
            }
        }
        if jobs_changed {
            notes.push(listen::JOBS_CHANGED.to_owned());
        }
        if !changed.is_empty() {
            notes.push(listen::JOB_CHANGES.to_owned());
        }

        let insert = tx
            .prepare_cached(
                "INSERT INTO events (job_pk, seq, time, raw, kind) \
                 SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::int8[], $4::text[], $5::text[])",
            )
            .await?;
        let update = tx
            .prepare_cached(
                "UPDATE jobs AS j SET \
                   last_seq = u.last_seq, \
                   state = coalesce(u.state, j.state), \
                   state_name = coalesce(u.state_name, j.state_name), \
                   result = coalesce(u.result, j.result), \
                   usage = coalesce(u.usage, j.usage), \
                   conversation_id = CASE WHEN u.state IS NULL THEN j.conversation_id \
                                          ELSE u.conv END, \
                   owner = CASE WHEN u.fin THEN NULL ELSE j.owner END, \
                   lease_until = CASE WHEN u.fin THEN NULL ELSE j.lease_until END \
                 FROM UNNEST($1::int8[], $2::int8[], $3::text[], $4::text[], $5::text[], \
                             $6::text[], $7::text[], $8::bool[]) \
                   AS u(pk, last_seq, state, state_name, result, usage, conv, fin) \
                 WHERE j.pk = u.pk",
            )
            .await?;
        let conversation = tx
            .prepare_cached(
                "UPDATE sessions AS s SET conversation_id = u.conv \
                 FROM UNNEST($1::text[], $2::text[]) AS u(id, conv) WHERE s.id = u.id",
            )
            .await?;
        let notify = tx
            .prepare_cached("SELECT pg_notify($1, p) FROM UNNEST($2::text[]) AS p")
            .await?;
        // Sent together: tokio-postgres pipelines requests that are in flight at once.
        let inserted = async {
            if pks.is_empty() {
                return Ok(0);
            }
            tx.execute(&insert, &[&pks, &seqs, &times, &raws, &kinds])
                .await
        };
        let updated = async {
            if u_pk.is_empty() {
                return Ok(0);
            }
            tx.execute(
                &update,
                &[
                    &u_pk, &u_seq, &u_state, &u_name, &u_result, &u_usage, &u_conv, &u_fin,
                ],
            )
            .await
        };
        let conversed = async {
            if conv_sessions.is_empty() {
                return Ok(0);
            }
            tx.execute(&conversation, &[&conv_sessions, &convs]).await
        };
        let notified = async {
            if notes.is_empty() {
                return Ok(0);
            }
            tx.execute(&notify, &[&self.channel, &notes]).await
        };
        tokio::try_join!(inserted, updated, conversed, notified)?;
        // Last, so the tenants' sequence rows are locked for as short a time as possible.
        changes::record(tx, &mut changed).await?;
        Ok(true)
    }
}

pub(super) async fn read(
    store: &PgStore,
    job: &JobId,
    after_seq: u64,
    limit: usize,
) -> Result<Vec<JobEvent>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let rows = store
        .query(
            "SELECT seq, time, raw, kind FROM events \
             WHERE job_pk = (SELECT pk FROM jobs WHERE id = $1) AND seq > $2 \
             ORDER BY seq LIMIT $3",
            &[&job.as_str(), &int(after_seq), &int(limit as u64)],
        )
        .await?;
    rows::all(&rows, rows::event)
}

pub(super) async fn prune(store: &PgStore, before: Timestamp, limit: usize) -> Result<u64> {
    store
        .execute(
            "DELETE FROM events WHERE (job_pk, seq) IN ( \
             SELECT e.job_pk, e.seq FROM events e JOIN jobs j ON j.pk = e.job_pk \
             WHERE j.state_name IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'TIMED_OUT') \
               AND e.time < $1 AND e.seq < j.last_seq \
             LIMIT $2)",
            &[&before.micros(), &int(limit as u64)],
        )
        .await
}
