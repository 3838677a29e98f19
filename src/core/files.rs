//! File use cases: every operation first checks that the session belongs to the caller, then
//! delegates to the workspace, which owns path safety and limits.

use super::Core;
use crate::domain::{FileChange, FileEntry, JobId, TenantId, page_fit};
use crate::error::{Error, Reason, Result};
use crate::store::SnapPoint;
use crate::workspace::{
    ArchiveFormat, ArchiveUpload, Subscription, Upload, UploadHeader, WatchEvent,
};

/// An upload in progress into one session.
pub struct UploadSink {
    upload: Upload,
}

impl UploadSink {
    pub async fn start_file(&mut self, header: UploadHeader) -> Result<()> {
        self.upload.start_file(header).await
    }

    pub async fn write_chunk(&mut self, chunk: bytes::Bytes) -> Result<()> {
        self.upload.write_chunk(chunk).await
    }

    /// Makes every uploaded file visible at once.
    pub async fn commit(self) -> Result<Vec<FileEntry>> {
        self.upload.commit().await
    }
}

impl Core {
    pub async fn begin_upload(&self, tenant: &TenantId, session_id: &str) -> Result<UploadSink> {
        self.check_accepting()?;
        let s = self.owned_session(tenant, session_id).await?;
        Ok(UploadSink {
            upload: self.workspaces.begin_upload(&s.id).await?,
        })
    }

    pub async fn open_file(
        &self,
        tenant: &TenantId,
        session_id: &str,
        path: &str,
        offset: u64,
        include_sha256: bool,
    ) -> Result<(FileEntry, tokio::fs::File)> {
        let s = self.owned_session(tenant, session_id).await?;
        self.workspaces
            .open_read(&s.id, path, offset, include_sha256)
            .await
    }

    /// A page of the entries under `dir`, in path order: after `after`, at most `limit` and
    /// about [`PAGE_BYTES`](crate::domain::PAGE_BYTES); with the last path when more follow.
    pub async fn list_files(
        &self,
        tenant: &TenantId,
        session_id: &str,
        dir: &str,
        include_sha256: bool,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<FileEntry>, Option<String>)> {
        let s = self.owned_session(tenant, session_id).await?;
        self.workspaces
            .list(&s.id, dir, include_sha256, after, limit)
            .await
    }

    pub async fn delete_file(
        &self,
        tenant: &TenantId,
        session_id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<u64> {
        let s = self.owned_session(tenant, session_id).await?;
        self.workspaces.delete(&s.id, path, recursive).await
    }

    /// A page of the files a job changed (an empty job id means the session's latest succeeded
    /// job), in path order: those after `after`, at most `limit` and about
    /// [`PAGE_BYTES`](crate::domain::PAGE_BYTES); with the last path when more follow.
    pub async fn job_outputs(
        &self,
        tenant: &TenantId,
        session_id: &str,
        job_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(JobId, Vec<FileChange>, Option<String>)> {
        let s = self.owned_session(tenant, session_id).await?;
        let job = if job_id.is_empty() {
            self.store
                .latest_succeeded_job(&s.id)
                .await?
                .ok_or_else(|| {
                    Error::not_found(
                        Reason::NoSucceededJob,
                        format!("session {session_id} has no succeeded job yet"),
                    )
                })?
        } else {
            let j = self.owned_job(tenant, job_id).await?;
            if j.session_id != s.id {
                return Err(Error::job_not_found(job_id));
            }
            j
        };
        if !job.state.is_finished() {
            return Err(Error::precondition(
                Reason::JobNotFinished,
                format!(
                    "job {} has not finished; its outputs are known when it ends",
                    job.id
                ),
            ));
        }
        // One more than the page tells whether more follow.
        let mut changes = self
            .store
            .get_job_outputs(&job.id, after, limit.max(1) + 1)
            .await?;
        let fit = page_fit(&changes, limit.max(1), FileChange::page_weight);
        let next = (changes.len() > fit).then(|| changes[fit - 1].path.clone());
        changes.truncate(fit);
        Ok((job.id, changes, next))
    }
}

impl Core {
    /// Streams an archive of the session's workspace. `job_id` asks for the workspace as that
    /// job left it, which needs the job snapshots of the history store.
    pub async fn download_archive(
        &self,
        tenant: &TenantId,
        session_id: &str,
        paths: Vec<String>,
        format: ArchiveFormat,
        job_id: &str,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<bytes::Bytes>>> {
        let s = self.owned_session(tenant, session_id).await?;
        if !job_id.is_empty() {
            let j = self.owned_job(tenant, job_id).await?;
            if j.session_id != s.id {
                return Err(Error::job_not_found(job_id));
            }
            let tree = self.snapshot_tree(&j.id, SnapPoint::After).await?;
            return self
                .workspaces
                .download_snapshot_archive(tree, paths, format)
                .await;
        }
        self.workspaces.download_archive(&s.id, paths, format).await
    }

    /// Starts an archive upload into `dest` of the session's workspace.
    pub async fn begin_archive_upload(
        &self,
        tenant: &TenantId,
        session_id: &str,
        format: ArchiveFormat,
        dest: &str,
    ) -> Result<ArchiveUpload> {
        self.check_accepting()?;
        let s = self.owned_session(tenant, session_id).await?;
        self.workspaces
            .begin_archive_upload(&s.id, format, dest)
            .await
    }
}

impl Core {
    /// Subscribes to the file changes of the caller's session.
    pub async fn watch_files(
        &self,
        tenant: &TenantId,
        session_id: &str,
        paths: &[String],
        after_seq: u64,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<WatchEvent>>> {
        let s = self.owned_session(tenant, session_id).await?;
        let sub = self
            .workspaces
            .watch(tenant, &s.id, paths, after_seq)
            .await?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(pump_watch(sub, tx, self.streams_stop.clone()));
        Ok(rx)
    }
}

/// Forwards a subscription's batches until the client leaves, the watch ends (session deleted)
/// or the server stops streaming.
async fn pump_watch(
    mut sub: Subscription,
    tx: tokio::sync::mpsc::Sender<Result<WatchEvent>>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => return,
            () = tx.closed() => return,
            next = sub.next() => next,
        };
        match next {
            None => return,
            Some(Err(e)) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
            Some(Ok(batch)) => {
                for event in batch {
                    // The ring holds the events, so waiting here on a slow client costs nothing.
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}
