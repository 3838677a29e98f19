//! `agentd.v1.FileService`: streamed uploads and downloads, uploads in unary pieces (for
//! gRPC-Web), listings, job outputs, deletion; archives both ways and the file watch.

use super::convert::{self, PathListing};
use super::tenant;
use crate::core::{Core, Piece, PiecedUploads};
use crate::error::{Error, Reason};
use crate::pb;
use crate::pb::file_service_server::FileService;
use crate::workspace::{ArchiveFormat, UploadHeader};
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// Changes in a page of GetJobOutputs, by default and at most (a page is also cut at about 2 MiB,
/// see `Core::job_outputs`): large, so a client that does not page yet gets every change of all
/// but the largest jobs.
const OUTPUTS_PAGE: usize = 10_000;

/// Largest chunk accepted in an upload, and the size of download chunks.
pub const CHUNK_BYTES: usize = 1 << 20;

pub struct FileApi {
    core: Arc<Core>,
    /// UploadFileChunk's uploads in progress.
    pieces: PiecedUploads,
}

impl FileApi {
    pub fn new(core: Arc<Core>) -> Self {
        Self {
            core,
            pieces: PiecedUploads::default(),
        }
    }
}

fn upload_header(h: pb::UploadFileHeader) -> UploadHeader {
    UploadHeader {
        path: h.path,
        mode: h.mode,
        size: h.size,
        sha256: (!h.sha256.is_empty()).then_some(h.sha256),
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl FileService for FileApi {
    async fn upload_files(
        &self,
        req: Request<Streaming<pb::UploadFilesRequest>>,
    ) -> Result<Response<pb::UploadFilesResponse>, Status> {
        let tenant = tenant(&req)?;
        let mut stream = req.into_inner();
        let Some(first) = stream.message().await? else {
            return Err(Error::invalid(
                Reason::MissingField,
                "session_id",
                "empty upload: the first message must carry session_id and a header",
            )
            .into());
        };
        if first.session_id.is_empty() {
            return Err(Error::invalid(
                Reason::MissingField,
                "session_id",
                "the first upload message must carry session_id",
            )
            .into());
        }
        let session_id = first.session_id.clone();
        // Dropping `upload` on any early return removes every staged temp file.
        let mut upload = self.core.begin_upload(&tenant, &session_id).await?;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            if !msg.session_id.is_empty() && msg.session_id != session_id {
                return Err(Error::invalid(
                    Reason::InvalidField,
                    "session_id",
                    "session_id changed in the middle of an upload",
                )
                .into());
            }
            match msg.part {
                Some(pb::upload_files_request::Part::Header(h)) => {
                    upload.start_file(upload_header(h)).await?;
                }
                Some(pb::upload_files_request::Part::Chunk(c)) => {
                    if c.len() > CHUNK_BYTES {
                        return Err(Error::invalid(
                            Reason::InvalidField,
                            "chunk",
                            format!("chunks must be at most 1 MiB, got {} bytes", c.len()),
                        )
                        .into());
                    }
                    let n = c.len();
                    upload.write_chunk(c).await?;
                    crate::telemetry::metrics().uploaded(n);
                }
                None => {
                    return Err(Error::invalid(
                        Reason::MissingField,
                        "part",
                        "each upload message needs a header or a chunk",
                    )
                    .into());
                }
            }
            next = stream.message().await?;
        }
        let files = upload.commit().await?;
        Ok(Response::new(pb::UploadFilesResponse {
            files: files.into_iter().map(convert::file).collect(),
        }))
    }

    type DownloadFileStream = BoxStream<pb::DownloadFileResponse>;

    async fn download_file(
        &self,
        req: Request<pb::DownloadFileRequest>,
    ) -> Result<Response<Self::DownloadFileStream>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        let (info, file) = self
            .core
            .open_file(&tenant, &r.session_id, &r.path, r.offset, r.include_sha256)
            .await?;
        let mut remaining = info.size.saturating_sub(r.offset);
        // Each chunk is read straight into the buffer that becomes the message (tokio::fs reads
        // into its own buffer and copies), one blocking call per chunk so that no blocking
        // thread waits on a slow client; the channel lets the next read overlap the sends.
        let mut file = Some(file.into_std().await);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            use pb::download_file_response::Part;
            let first = pb::DownloadFileResponse {
                part: Some(Part::Info(convert::file(info))),
            };
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            // Send exactly the size announced in the info message, even if the file grows.
            while remaining > 0 {
                let want = remaining.min(CHUNK_BYTES as u64) as usize;
                let Some(mut f) = file.take() else {
                    return;
                };
                let read = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; want];
                    let n = read_full(&mut f, &mut buf);
                    (f, buf, n)
                })
                .await;
                let (f, mut buf, n) = match read {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx
                            .send(Err(Error::internal(format!("read task failed: {e}")).into()))
                            .await;
                        return;
                    }
                };
                file = Some(f);
                match n {
                    Ok(0) => break,
                    Ok(n) => {
                        remaining -= n as u64;
                        buf.truncate(n);
                        let msg = pb::DownloadFileResponse {
                            part: Some(Part::Chunk(buf.into())),
                        };
                        if tx.send(Ok(msg)).await.is_err() {
                            return;
                        }
                        crate::telemetry::metrics().downloaded(n);
                    }
                    Err(e) => {
                        let _ = tx
                            .send(Err(Error::internal(format!("read failed: {e}")).into()))
                            .await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_files(
        &self,
        req: Request<pb::ListFilesRequest>,
    ) -> Result<Response<pb::ListFilesResponse>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        let limit = convert::page_size(r.page_size, 1000, 10_000)?;
        let after = convert::decode_path_token(PathListing::Files, &r.page_token)?;
        let (files, next) = self
            .core
            .list_files(
                &tenant,
                &r.session_id,
                &r.path,
                r.include_sha256,
                after.as_deref(),
                limit,
            )
            .await?;
        Ok(Response::new(pb::ListFilesResponse {
            files: files.into_iter().map(convert::file).collect(),
            next_page_token: next
                .map(|p| convert::encode_path_token(PathListing::Files, &p))
                .unwrap_or_default(),
        }))
    }

    async fn get_job_outputs(
        &self,
        req: Request<pb::GetJobOutputsRequest>,
    ) -> Result<Response<pb::GetJobOutputsResponse>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        let limit = convert::page_size(r.page_size, OUTPUTS_PAGE, OUTPUTS_PAGE)?;
        let after = convert::decode_path_token(PathListing::Outputs, &r.page_token)?;
        let (job, changes, next) = self
            .core
            .job_outputs(&tenant, &r.session_id, &r.job_id, after.as_deref(), limit)
            .await?;
        Ok(Response::new(pb::GetJobOutputsResponse {
            job_id: job.to_string(),
            changes: changes.into_iter().map(convert::change).collect(),
            next_page_token: next
                .map(|p| convert::encode_path_token(PathListing::Outputs, &p))
                .unwrap_or_default(),
        }))
    }

    type GetJobDiffStream = BoxStream<pb::GetJobDiffResponse>;

    async fn get_job_diff(
        &self,
        req: Request<pb::GetJobDiffRequest>,
    ) -> Result<Response<Self::GetJobDiffStream>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        let rx = self
            .core
            .job_diff(
                &tenant,
                crate::core::history::DiffRequest {
                    job_id: r.job_id,
                    paths: r.paths,
                    context_lines: r.context_lines,
                    max_bytes: r.max_bytes,
                },
            )
            .await?;
        let stream = ReceiverStream::new(rx).map(|piece| {
            piece
                .map(|c| pb::GetJobDiffResponse {
                    chunk: c.text.into_bytes().into(),
                    truncated: c.truncated,
                })
                .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn delete_file(
        &self,
        req: Request<pb::DeleteFileRequest>,
    ) -> Result<Response<pb::DeleteFileResponse>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        let n = self
            .core
            .delete_file(&tenant, &r.session_id, &r.path, r.recursive)
            .await?;
        Ok(Response::new(pb::DeleteFileResponse { deleted_files: n }))
    }

    async fn upload_file_chunk(
        &self,
        req: Request<pb::UploadFileChunkRequest>,
    ) -> Result<Response<pb::UploadFileChunkResponse>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        if r.chunk.len() > CHUNK_BYTES {
            return Err(Error::invalid(
                Reason::InvalidField,
                "chunk",
                format!("chunks must be at most 1 MiB, got {} bytes", r.chunk.len()),
            )
            .into());
        }
        let n = r.chunk.len();
        let piece = Piece {
            session_id: r.session_id,
            upload_id: r.upload_id,
            header: r.header.map(upload_header),
            offset: r.offset,
            chunk: r.chunk,
            last: r.last,
        };
        let done = self.pieces.put(&self.core, &tenant, piece).await?;
        crate::telemetry::metrics().uploaded(n);
        Ok(Response::new(pb::UploadFileChunkResponse {
            received: done.received,
            file: done.file.map(convert::file),
        }))
    }

    type DownloadArchiveStream = BoxStream<pb::DownloadArchiveResponse>;

    async fn download_archive(
        &self,
        req: Request<pb::DownloadArchiveRequest>,
    ) -> Result<Response<Self::DownloadArchiveStream>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        let format = archive_format(r.format, "format")?;
        let rx = self
            .core
            .download_archive(&tenant, &r.session_id, r.paths, format, &r.job_id)
            .await?;
        let stream = ReceiverStream::new(rx).map(|chunk| match chunk {
            Ok(chunk) => {
                crate::telemetry::metrics().downloaded(chunk.len());
                Ok(pb::DownloadArchiveResponse { chunk })
            }
            Err(e) => Err(e.into()),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn upload_archive(
        &self,
        req: Request<Streaming<pb::UploadArchiveRequest>>,
    ) -> Result<Response<pb::UploadArchiveResponse>, Status> {
        let tenant = tenant(&req)?;
        let mut stream = req.into_inner();
        let first = stream.message().await?.unwrap_or_default();
        let session_id = first.session_id;
        if session_id.is_empty() {
            return Err(Error::invalid(
                Reason::MissingField,
                "session_id",
                "the first message must carry session_id",
            )
            .into());
        }
        let Some(pb::upload_archive_request::Part::Header(header)) = first.part else {
            return Err(Error::invalid(
                Reason::MissingField,
                "header",
                "the first message must carry the header",
            )
            .into());
        };
        let format = archive_format(header.format, "header.format")?;
        // Dropping `upload` on any early return removes everything it staged.
        let mut upload = self
            .core
            .begin_archive_upload(&tenant, &session_id, format, &header.dest)
            .await?;
        while let Some(msg) = stream.message().await? {
            if !msg.session_id.is_empty() && msg.session_id != session_id {
                return Err(Error::invalid(
                    Reason::InvalidField,
                    "session_id",
                    "session_id changed in the middle of an upload",
                )
                .into());
            }
            let Some(pb::upload_archive_request::Part::Chunk(chunk)) = msg.part else {
                return Err(Error::invalid(
                    Reason::InvalidField,
                    "part",
                    "after the header, every message must carry a chunk",
                )
                .into());
            };
            if chunk.len() > CHUNK_BYTES {
                return Err(Error::invalid(
                    Reason::InvalidField,
                    "chunk",
                    format!("chunks must be at most 1 MiB, got {} bytes", chunk.len()),
                )
                .into());
            }
            crate::telemetry::metrics().uploaded(chunk.len());
            upload.write(chunk).await?;
        }
        let done = upload.finish().await?;
        Ok(Response::new(pb::UploadArchiveResponse {
            entries: done.entries,
            files: done.files,
            bytes: done.bytes,
        }))
    }

    type WatchFilesStream = BoxStream<pb::WatchFilesResponse>;

    async fn watch_files(
        &self,
        req: Request<pb::WatchFilesRequest>,
    ) -> Result<Response<Self::WatchFilesStream>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        let rx = self
            .core
            .watch_files(&tenant, &r.session_id, &r.paths, r.after_seq)
            .await?;
        let stream = ReceiverStream::new(rx).map(|event| match event {
            Ok(e) => Ok(pb::WatchFilesResponse {
                event: Some(convert::file_event(e)),
            }),
            Err(e) => Err(e.into()),
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

fn archive_format(n: i32, field: &str) -> Result<ArchiveFormat, Status> {
    match pb::ArchiveFormat::try_from(n) {
        Ok(pb::ArchiveFormat::Tar) => Ok(ArchiveFormat::Tar),
        Ok(pb::ArchiveFormat::TarGz) => Ok(ArchiveFormat::TarGz),
        Ok(pb::ArchiveFormat::Zip) => Ok(ArchiveFormat::Zip),
        Ok(pb::ArchiveFormat::Unspecified) => Err(Error::invalid(
            Reason::MissingField,
            field,
            format!("{field} is required: TAR, TAR_GZ or ZIP"),
        )
        .into()),
        Err(_) => Err(Error::invalid(
            Reason::InvalidField,
            field,
            format!("{field} {n} is not an archive format"),
        )
        .into()),
    }
}
