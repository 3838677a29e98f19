"""The synchronous client: thin helpers over the generated grpcio stubs (``client.sessions``,
``client.jobs``, ``client.files`` stay available, already authenticated, for anything the helpers
do not cover). Every grpc error leaving this module is an :class:`agentd.AgentdError`.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import closing
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, TypeVar

import grpc

from agentd import _common
from agentd._common import EventCursor, FileSource, Reconnect, StrPath, UploadEntry
from agentd._errors import AgentdError, from_rpc_error
from agentd.v1 import (
    file_pb2,
    file_pb2_grpc,
    job_pb2,
    job_pb2_grpc,
    server_info_pb2,
    server_info_pb2_grpc,
    session_pb2,
    session_pb2_grpc,
    usage_pb2,
    preset_pb2,
    preset_pb2_grpc,
    usage_pb2_grpc,
    webhook_pb2_grpc,
)

_T = TypeVar("_T")


class _CallDetails(grpc.ClientCallDetails):
    def __init__(
        self, base: grpc.ClientCallDetails, metadata: tuple[tuple[str, str | bytes], ...]
    ) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


class _AuthInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <key>`` to every call made through the channel."""

    def __init__(self, api_key: str) -> None:
        self._md = _common.auth_metadata(api_key)

    def _details(self, d: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(d, (*(d.metadata or ()), *self._md))

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request_iterator)


def _call(fn: Callable[[], _T]) -> _T:
    try:
        return fn()
    except grpc.RpcError as e:
        raise from_rpc_error(e) from None


class Run:
    """A job started by :meth:`Client.run`: iterate it for the job's events (in seq order, each
    exactly once, reattaching transparently); afterwards ``job`` is the final job.

    ``job`` is the job as submitted once the first response arrived, and the final job (state,
    result, usage) once the iteration ended or :meth:`wait` returned.
    """

    def __init__(self, client: Client, request: job_pb2.SubmitJobRequest) -> None:
        self._client = client
        self._request = request
        self.job: job_pb2.Job | None = None
        self._events = self._generate()
        self._on_permission: Callable[[job_pb2.PermissionRequest], _common.PermissionAnswer] | None = None

    def __iter__(self) -> Iterator[job_pb2.JobEvent]:
        return self

    def __next__(self) -> job_pb2.JobEvent:
        ev = next(self._events)
        if self._on_permission is not None and ev.HasField("permission_request"):
            self._answer(ev.permission_request)
        return ev

    def on_permission(
        self, callback: Callable[[job_pb2.PermissionRequest], _common.PermissionAnswer]
    ) -> Run:
        """Answers the job's permission requests (submit with ``permission_mode="ask"``) while
        the run is iterated or waited for: ``callback`` gets each request and returns True
        (allow), False (deny), a string (deny, telling the agent why) or None (leave it to
        another watcher or to the timeout, which denies). Returns the run."""
        self._on_permission = callback
        return self

    def send(self, text: str) -> None:
        """Sends a user message to the running agent (its next turn where it is mid-turn)."""
        req = job_pb2.SendInputRequest(job_id=self.job_id, text=text)
        _call(lambda: self._client.jobs.SendInput(req))

    def interrupt(self) -> None:
        """Stops the agent's turn, keeping the conversation: the job ends CANCELLED with reason
        INTERRUPTED, and the session's next job continues the conversation."""
        req = job_pb2.InterruptJobRequest(job_id=self.job_id)
        _call(lambda: self._client.jobs.InterruptJob(req))

    def _answer(self, request: job_pb2.PermissionRequest) -> None:
        assert self._on_permission is not None
        req = _common.respond_request(self.job_id, request, self._on_permission(request))
        if req is None:
            return
        try:
            _call(lambda: self._client.jobs.RespondToPermission(req))
        except AgentdError as e:
            if e.reason != _common.ALREADY_DECIDED:
                raise

    @property
    def job_id(self) -> str:
        return self.job.job_id if self.job is not None else ""

    def wait(self) -> job_pb2.Job:
        """Consumes the remaining events (answering permission requests) and returns the final
        job."""
        for _ in self:
            pass
        if self.job is None:  # pragma: no cover - _generate always sets it or raises
            raise AgentdError(grpc.StatusCode.INTERNAL, "RunJob returned no job")
        return self.job

    def cancel(self) -> job_pb2.Job:
        """Cancels the job (it must have been submitted, i.e. one event or ``job`` was seen)."""
        return self._client.cancel(self.job_id)

    def diff(self, paths: Sequence[str] = (), context_lines: int | None = None) -> str:
        """The finished job's unified diff (from its workspace snapshots)."""
        return self._client.job_diff(self.job_id, paths, context_lines=context_lines)

    def _generate(self) -> Iterator[job_pb2.JobEvent]:
        cursor = EventCursor()
        policy = Reconnect(self._client.reconnect_timeout)
        # Until the first response names the job, retry RunJob itself: its request_id makes the
        # retry return the same job instead of submitting a second one.
        while self.job is None:
            call = self._client.jobs.RunJob(job_pb2.RunJobRequest(job=self._request))
            try:
                for resp in call:
                    if resp.HasField("job") and self.job is None:
                        self.job = resp.job
                    policy.progressed()
                    yield from cursor.accept(resp.events)
                    if cursor.finished:
                        break
                if self.job is None:
                    raise AgentdError(grpc.StatusCode.INTERNAL, "RunJob ended without a job")
            except grpc.RpcError as e:
                err = from_rpc_error(e)
                if self.job is not None and err.code == grpc.StatusCode.UNAVAILABLE:
                    break  # reattach below with StreamJobEvents from the last seq
                time.sleep(policy.next_delay(err))
            finally:
                call.cancel()
        if not cursor.finished:
            yield from self._client._follow(self.job.job_id, cursor, policy)
        self.job = self._client._final_job(self.job.job_id)


class Client:
    """Synchronous agentd client.

    >>> with Client("127.0.0.1:50051", api_key="...") as c:   # or AGENTD_URL / AGENTD_API_KEY
    ...     session = c.create_session({"hello.py": "print('hi')"})
    ...     run = c.run(session.session_id, "run hello.py")
    ...     for event in run:
    ...         print(event)
    ...     print(run.job.state, run.job.result)
    """

    def __init__(
        self,
        target: str | None = None,
        api_key: str | None = None,
        *,
        reconnect_timeout: float = 30.0,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        """``target``: ``host:port``, ``http://host:port`` or ``https://host[:port]`` (default
        ``AGENTD_URL``); ``api_key`` defaults to ``AGENTD_API_KEY`` (none: no key is sent). ``reconnect_timeout`` bounds
        how long streams keep reattaching without progress."""
        t = _common.resolve_target(target)
        key = _common.resolve_api_key(api_key)
        if t.secure:
            raw = grpc.secure_channel(t.address, grpc.ssl_channel_credentials(), options=options)
        else:
            raw = grpc.insecure_channel(t.address, options=options)
        self._raw_channel = raw
        self.channel: grpc.Channel = grpc.intercept_channel(raw, _AuthInterceptor(key))
        self.reconnect_timeout = reconnect_timeout
        self.sessions = session_pb2_grpc.SessionServiceStub(self.channel)
        self.jobs = job_pb2_grpc.JobServiceStub(self.channel)
        self.files = file_pb2_grpc.FileServiceStub(self.channel)
        self.server = server_info_pb2_grpc.ServerInfoServiceStub(self.channel)
        self.usage = usage_pb2_grpc.UsageServiceStub(self.channel)
        self.presets = preset_pb2_grpc.PresetServiceStub(self.channel)
        self.webhooks = webhook_pb2_grpc.WebhookServiceStub(self.channel)

    def close(self) -> None:
        self._raw_channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def server_info(self) -> server_info_pb2.GetServerInfoResponse:
        """The server's version, agents (with availability) and limits."""
        req = server_info_pb2.GetServerInfoRequest()
        return _call(lambda: self.server.GetServerInfo(req))

    def get_usage(
        self, group_by: int = 0, *, start_seconds: int | None = None, end_seconds: int | None = None
    ) -> list[usage_pb2.UsageBucket]:
        """The caller's model usage from the ledger over [start, end) (Unix seconds), grouped by
        ``usage_pb2.USAGE_GROUP_BY_*`` (default: one total)."""
        req = _common.usage_request(group_by, start_seconds, end_seconds)
        return list(_call(lambda: self.usage.GetUsage(req)).buckets)

    def list_model_calls(self, job_id: str) -> list[usage_pb2.ModelCall]:
        """Every model call of a job through the gateway (model, tokens, cost, latency, status)."""
        req = usage_pb2.ListModelCallsRequest(job_id=job_id)
        return list(_call(lambda: self.usage.ListModelCalls(req)).calls)

    # ---- presets --------------------------------------------------------------------------

    def create_preset(self, name: str, **fields: Any) -> preset_pb2.Preset:
        """Creates one of the caller's presets. ``fields``: any Preset field (prompt_template with
        ``{{variables}}``, agent, model, overridable, mcp_servers, subagents, skills, env,
        timeout_seconds, …). Use it with ``submit(..., preset=name, variables={...})``."""
        req = preset_pb2.CreatePresetRequest(preset=_common.preset(name, **fields))
        return (_call(lambda: self.presets.CreatePreset(req))).preset

    def get_preset(self, name: str) -> preset_pb2.Preset:
        """The caller's preset, else the operator's (``read_only``)."""
        req = preset_pb2.GetPresetRequest(name=name)
        return (_call(lambda: self.presets.GetPreset(req))).preset

    def list_presets(self) -> list[preset_pb2.Preset]:
        """The caller's presets, then the operator's, by name."""
        req = preset_pb2.ListPresetsRequest()
        return list((_call(lambda: self.presets.ListPresets(req))).presets)

    def update_preset(self, name: str, **fields: Any) -> preset_pb2.Preset:
        """Replaces one of the caller's presets whole."""
        req = preset_pb2.UpdatePresetRequest(preset=_common.preset(name, **fields))
        return (_call(lambda: self.presets.UpdatePreset(req))).preset

    def delete_preset(self, name: str) -> None:
        req = preset_pb2.DeletePresetRequest(name=name)
        _call(lambda: self.presets.DeletePreset(req))

    # ---- sessions -------------------------------------------------------------------------

    def create_session(
        self,
        files: StrPath | Mapping[str, bytes | str] | None = None,
        *,
        ttl_seconds: int = 0,
        labels: Mapping[str, str] | None = None,
        request_id: str = "",
    ) -> session_pb2.Session:
        """Creates a session. ``files`` is a local directory (uploaded, streamed, after creation)
        or a dict of workspace path → content (sent inline; ``str`` is UTF-8 encoded)."""
        inline: list[session_pb2.FileContent] = []
        directory: StrPath | None = None
        if isinstance(files, Mapping):
            for path, content in files.items():
                data = content.encode() if isinstance(content, str) else content
                inline.append(session_pb2.FileContent(path=path, content=data))
        elif files is not None:
            directory = files
            _common.directory_entries(directory)  # fail before creating anything
        req = session_pb2.CreateSessionRequest(
            files=inline, ttl_seconds=ttl_seconds, labels=dict(labels or {}), request_id=request_id
        )
        session = _call(lambda: self.sessions.CreateSession(req)).session
        if directory is not None:
            self.upload_dir(session.session_id, directory)
            session = self.get_session(session.session_id)
        return session

    def get_session(self, session_id: str) -> session_pb2.Session:
        req = session_pb2.GetSessionRequest(session_id=session_id)
        return _call(lambda: self.sessions.GetSession(req)).session

    def list_sessions(
        self, label_filter: Mapping[str, str] | None = None, *, page_size: int = 0
    ) -> Iterator[session_pb2.Session]:
        """All of the caller's sessions, newest first, fetching pages as needed."""
        token = ""
        while True:
            req = session_pb2.ListSessionsRequest(
                page_size=page_size, page_token=token, label_filter=dict(label_filter or {})
            )
            resp = _call(lambda: self.sessions.ListSessions(req))
            yield from resp.sessions
            token = resp.next_page_token
            if not token:
                return

    def delete_session(self, session_id: str) -> int:
        """Deletes a session; returns how many queued or running jobs that cancelled."""
        req = session_pb2.DeleteSessionRequest(session_id=session_id)
        return _call(lambda: self.sessions.DeleteSession(req)).cancelled_jobs

    def fork_session(
        self,
        job_id: str,
        *,
        before: bool = False,
        labels: Mapping[str, str] | None = None,
        ttl_seconds: int = 0,
    ) -> session_pb2.Session:
        """A new session whose workspace is the job's snapshot (after it, or ``before``) and whose
        conversation is a fork of the job's; the job's own session is untouched."""
        req = session_pb2.ForkSessionRequest(
            job_id=job_id,
            point=_common.snapshot_point(before),
            labels=dict(labels or {}),
            ttl_seconds=ttl_seconds,
        )
        return _call(lambda: self.sessions.ForkSession(req)).session

    def rewind_session(
        self, session_id: str, job_id: str, *, before: bool = False
    ) -> session_pb2.RewindSessionResponse:
        """Puts the session's workspace and conversation back to after the job (or ``before`` it);
        later jobs stay listed with ``rewound_past`` set."""
        req = session_pb2.RewindSessionRequest(
            session_id=session_id, job_id=job_id, point=_common.snapshot_point(before)
        )
        return _call(lambda: self.sessions.RewindSession(req))

    # ---- files ----------------------------------------------------------------------------

    def upload(self, session_id: str, files: Mapping[str, FileSource]) -> list[file_pb2.FileInfo]:
        """Uploads ``{workspace path: local path or bytes}`` in one stream, 1 MiB at a time."""
        return self._upload(session_id, _common.upload_entries(files))

    def upload_dir(
        self, session_id: str, local_dir: StrPath, prefix: str = ""
    ) -> list[file_pb2.FileInfo]:
        """Uploads every regular file under ``local_dir`` (modes kept) to ``prefix/``."""
        return self._upload(session_id, _common.directory_entries(local_dir, prefix))

    def _upload(self, session_id: str, entries: list[UploadEntry]) -> list[file_pb2.FileInfo]:
        def requests() -> Iterator[file_pb2.UploadFilesRequest]:
            if not entries:
                yield file_pb2.UploadFilesRequest(session_id=session_id)
            for entry in entries:
                yield _common.header_request(session_id, entry)
                for chunk in _common.iter_chunks(entry):
                    yield file_pb2.UploadFilesRequest(chunk=chunk)

        return list(_call(lambda: self.files.UploadFiles(requests())).files)

    def download(
        self,
        session_id: str,
        path: str,
        dest: StrPath | BinaryIO,
        *,
        offset: int = 0,
        include_sha256: bool = False,
    ) -> file_pb2.FileInfo:
        """Streams one workspace file into ``dest`` (a local path, written via a temp file and
        renamed, or an open binary file). ``offset`` resumes: only bytes from there are sent."""
        req = file_pb2.DownloadFileRequest(
            session_id=session_id, path=path, offset=offset, include_sha256=include_sha256
        )
        if isinstance(dest, (str, os.PathLike)):
            target = Path(dest)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.agentd-partial")
            try:
                with open(tmp, "wb") as f:
                    info = self._download_into(req, f)
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
            return info
        return self._download_into(req, dest)

    def _download_into(self, req: file_pb2.DownloadFileRequest, out: BinaryIO) -> file_pb2.FileInfo:
        info = file_pb2.FileInfo()
        call = self.files.DownloadFile(req)
        try:
            for resp in call:
                if resp.HasField("info"):
                    info = resp.info
                else:
                    out.write(resp.chunk)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        finally:
            call.cancel()
        return info

    def read_file(self, session_id: str, path: str) -> bytes:
        """A small workspace file's content (use :meth:`download` for large ones)."""
        buf = io.BytesIO()
        self.download(session_id, path, buf)
        return buf.getvalue()

    def list_files(
        self, session_id: str, path: str = "", *, include_sha256: bool = False, page_size: int = 0
    ) -> Iterator[file_pb2.FileInfo]:
        """Every entry under ``path`` (recursively, in path order), fetching pages as needed."""
        token = ""
        while True:
            req = file_pb2.ListFilesRequest(
                session_id=session_id,
                path=path,
                include_sha256=include_sha256,
                page_size=page_size,
                page_token=token,
            )
            resp = _call(lambda: self.files.ListFiles(req))
            yield from resp.files
            token = resp.next_page_token
            if not token:
                return

    def delete_file(self, session_id: str, path: str, *, recursive: bool = False) -> int:
        req = file_pb2.DeleteFileRequest(session_id=session_id, path=path, recursive=recursive)
        return _call(lambda: self.files.DeleteFile(req)).deleted_files

    def job_diff(
        self, job_id: str, paths: Sequence[str] = (), *, context_lines: int | None = None
    ) -> str:
        """A finished job's unified diff, as git prints it (binary files marked, not dumped)."""
        req = file_pb2.GetJobDiffRequest(job_id=job_id, paths=list(paths))
        if context_lines is not None:
            req.context_lines = context_lines
        call = self.files.GetJobDiff(req)
        out = bytearray()
        try:
            for resp in call:
                out += resp.chunk
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        finally:
            call.cancel()
        return out.decode("utf-8", errors="replace")

    def outputs(self, session_id: str, job_id: str = "") -> file_pb2.GetJobOutputsResponse:
        """What a job changed (default: the session's latest succeeded job): every page, as one
        response."""
        req = file_pb2.GetJobOutputsRequest(session_id=session_id, job_id=job_id)
        out = _call(lambda: self.files.GetJobOutputs(req))
        while out.next_page_token:
            _common.next_outputs_request(req, out)
            _common.add_outputs_page(out, _call(lambda: self.files.GetJobOutputs(req)))
        return out

    def download_outputs(self, session_id: str, dest_dir: StrPath, job_id: str = "") -> list[Path]:
        """Downloads every file the job added or modified into ``dest_dir`` (keeping relative
        paths); returns the local paths written."""
        written: list[Path] = []
        for rel in _common.output_paths(self.outputs(session_id, job_id)):
            local = _common.safe_local_path(dest_dir, rel)
            self.download(session_id, rel, local)
            written.append(local)
        return written

    def download_archive(
        self,
        session_id: str,
        dest: StrPath | BinaryIO,
        *,
        format: _common.ArchiveFormatName | int = "tar.gz",
        paths: Sequence[str] = (),
        job_id: str = "",
    ) -> int:
        """Streams the workspace (or ``paths`` of it) as one archive into ``dest`` (a local path,
        written via a temp file and renamed, or an open binary file); returns its size."""
        req = file_pb2.DownloadArchiveRequest(
            session_id=session_id,
            paths=list(paths),
            format=_common.archive_format(format),
            job_id=job_id,
        )

        def into(out: BinaryIO) -> int:
            size = 0
            call = self.files.DownloadArchive(req)
            try:
                for resp in call:
                    out.write(resp.chunk)
                    size += len(resp.chunk)
            except grpc.RpcError as e:
                raise from_rpc_error(e) from None
            finally:
                call.cancel()
            return size

        if isinstance(dest, (str, os.PathLike)):
            target = Path(dest)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.agentd-partial")
            try:
                with open(tmp, "wb") as f:
                    size = into(f)
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
            return size
        return into(dest)

    def upload_archive(
        self,
        session_id: str,
        source: StrPath | BinaryIO,
        *,
        format: _common.ArchiveFormatName | int = "tar.gz",
        dest: str = "",
    ) -> file_pb2.UploadArchiveResponse:
        """Extracts a tar, tar.gz or zip archive into ``dest`` of the workspace, all or nothing
        (a hostile or broken archive raises and writes nothing)."""
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as f:
                return self.upload_archive(session_id, f, format=format, dest=dest)
        reqs = _common.archive_requests(session_id, format, dest, source)
        return _call(lambda: self.files.UploadArchive(reqs))

    def watch_files(
        self, session_id: str, paths: Sequence[str] = (), *, after_seq: int = 0
    ) -> Iterator[file_pb2.FileEvent]:
        """Yields the workspace's file changes as they happen (resume with ``after_seq``, the
        ``seq`` of the last event seen); stops when the session is deleted."""
        req = file_pb2.WatchFilesRequest(session_id=session_id, paths=list(paths), after_seq=after_seq)
        call = self.files.WatchFiles(req)
        try:
            for resp in call:
                yield resp.event
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        finally:
            call.cancel()

    # ---- jobs -----------------------------------------------------------------------------

    def submit(self, session_id: str, prompt: str, **options: Any) -> job_pb2.Job:
        """Queues a job. ``options``: agent, model, timeout_seconds, env, allowed_tools,
        max_turns, append_system_prompt, permission_mode (``"ask"``: see :meth:`Run.on_permission`),
        allow_rules, deny_rules, permission_timeout_seconds, request_id, preset, variables,
        mcp_servers, subagents, skills."""
        req = _common.submit_request(session_id, prompt, **options)
        return _call(lambda: self.jobs.SubmitJob(req)).job

    def run(self, session_id: str, prompt: str, **options: Any) -> Run:
        """Submits a job and streams its events: iterate the returned :class:`Run`, then read
        ``run.job`` (or call ``run.wait()``) for the final job. Options as for :meth:`submit`."""
        return Run(self, _common.submit_request(session_id, prompt, **options))

    def get_job(self, job_id: str) -> job_pb2.Job:
        req = job_pb2.GetJobRequest(job_id=job_id)
        return _call(lambda: self.jobs.GetJob(req)).job

    def list_jobs(
        self,
        session_id: str,
        states: Iterable[job_pb2.JobState.ValueType] = (),
        *,
        page_size: int = 0,
    ) -> Iterator[job_pb2.Job]:
        token = ""
        wanted = list(states)
        while True:
            req = job_pb2.ListJobsRequest(
                session_id=session_id, states=wanted, page_size=page_size, page_token=token
            )
            resp = _call(lambda: self.jobs.ListJobs(req))
            yield from resp.jobs
            token = resp.next_page_token
            if not token:
                return

    def cancel(self, job_id: str) -> job_pb2.Job:
        req = job_pb2.CancelJobRequest(job_id=job_id)
        return _call(lambda: self.jobs.CancelJob(req)).job

    def stream(self, job_id: str, after_seq: int = 0) -> Iterator[job_pb2.JobEvent]:
        """The job's events after ``after_seq``, each exactly once, ending with ``finished``.
        When the connection drops it reattaches from the last seq it delivered."""
        cursor = EventCursor(after_seq)
        return self._follow(job_id, cursor, Reconnect(self.reconnect_timeout))

    def wait(self, job_id: str) -> job_pb2.Job:
        """Blocks until the job is final and returns it."""
        job = self.get_job(job_id)
        if job.state not in _common.FINAL_STATES:
            for _ in self.stream(job_id, after_seq=max(job.last_seq - 1, 0)):
                pass
        return self._final_job(job_id)

    def watch_jobs(
        self,
        *,
        session_id: str = "",
        labels: Mapping[str, str] | None = None,
        agents: Sequence[str] = (),
        states: Iterable[job_pb2.JobState.ValueType] = (),
        after_cursor: int | None = None,
        include_events: bool = False,
    ) -> Iterator[job_pb2.JobChange]:
        """Every change of the caller's jobs (creation, start, finish) matching the filter, each
        once and in order, forever. ``after_cursor`` replays retained changes after it (0: all);
        ``None`` starts now. When the connection drops it resumes from the last position read.

        With ``include_events`` each change also carries the job's events since its previous
        change this watch admits (``change.events``), so every event of the followed jobs
        arrives once, in order; a change the server capped is completed from the job's event
        stream before it is yielded."""
        policy = Reconnect(self.reconnect_timeout)
        cursor = after_cursor
        while True:
            req = job_pb2.WatchJobsRequest(
                session_id=session_id,
                labels=dict(labels or {}),
                agents=list(agents),
                states=list(states),
                include_events=include_events,
            )
            if cursor is not None:
                req.after_cursor = cursor
            call = self.jobs.WatchJobs(req)
            try:
                for resp in call:
                    policy.progressed()
                    for change in resp.changes:
                        if change.events_truncated:
                            self._complete_events(change)
                        yield change
                    cursor = resp.cursor
                delay = policy.next_delay(
                    AgentdError(grpc.StatusCode.UNAVAILABLE, "watch stream ended")
                )
            except grpc.RpcError as e:
                delay = policy.next_delay(from_rpc_error(e))
            finally:
                call.cancel()
            time.sleep(delay)

    def wait_job(self, job_id: str, timeout_seconds: int = 0) -> tuple[job_pb2.Job, bool]:
        """One WaitJob call: the job once final, or as it is when the timeout (0: the server's
        default, a minute) passes first; the flag is True when it timed out."""
        req = job_pb2.WaitJobRequest(job_id=job_id, timeout_seconds=timeout_seconds)
        resp = _call(lambda: self.jobs.WaitJob(req))
        return resp.job, resp.timed_out

    def _complete_events(self, change: job_pb2.JobChange) -> None:
        # The events the server left out run from the last one carried up to the change's own
        # last seq; the stream may go further (a running job), so it stops there.
        after = change.events[-1].seq if change.events else change.events_after_seq
        until = change.job.last_seq
        if after < until:
            policy = Reconnect(self.reconnect_timeout)
            rest_of = self._follow(change.job.job_id, EventCursor(after), policy)
            with closing(rest_of) as rest:
                for ev in rest:
                    if ev.seq > until:
                        break
                    change.events.append(ev)
                    if ev.seq == until:
                        break
        change.events_truncated = False

    def _follow(
        self, job_id: str, cursor: EventCursor, policy: Reconnect
    ) -> Generator[job_pb2.JobEvent, None, None]:
        while not cursor.finished:
            req = job_pb2.StreamJobEventsRequest(job_id=job_id, after_seq=cursor.last_seq)
            call = self.jobs.StreamJobEvents(req)
            try:
                for resp in call:
                    policy.progressed()
                    yield from cursor.accept(resp.events)
                    if cursor.finished:
                        return
                # A clean end before `finished` (e.g. the server draining): reattach.
                delay = policy.next_delay(
                    AgentdError(grpc.StatusCode.UNAVAILABLE, "event stream ended early")
                )
            except grpc.RpcError as e:
                delay = policy.next_delay(from_rpc_error(e))
            finally:
                call.cancel()
            time.sleep(delay)

    def _final_job(self, job_id: str) -> job_pb2.Job:
        # The `finished` event is written with the final state; allow a short lag regardless.
        deadline = time.monotonic() + 5.0
        while True:
            job = self.get_job(job_id)
            if job.state in _common.FINAL_STATES or time.monotonic() > deadline:
                return job
            time.sleep(0.05)
