//! Uploads that arrive in pieces over separate unary calls (FileService.UploadFileChunk): browsers
//! speak gRPC-Web, which cannot stream a request, so the web console cannot use UploadFiles.
//!
//! Each upload is an ordinary [`UploadSink`] (staged under a temporary name, committed
//! atomically) kept open between calls, keyed by the tenant and the client's upload id. A piece
//! must start where the previous one ended, so a retried piece is refused instead of written
//! twice. An upload idle for [`IDLE`] is dropped, which removes what it staged, and a tenant may
//! stage at most [`PER_TENANT`] uploads at once, so abandoned ones cannot pile up. The state lives
//! in this process: the pieces of one upload must reach the same replica.

use super::{Core, UploadSink};
use crate::domain::{FileEntry, TenantId};
use crate::error::{Error, Reason, Result};
use crate::workspace::UploadHeader;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an upload may wait for its next piece.
pub const IDLE: Duration = Duration::from_secs(300);
/// Uploads one tenant may have staged at once.
pub const PER_TENANT: usize = 16;
const MAX_UPLOAD_ID: usize = 128;

/// One call's piece of an upload.
pub struct Piece {
    pub session_id: String,
    pub upload_id: String,
    /// Only on the first piece.
    pub header: Option<UploadHeader>,
    pub offset: u64,
    pub chunk: Bytes,
    pub last: bool,
}

/// What a piece achieved: bytes received so far, and the file once the last piece committed it.
pub struct PieceDone {
    pub received: u64,
    pub file: Option<FileEntry>,
}

struct Staged {
    session_id: String,
    sink: UploadSink,
    received: u64,
    touched: Instant,
}

type Key = (TenantId, String);

/// The uploads in progress in this process.
#[derive(Default)]
pub struct PiecedUploads {
    staged: Mutex<HashMap<Key, Staged>>,
}

impl PiecedUploads {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Staged>> {
        // The map stays consistent even if a holder panicked: every change is one insert/remove.
        self.staged.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the upload out of the map (so no lock is held across awaits), dropping idle ones.
    fn take(&self, key: &Key) -> Option<Staged> {
        let mut map = self.lock();
        map.retain(|_, s| s.touched.elapsed() < IDLE);
        map.remove(key)
    }

    fn put_back(&self, key: Key, mut staged: Staged) {
        staged.touched = Instant::now();
        self.lock().insert(key, staged);
    }

    /// Applies one piece: starts the upload on its first piece, appends the chunk, commits after
    /// the last. Any failure other than a misplaced piece abandons the upload.
    pub async fn put(&self, core: &Core, tenant: &TenantId, p: Piece) -> Result<PieceDone> {
        if p.upload_id.is_empty() || p.upload_id.len() > MAX_UPLOAD_ID {
            return Err(Error::invalid(
                Reason::InvalidField,
                "upload_id",
                format!("upload_id must be 1 to {MAX_UPLOAD_ID} bytes"),
            ));
        }
        let key = (tenant.clone(), p.upload_id.clone());
        let mut staged = match (self.take(&key), p.header) {
            (None, Some(header)) => {
                self.start(core, tenant, &p.session_id, p.offset, header)
                    .await?
            }
            (None, None) => {
                return Err(Error::not_found(
                    Reason::UploadNotFound,
                    format!(
                        "upload {:?} is not in progress (its first piece carries the header; an \
                         upload idle for {} s is dropped)",
                        p.upload_id,
                        IDLE.as_secs()
                    ),
                ));
            }
            (Some(s), Some(_)) => {
                self.put_back(key, s);
                return Err(Error::invalid(
                    Reason::InvalidField,
                    "header",
                    "only the first piece of an upload carries a header",
                ));
            }
            (Some(s), None) => s,
        };
        if staged.session_id != p.session_id || p.offset != staged.received {
            let msg = format!(
                "upload {:?} continues at offset {} of session {}",
                p.upload_id, staged.received, staged.session_id
            );
            self.put_back(key, staged);
            return Err(Error::out_of_range(Reason::OffsetOutOfRange, msg));
        }
        let n = p.chunk.len() as u64;
        staged.sink.write_chunk(p.chunk).await?;
        staged.received += n;
        if !p.last {
            let received = staged.received;
            self.put_back(key, staged);
            return Ok(PieceDone {
                received,
                file: None,
            });
        }
        let received = staged.received;
        let file = staged.sink.commit().await?.into_iter().next();
        Ok(PieceDone { received, file })
    }

    async fn start(
        &self,
        core: &Core,
        tenant: &TenantId,
        session_id: &str,
        offset: u64,
        header: UploadHeader,
    ) -> Result<Staged> {
        if offset != 0 {
            return Err(Error::out_of_range(
                Reason::OffsetOutOfRange,
                "the first piece of an upload (the one with the header) is at offset 0",
            ));
        }
        let mine = self.lock().keys().filter(|(t, _)| t == tenant).count();
        if mine >= PER_TENANT {
            return Err(Error::exhausted(
                Reason::TooManyUploads,
                format!("at most {PER_TENANT} uploads may be in progress at once"),
            ));
        }
        let mut sink = core.begin_upload(tenant, session_id).await?;
        sink.start_file(header).await?;
        Ok(Staged {
            session_id: session_id.to_owned(),
            sink,
            received: 0,
            touched: Instant::now(),
        })
    }
}
