//! File use cases: every operation first checks that the session belongs to the caller, then
//! delegates to the workspace, which owns path safety and limits.

use super::Core;
use crate::domain::{FileChange, FileEntry, JobId, TenantId};
use crate::error::{Error, Reason, Result};
use crate::workspace::{Upload, UploadHeader};

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

    /// The files a job changed; an empty job id means the session's latest succeeded job.
    pub async fn job_outputs(
        &self,
        tenant: &TenantId,
        session_id: &str,
        job_id: &str,
    ) -> Result<(JobId, Vec<FileChange>)> {
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
        let changes = self
            .store
            .get_job_outputs(&job.id)
            .await?
            .unwrap_or_default();
        Ok((job.id, changes))
    }
}
