//! The raw baselines (`agentd-bench __bare <dir>`): a bare tonic server speaking agentd's own
//! protocol with nothing behind it, so the bench drives it with the very same client code.
//!
//! - `StreamJobEvents` with job id `child:<script>` spawns the stand-in agent directly (tokio
//!   process, no supervisor, no store) and relays each stdout line as one event per message;
//!   `synthetic:<n>` sends `n` flood-line events from memory, one per message. Both end with a
//!   `finished` event, numbered like agentd's.
//! - `UploadFiles` hashes each file and writes it under `<dir>`; `DownloadFile` reads it back in
//!   1 MiB chunks on a blocking thread.
//!
//! Same runtime flavour and TCP_NODELAY as agentd; everything else answers UNIMPLEMENTED.

use crate::agent::flood_line;
use agentd::pb;
use agentd::pb::file_service_server::{FileService, FileServiceServer};
use agentd::pb::job_service_server::{JobService, JobServiceServer};
use anyhow::Context;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::pin::Pin;
use tokio::io::AsyncBufReadExt;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

const CHUNK: usize = 1 << 20;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

pub fn main(args: &[String]) -> anyhow::Result<()> {
    let dir = PathBuf::from(args.first().context("usage: __bare <dir>")?);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            println!("bare listening on {}", listener.local_addr()?);
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            let me = std::env::current_exe()?;
            tonic::transport::Server::builder()
                .add_service(JobServiceServer::new(Jobs { me }))
                .add_service(FileServiceServer::new(Files { dir }))
                .serve_with_incoming(incoming)
                .await?;
            Ok(())
        })
}

fn now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(std::time::SystemTime::now())
}

fn text_event(seq: u64, text: String) -> pb::StreamJobEventsResponse {
    pb::StreamJobEventsResponse {
        events: vec![pb::JobEvent {
            seq,
            time: Some(now()),
            raw: String::new(),
            kind: Some(pb::job_event::Kind::Text(pb::TextEvent { text })),
        }],
        ..Default::default()
    }
}

fn finished_event(seq: u64, ok: bool) -> pb::StreamJobEventsResponse {
    let state = if ok {
        pb::JobState::Succeeded
    } else {
        pb::JobState::Failed
    };
    pb::StreamJobEventsResponse {
        events: vec![pb::JobEvent {
            seq,
            time: Some(now()),
            raw: String::new(),
            kind: Some(pb::job_event::Kind::Finished(pb::JobFinished {
                state: state as i32,
                ..Default::default()
            })),
        }],
        ..Default::default()
    }
}

struct Jobs {
    me: PathBuf,
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented(
        "the bare baseline server only streams",
    ))
}

#[tonic::async_trait]
impl JobService for Jobs {
    async fn submit_job(
        &self,
        _: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        unimplemented()
    }
    async fn get_job(
        &self,
        _: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        unimplemented()
    }
    async fn list_jobs(
        &self,
        _: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        unimplemented()
    }
    async fn cancel_job(
        &self,
        _: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        unimplemented()
    }

    type RunJobStream = BoxStream<pb::RunJobResponse>;
    async fn run_job(
        &self,
        _: Request<pb::RunJobRequest>,
    ) -> Result<Response<Self::RunJobStream>, Status> {
        unimplemented()
    }

    type WatchJobsStream = BoxStream<pb::WatchJobsResponse>;
    async fn watch_jobs(
        &self,
        _: Request<pb::WatchJobsRequest>,
    ) -> Result<Response<Self::WatchJobsStream>, Status> {
        unimplemented()
    }

    async fn wait_job(
        &self,
        _: Request<pb::WaitJobRequest>,
    ) -> Result<Response<pb::WaitJobResponse>, Status> {
        unimplemented()
    }

    async fn respond_to_permission(
        &self,
        _: Request<pb::RespondToPermissionRequest>,
    ) -> Result<Response<pb::RespondToPermissionResponse>, Status> {
        unimplemented()
    }

    async fn send_input(
        &self,
        _: Request<pb::SendInputRequest>,
    ) -> Result<Response<pb::SendInputResponse>, Status> {
        unimplemented()
    }

    async fn interrupt_job(
        &self,
        _: Request<pb::InterruptJobRequest>,
    ) -> Result<Response<pb::InterruptJobResponse>, Status> {
        unimplemented()
    }
    type AttachStream = BoxStream<pb::AttachResponse>;
    async fn attach(
        &self,
        _: Request<Streaming<pb::AttachRequest>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        unimplemented()
    }

    type StreamJobEventsStream = BoxStream<pb::StreamJobEventsResponse>;
    async fn stream_job_events(
        &self,
        req: Request<pb::StreamJobEventsRequest>,
    ) -> Result<Response<Self::StreamJobEventsStream>, Status> {
        let id = req.into_inner().job_id;
        if let Some(n) = id.strip_prefix("synthetic:") {
            let n: u64 = n
                .parse()
                .map_err(|_| Status::invalid_argument("synthetic:<count>"))?;
            let events = (1..=n)
                .map(|seq| Ok(text_event(seq, flood_line(seq - 1))))
                .chain(std::iter::once(Ok(finished_event(n + 1, true))));
            return Ok(Response::new(Box::pin(tokio_stream::iter(events))));
        }
        let Some(script) = id.strip_prefix("child:") else {
            return Err(Status::invalid_argument(
                "job id: child:<script> or synthetic:<n>",
            ));
        };
        let mut child = tokio::process::Command::new(&self.me)
            .arg("__agent")
            .arg(script)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Status::internal(format!("spawn: {e}")))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| Status::internal("no stdout"))?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            let mut seq = 0;
            while let Ok(Some(line)) = lines.next_line().await {
                seq += 1;
                if tx.send(Ok(text_event(seq, line))).await.is_err() {
                    return;
                }
            }
            let ok = child.wait().await.is_ok_and(|s| s.success());
            let _ = tx.send(Ok(finished_event(seq + 1, ok))).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct Files {
    dir: PathBuf,
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// The one file being written: blocking writes happen on the blocking pool.
struct Current {
    path: String,
    file: Option<std::fs::File>,
    hash: Sha256,
    size: u64,
}

impl Current {
    fn finish(self) -> pb::FileInfo {
        pb::FileInfo {
            path: self.path,
            r#type: pb::FileType::Regular as i32,
            size: self.size,
            sha256: hex::encode(self.hash.finalize()),
            ..Default::default()
        }
    }
}

#[tonic::async_trait]
impl FileService for Files {
    async fn upload_files(
        &self,
        req: Request<Streaming<pb::UploadFilesRequest>>,
    ) -> Result<Response<pb::UploadFilesResponse>, Status> {
        let mut stream = req.into_inner();
        let mut done = Vec::new();
        let mut cur: Option<Current> = None;
        while let Some(msg) = stream.message().await? {
            match msg.part {
                Some(pb::upload_files_request::Part::Header(h)) => {
                    if let Some(c) = cur.take() {
                        done.push(c.finish());
                    }
                    let name = h.path.replace('/', "_");
                    let file = std::fs::File::create(self.dir.join(name)).map_err(internal)?;
                    cur = Some(Current {
                        path: h.path,
                        file: Some(file),
                        hash: Sha256::new(),
                        size: 0,
                    });
                }
                Some(pb::upload_files_request::Part::Chunk(c)) => {
                    let cur = cur
                        .as_mut()
                        .ok_or_else(|| Status::invalid_argument("chunk before header"))?;
                    cur.hash.update(&c);
                    cur.size += c.len() as u64;
                    let mut file = cur.file.take().ok_or_else(|| internal("no file"))?;
                    let file =
                        tokio::task::spawn_blocking(move || file.write_all(&c).map(|_| file))
                            .await
                            .map_err(internal)?
                            .map_err(internal)?;
                    cur.file = Some(file);
                }
                None => return Err(Status::invalid_argument("empty message")),
            }
        }
        if let Some(c) = cur.take() {
            done.push(c.finish());
        }
        Ok(Response::new(pb::UploadFilesResponse { files: done }))
    }

    type DownloadFileStream = BoxStream<pb::DownloadFileResponse>;
    async fn download_file(
        &self,
        req: Request<pb::DownloadFileRequest>,
    ) -> Result<Response<Self::DownloadFileStream>, Status> {
        use pb::download_file_response::Part;
        let r = req.into_inner();
        let path = self.dir.join(r.path.replace('/', "_"));
        let mut file = std::fs::File::open(&path).map_err(internal)?;
        let size = file.metadata().map_err(internal)?.len();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let info = pb::DownloadFileResponse {
            part: Some(Part::Info(pb::FileInfo {
                path: r.path,
                r#type: pb::FileType::Regular as i32,
                size,
                ..Default::default()
            })),
        };
        tokio::task::spawn_blocking(move || {
            if tx.blocking_send(Ok(info)).is_err() {
                return;
            }
            loop {
                let mut buf = vec![0u8; CHUNK];
                match file.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        buf.truncate(n);
                        let msg = pb::DownloadFileResponse {
                            part: Some(Part::Chunk(buf.into())),
                        };
                        if tx.blocking_send(Ok(msg)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(internal(e)));
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_files(
        &self,
        _: Request<pb::ListFilesRequest>,
    ) -> Result<Response<pb::ListFilesResponse>, Status> {
        unimplemented()
    }
    type GetJobDiffStream = BoxStream<pb::GetJobDiffResponse>;
    async fn get_job_diff(
        &self,
        _: Request<pb::GetJobDiffRequest>,
    ) -> Result<Response<Self::GetJobDiffStream>, Status> {
        unimplemented()
    }
    async fn get_job_outputs(
        &self,
        _: Request<pb::GetJobOutputsRequest>,
    ) -> Result<Response<pb::GetJobOutputsResponse>, Status> {
        unimplemented()
    }
    async fn delete_file(
        &self,
        _: Request<pb::DeleteFileRequest>,
    ) -> Result<Response<pb::DeleteFileResponse>, Status> {
        unimplemented()
    }

    async fn upload_file_chunk(
        &self,
        _: Request<pb::UploadFileChunkRequest>,
    ) -> Result<Response<pb::UploadFileChunkResponse>, Status> {
        unimplemented()
    }

    type DownloadArchiveStream = BoxStream<pb::DownloadArchiveResponse>;
    async fn download_archive(
        &self,
        _: Request<pb::DownloadArchiveRequest>,
    ) -> Result<Response<Self::DownloadArchiveStream>, Status> {
        unimplemented()
    }

    async fn upload_archive(
        &self,
        _: Request<Streaming<pb::UploadArchiveRequest>>,
    ) -> Result<Response<pb::UploadArchiveResponse>, Status> {
        unimplemented()
    }

    type WatchFilesStream = BoxStream<pb::WatchFilesResponse>;
    async fn watch_files(
        &self,
        _: Request<pb::WatchFilesRequest>,
    ) -> Result<Response<Self::WatchFilesStream>, Status> {
        unimplemented()
    }
}
