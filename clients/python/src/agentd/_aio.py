"""The asyncio client (``grpc.aio``): the same helpers as :class:`agentd.Client`, as coroutines and
async iterators. Local file reads and writes run in worker threads so they never block the loop.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import aclosing
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, TypeVar

import grpc
from grpc import aio

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

# An on_permission callback of AsyncRun: a function or a coroutine function.
PermissionCallback = Callable[
    [job_pb2.PermissionRequest],
    _common.PermissionAnswer | Awaitable[_common.PermissionAnswer],
]


class _Auth:
    """Adds ``authorization: Bearer <key>`` to a call's metadata."""

    def __init__(self, api_key: str) -> None:
        self._md = _common.auth_metadata(api_key)

    def details(self, d: Any) -> aio.ClientCallDetails:
        md = aio.Metadata(*(d.metadata or ()))
        for k, v in self._md:
            md.add(k, v)
        return aio.ClientCallDetails(d.method, d.timeout, md, d.credentials, d.wait_for_ready)


# grpc.aio files each interceptor object under the first kind it implements only, so each kind
# needs its own object.
class _UnaryUnaryAuth(aio.UnaryUnaryClientInterceptor):
    def __init__(self, auth: _Auth) -> None:
        self._auth = auth

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._auth.details(client_call_details), request)


class _UnaryStreamAuth(aio.UnaryStreamClientInterceptor):
    def __init__(self, auth: _Auth) -> None:
        self._auth = auth

    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(self._auth.details(client_call_details), request)


class _StreamUnaryAuth(aio.StreamUnaryClientInterceptor):
    def __init__(self, auth: _Auth) -> None:
        self._auth = auth

    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._auth.details(client_call_details), request_iterator)


class _StreamStreamAuth(aio.StreamStreamClientInterceptor):
    def __init__(self, auth: _Auth) -> None:
        self._auth = auth

    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._auth.details(client_call_details), request_iterator)


async def _call(aw: Awaitable[_T]) -> _T:
    try:
        return await aw
    except grpc.RpcError as e:
        raise from_rpc_error(e) from None


class AsyncRun:
    """A job started by :meth:`AsyncClient.run`: ``async for`` it for the job's events (in seq
    order, each exactly once, reattaching transparently); afterwards ``job`` is the final job."""

    def __init__(self, client: AsyncClient, request: job_pb2.SubmitJobRequest) -> None:
        self._client = client
        self._request = request
        self.job: job_pb2.Job | None = None
        self._events = self._generate()
        self._on_permission: PermissionCallback | None = None

    def __aiter__(self) -> AsyncIterator[job_pb2.JobEvent]:
        return self

    async def __anext__(self) -> job_pb2.JobEvent:
        ev = await self._events.__anext__()
        if self._on_permission is not None and ev.HasField("permission_request"):
            await self._answer(ev.permission_request)
        return ev

    def on_permission(self, callback: PermissionCallback) -> AsyncRun:
        """Answers the job's permission requests (submit with ``permission_mode="ask"``) while
        the run is iterated or waited for: ``callback`` (a function or a coroutine function)
        gets each request and returns True (allow), False (deny), a string (deny, telling the
        agent why) or None (leave it to another watcher or to the timeout, which denies).
        Returns the run."""
        self._on_permission = callback
        return self

    async def send(self, text: str) -> None:
        """Sends a user message to the running agent (its next turn where it is mid-turn)."""
        await _call(self._client.jobs.SendInput(job_pb2.SendInputRequest(job_id=self.job_id, text=text)))

    async def interrupt(self) -> None:
        """Stops the agent's turn, keeping the conversation: the job ends CANCELLED with reason
        INTERRUPTED, and the session's next job continues the conversation."""
        await _call(self._client.jobs.InterruptJob(job_pb2.InterruptJobRequest(job_id=self.job_id)))

    async def _answer(self, request: job_pb2.PermissionRequest) -> None:
        assert self._on_permission is not None
        answer = self._on_permission(request)
        if inspect.isawaitable(answer):
            answer = await answer
        req = _common.respond_request(self.job_id, request, answer)
        if req is None:
            return
        try:
            await _call(self._client.jobs.RespondToPermission(req))
        except AgentdError as e:
            if e.reason != _common.ALREADY_DECIDED:
                raise

    @property
    def job_id(self) -> str:
        return self.job.job_id if self.job is not None else ""

    async def wait(self) -> job_pb2.Job:
        """Consumes the remaining events (answering permission requests) and returns the final
        job."""
        async for _ in self:
            pass
        if self.job is None:  # pragma: no cover - _generate always sets it or raises
            raise AgentdError(grpc.StatusCode.INTERNAL, "RunJob returned no job")
        return self.job

    async def cancel(self) -> job_pb2.Job:
        return await self._client.cancel(self.job_id)

    async def diff(self, paths: Sequence[str] = (), context_lines: int | None = None) -> str:
        """The finished job's unified diff (from its workspace snapshots)."""
        return await self._client.job_diff(self.job_id, paths, context_lines=context_lines)

    async def _generate(self) -> AsyncIterator[job_pb2.JobEvent]:
        cursor = EventCursor()
        policy = Reconnect(self._client.reconnect_timeout)
        while self.job is None:
            call = self._client.jobs.RunJob(job_pb2.RunJobRequest(job=self._request))
            try:
                async for resp in call:
                    if resp.HasField("job") and self.job is None:
                        self.job = resp.job
                    policy.progressed()
                    for ev in cursor.accept(resp.events):
                        yield ev
                    if cursor.finished:
                        break
                if self.job is None:
                    raise AgentdError(grpc.StatusCode.INTERNAL, "RunJob ended without a job")
            except grpc.RpcError as e:
                err = from_rpc_error(e)
                if self.job is not None and err.code == grpc.StatusCode.UNAVAILABLE:
                    break  # reattach below with StreamJobEvents from the last seq
                await asyncio.sleep(policy.next_delay(err))
            finally:
                call.cancel()
        if not cursor.finished:
            async for ev in self._client._follow(self.job.job_id, cursor, policy):
                yield ev
        self.job = await self._client._final_job(self.job.job_id)


class AsyncClient:
    """asyncio agentd client; see :class:`agentd.Client` for the helpers' semantics.

    >>> async with AsyncClient("127.0.0.1:50051", api_key="...") as c:
    ...     session = await c.create_session({"hello.py": "print('hi')"})
    ...     run = c.run(session.session_id, "run hello.py")
    ...     async for event in run:
    ...         print(event)
    ...     print(run.job.state)
    """

    def __init__(
        self,
        target: str | None = None,
        api_key: str | None = None,
        *,
        reconnect_timeout: float = 30.0,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        t = _common.resolve_target(target)
        key = _common.resolve_api_key(api_key)
        auth = _Auth(key)
        interceptors: list[aio.ClientInterceptor] = [
            _UnaryUnaryAuth(auth),
            _UnaryStreamAuth(auth),
            _StreamUnaryAuth(auth),
            _StreamStreamAuth(auth),
        ]
        if t.secure:
            self.channel = aio.secure_channel(
                t.address,
                grpc.ssl_channel_credentials(),
                options=options,
                interceptors=interceptors,
            )
        else:
            self.channel = aio.insecure_channel(
                t.address, options=options, interceptors=interceptors
            )
        self.reconnect_timeout = reconnect_timeout
        self.sessions = session_pb2_grpc.SessionServiceStub(self.channel)
        self.jobs = job_pb2_grpc.JobServiceStub(self.channel)
        self.files = file_pb2_grpc.FileServiceStub(self.channel)
        self.server = server_info_pb2_grpc.ServerInfoServiceStub(self.channel)
        self.usage = usage_pb2_grpc.UsageServiceStub(self.channel)
        self.presets = preset_pb2_grpc.PresetServiceStub(self.channel)
        self.webhooks = webhook_pb2_grpc.WebhookServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def server_info(self) -> server_info_pb2.GetServerInfoResponse:
        """The server's version, agents (with availability) and limits."""
        return await _call(self.server.GetServerInfo(server_info_pb2.GetServerInfoRequest()))

    async def get_usage(
        self, group_by: int = 0, *, start_seconds: int | None = None, end_seconds: int | None = None
    ) -> list[usage_pb2.UsageBucket]:
        """The caller's model usage from the ledger over [start, end) (Unix seconds), grouped by
        ``usage_pb2.USAGE_GROUP_BY_*`` (default: one total)."""
        req = _common.usage_request(group_by, start_seconds, end_seconds)
        return list((await _call(self.usage.GetUsage(req))).buckets)

    async def list_model_calls(self, job_id: str) -> list[usage_pb2.ModelCall]:
        """Every model call of a job through the gateway (model, tokens, cost, latency, status)."""
        req = usage_pb2.ListModelCallsRequest(job_id=job_id)
        return list((await _call(self.usage.ListModelCalls(req))).calls)

    # ---- presets --------------------------------------------------------------------------

    async def create_preset(self, name: str, **fields: Any) -> preset_pb2.Preset:
        """Creates one of the caller's presets. ``fields``: any Preset field (prompt_template with
        ``{{variables}}``, agent, model, overridable, mcp_servers, subagents, skills, env,
        timeout_seconds, …). Use it with ``submit(..., preset=name, variables={...})``."""
        req = preset_pb2.CreatePresetRequest(preset=_common.preset(name, **fields))
        return (await _call(self.presets.CreatePreset(req))).preset

    async def get_preset(self, name: str) -> preset_pb2.Preset:
        """The caller's preset, else the operator's (``read_only``)."""
        req = preset_pb2.GetPresetRequest(name=name)
        return (await _call(self.presets.GetPreset(req))).preset

    async def list_presets(self) -> list[preset_pb2.Preset]:
        """The caller's presets, then the operator's, by name."""
        req = preset_pb2.ListPresetsRequest()
        return list((await _call(self.presets.ListPresets(req))).presets)

    async def update_preset(self, name: str, **fields: Any) -> preset_pb2.Preset:
        """Replaces one of the caller's presets whole."""
        req = preset_pb2.UpdatePresetRequest(preset=_common.preset(name, **fields))
        return (await _call(self.presets.UpdatePreset(req))).preset

    async def delete_preset(self, name: str) -> None:
        req = preset_pb2.DeletePresetRequest(name=name)
        await _call(self.presets.DeletePreset(req))

    # ---- sessions -------------------------------------------------------------------------

    async def create_session(
        self,
        files: StrPath | Mapping[str, bytes | str] | None = None,
        *,
        ttl_seconds: int = 0,
        labels: Mapping[str, str] | None = None,
        request_id: str = "",
    ) -> session_pb2.Session:
        """Creates a session from a local directory (uploaded, streamed) or a dict of files."""
        inline: list[session_pb2.FileContent] = []
        entries: list[UploadEntry] | None = None
        if isinstance(files, Mapping):
            for path, content in files.items():
                data = content.encode() if isinstance(content, str) else content
                inline.append(session_pb2.FileContent(path=path, content=data))
        elif files is not None:
            entries = await asyncio.to_thread(_common.directory_entries, files)
        req = session_pb2.CreateSessionRequest(
            files=inline, ttl_seconds=ttl_seconds, labels=dict(labels or {}), request_id=request_id
        )
        session = (await _call(self.sessions.CreateSession(req))).session
        if entries is not None:
            await self._upload(session.session_id, entries)
            session = await self.get_session(session.session_id)
        return session

    async def get_session(self, session_id: str) -> session_pb2.Session:
        req = session_pb2.GetSessionRequest(session_id=session_id)
        return (await _call(self.sessions.GetSession(req))).session

    async def list_sessions(
        self, label_filter: Mapping[str, str] | None = None, *, page_size: int = 0
    ) -> AsyncIterator[session_pb2.Session]:
        token = ""
        while True:
            req = session_pb2.ListSessionsRequest(
                page_size=page_size, page_token=token, label_filter=dict(label_filter or {})
            )
            resp = await _call(self.sessions.ListSessions(req))
            for s in resp.sessions:
                yield s
            token = resp.next_page_token
            if not token:
                return

    async def delete_session(self, session_id: str) -> int:
        req = session_pb2.DeleteSessionRequest(session_id=session_id)
        return (await _call(self.sessions.DeleteSession(req))).cancelled_jobs

    async def fork_session(
        self,
        job_id: str,
        *,
        before: bool = False,
        labels: Mapping[str, str] | None = None,
        ttl_seconds: int = 0,
    ) -> session_pb2.Session:
        """See :meth:`agentd.Client.fork_session`."""
        req = session_pb2.ForkSessionRequest(
            job_id=job_id,
            point=_common.snapshot_point(before),
            labels=dict(labels or {}),
            ttl_seconds=ttl_seconds,
        )
        return (await _call(self.sessions.ForkSession(req))).session

    async def rewind_session(
        self, session_id: str, job_id: str, *, before: bool = False
    ) -> session_pb2.RewindSessionResponse:
        """See :meth:`agentd.Client.rewind_session`."""
        req = session_pb2.RewindSessionRequest(
            session_id=session_id, job_id=job_id, point=_common.snapshot_point(before)
        )
        return await _call(self.sessions.RewindSession(req))

    # ---- files ----------------------------------------------------------------------------

    async def upload(
        self, session_id: str, files: Mapping[str, FileSource]
    ) -> list[file_pb2.FileInfo]:
        entries = await asyncio.to_thread(_common.upload_entries, files)
        return await self._upload(session_id, entries)

    async def upload_dir(
        self, session_id: str, local_dir: StrPath, prefix: str = ""
    ) -> list[file_pb2.FileInfo]:
        entries = await asyncio.to_thread(_common.directory_entries, local_dir, prefix)
        return await self._upload(session_id, entries)

    async def _upload(self, session_id: str, entries: list[UploadEntry]) -> list[file_pb2.FileInfo]:
        async def requests() -> AsyncIterator[file_pb2.UploadFilesRequest]:
            if not entries:
                yield file_pb2.UploadFilesRequest(session_id=session_id)
            for entry in entries:
                yield _common.header_request(session_id, entry)
                chunks = _common.iter_chunks(entry)
                try:
                    while True:
                        chunk = await asyncio.to_thread(next, chunks, None)
                        if chunk is None:
                            break
                        yield file_pb2.UploadFilesRequest(chunk=chunk)
                finally:
                    chunks.close()

        resp = await _call(self.files.UploadFiles(requests()))
        return list(resp.files)

    async def download(
        self,
        session_id: str,
        path: str,
        dest: StrPath | BinaryIO,
        *,
        offset: int = 0,
        include_sha256: bool = False,
    ) -> file_pb2.FileInfo:
        """Streams one workspace file into ``dest`` (a path, via a temp file and rename, or an
        open binary file); ``offset`` resumes."""
        req = file_pb2.DownloadFileRequest(
            session_id=session_id, path=path, offset=offset, include_sha256=include_sha256
        )
        if isinstance(dest, (str, os.PathLike)):
            target = Path(dest)
            await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.agentd-partial")
            f = await asyncio.to_thread(open, tmp, "wb")
            try:
                try:
                    info = await self._download_into(req, f)
                finally:
                    await asyncio.to_thread(f.close)
                await asyncio.to_thread(os.replace, tmp, target)
            finally:
                await asyncio.to_thread(tmp.unlink, missing_ok=True)
            return info
        return await self._download_into(req, dest)

    async def _download_into(
        self, req: file_pb2.DownloadFileRequest, out: BinaryIO
    ) -> file_pb2.FileInfo:
        info = file_pb2.FileInfo()
        call = self.files.DownloadFile(req)
        try:
            async for resp in call:
                if resp.HasField("info"):
                    info = resp.info
                else:
                    await asyncio.to_thread(out.write, resp.chunk)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        finally:
            call.cancel()
        return info

    async def read_file(self, session_id: str, path: str) -> bytes:
        buf = io.BytesIO()
        await self.download(session_id, path, buf)
        return buf.getvalue()

    async def list_files(
        self, session_id: str, path: str = "", *, include_sha256: bool = False, page_size: int = 0
    ) -> AsyncIterator[file_pb2.FileInfo]:
        token = ""
        while True:
            req = file_pb2.ListFilesRequest(
                session_id=session_id,
                path=path,
                include_sha256=include_sha256,
                page_size=page_size,
                page_token=token,
            )
            resp = await _call(self.files.ListFiles(req))
            for f in resp.files:
                yield f
            token = resp.next_page_token
            if not token:
                return

    async def delete_file(self, session_id: str, path: str, *, recursive: bool = False) -> int:
        req = file_pb2.DeleteFileRequest(session_id=session_id, path=path, recursive=recursive)
        return (await _call(self.files.DeleteFile(req))).deleted_files

    async def job_diff(
        self, job_id: str, paths: Sequence[str] = (), *, context_lines: int | None = None
    ) -> str:
        """See :meth:`agentd.Client.job_diff`."""
        req = file_pb2.GetJobDiffRequest(job_id=job_id, paths=list(paths))
        if context_lines is not None:
            req.context_lines = context_lines
        call = self.files.GetJobDiff(req)
        out = bytearray()
        try:
            async for resp in call:
                out += resp.chunk
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        finally:
            call.cancel()
        return out.decode("utf-8", errors="replace")

    async def outputs(self, session_id: str, job_id: str = "") -> file_pb2.GetJobOutputsResponse:
        req = file_pb2.GetJobOutputsRequest(session_id=session_id, job_id=job_id)
        out = await _call(self.files.GetJobOutputs(req))
        while out.next_page_token:
            _common.next_outputs_request(req, out)
            _common.add_outputs_page(out, await _call(self.files.GetJobOutputs(req)))
        return out

    async def download_outputs(
        self, session_id: str, dest_dir: StrPath, job_id: str = ""
    ) -> list[Path]:
        written: list[Path] = []
        for rel in _common.output_paths(await self.outputs(session_id, job_id)):
            local = _common.safe_local_path(dest_dir, rel)
            await self.download(session_id, rel, local)
            written.append(local)
        return written

    async def download_archive(
        self,
        session_id: str,
        dest: StrPath | BinaryIO,
        *,
        format: _common.ArchiveFormatName | int = "tar.gz",
        paths: Sequence[str] = (),
        job_id: str = "",
    ) -> int:
        """Streams the workspace (or ``paths`` of it) as one archive into ``dest`` (a path, via
        a temp file and rename, or an open binary file); returns its size."""
        req = file_pb2.DownloadArchiveRequest(
            session_id=session_id,
            paths=list(paths),
            format=_common.archive_format(format),
            job_id=job_id,
        )

        async def into(out: BinaryIO) -> int:
            size = 0
            call = self.files.DownloadArchive(req)
            try:
                async for resp in call:
                    await asyncio.to_thread(out.write, resp.chunk)
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
                    size = await into(f)
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
            return size
        return await into(dest)

    async def upload_archive(
        self,
        session_id: str,
        source: StrPath | BinaryIO,
        *,
        format: _common.ArchiveFormatName | int = "tar.gz",
        dest: str = "",
    ) -> file_pb2.UploadArchiveResponse:
        """Extracts a tar, tar.gz or zip archive into ``dest`` of the workspace, all or nothing."""
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as f:
                return await self.upload_archive(session_id, f, format=format, dest=dest)
        reqs = _common.archive_requests(session_id, format, dest, source)

        async def requests() -> AsyncIterator[file_pb2.UploadArchiveRequest]:
            while (req := await asyncio.to_thread(next, reqs, None)) is not None:
                yield req

        return await _call(self.files.UploadArchive(requests()))

    async def watch_files(
        self, session_id: str, paths: Sequence[str] = (), *, after_seq: int = 0
    ) -> AsyncIterator[file_pb2.FileEvent]:
        """Yields the workspace's file changes as they happen (resume with ``after_seq``)."""
        req = file_pb2.WatchFilesRequest(session_id=session_id, paths=list(paths), after_seq=after_seq)
        call = self.files.WatchFiles(req)
        try:
            async for resp in call:
                yield resp.event
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        finally:
            call.cancel()

    # ---- jobs -----------------------------------------------------------------------------

    async def submit(self, session_id: str, prompt: str, **options: Any) -> job_pb2.Job:
        req = _common.submit_request(session_id, prompt, **options)
        return (await _call(self.jobs.SubmitJob(req))).job

    def run(self, session_id: str, prompt: str, **options: Any) -> AsyncRun:
        return AsyncRun(self, _common.submit_request(session_id, prompt, **options))

    async def get_job(self, job_id: str) -> job_pb2.Job:
        req = job_pb2.GetJobRequest(job_id=job_id)
        return (await _call(self.jobs.GetJob(req))).job

    async def list_jobs(
        self,
        session_id: str,
        states: Iterable[job_pb2.JobState.ValueType] = (),
        *,
        page_size: int = 0,
    ) -> AsyncIterator[job_pb2.Job]:
        token = ""
        wanted = list(states)
        while True:
            req = job_pb2.ListJobsRequest(
                session_id=session_id, states=wanted, page_size=page_size, page_token=token
            )
            resp = await _call(self.jobs.ListJobs(req))
            for j in resp.jobs:
                yield j
            token = resp.next_page_token
            if not token:
                return

    async def cancel(self, job_id: str) -> job_pb2.Job:
        req = job_pb2.CancelJobRequest(job_id=job_id)
        return (await _call(self.jobs.CancelJob(req))).job

    def stream(self, job_id: str, after_seq: int = 0) -> AsyncIterator[job_pb2.JobEvent]:
        """The job's events after ``after_seq``, each exactly once, ending with ``finished``;
        reattaches from the last delivered seq when the connection drops."""
        return self._follow(job_id, EventCursor(after_seq), Reconnect(self.reconnect_timeout))

    async def wait(self, job_id: str) -> job_pb2.Job:
        job = await self.get_job(job_id)
        if job.state not in _common.FINAL_STATES:
            async for _ in self.stream(job_id, after_seq=max(job.last_seq - 1, 0)):
                pass
        return await self._final_job(job_id)

    async def watch_jobs(
        self,
        *,
        session_id: str = "",
        labels: Mapping[str, str] | None = None,
        agents: Sequence[str] = (),
        states: Iterable[job_pb2.JobState.ValueType] = (),
        after_cursor: int | None = None,
        include_events: bool = False,
    ) -> AsyncIterator[job_pb2.JobChange]:
        """As :meth:`agentd.Client.watch_jobs`: every matching change once, in order, resuming
        from the last position read when the connection drops; with ``include_events`` each
        carries the job's events since its previous admitted change, completed when capped."""
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
                async for resp in call:
                    policy.progressed()
                    for change in resp.changes:
                        if change.events_truncated:
                            await self._complete_events(change)
                        yield change
                    cursor = resp.cursor
                delay = policy.next_delay(
                    AgentdError(grpc.StatusCode.UNAVAILABLE, "watch stream ended")
                )
            except grpc.RpcError as e:
                delay = policy.next_delay(from_rpc_error(e))
            finally:
                call.cancel()
            await asyncio.sleep(delay)

    async def wait_job(self, job_id: str, timeout_seconds: int = 0) -> tuple[job_pb2.Job, bool]:
        """One WaitJob call: the job once final, or as it is when the timeout passes first
        (the flag is then True)."""
        req = job_pb2.WaitJobRequest(job_id=job_id, timeout_seconds=timeout_seconds)
        resp = await _call(self.jobs.WaitJob(req))
        return resp.job, resp.timed_out

    async def _complete_events(self, change: job_pb2.JobChange) -> None:
        # As the sync client's: from the last event carried up to the change's own last seq.
        after = change.events[-1].seq if change.events else change.events_after_seq
        until = change.job.last_seq
        if after < until:
            policy = Reconnect(self.reconnect_timeout)
            rest_of = self._follow(change.job.job_id, EventCursor(after), policy)
            async with aclosing(rest_of) as rest:
                async for ev in rest:
                    if ev.seq > until:
                        break
                    change.events.append(ev)
                    if ev.seq == until:
                        break
        change.events_truncated = False

    async def _follow(
        self, job_id: str, cursor: EventCursor, policy: Reconnect
    ) -> AsyncGenerator[job_pb2.JobEvent, None]:
        while not cursor.finished:
            req = job_pb2.StreamJobEventsRequest(job_id=job_id, after_seq=cursor.last_seq)
            call = self.jobs.StreamJobEvents(req)
            try:
                async for resp in call:
                    policy.progressed()
                    for ev in cursor.accept(resp.events):
                        yield ev
                    if cursor.finished:
                        return
                delay = policy.next_delay(
                    AgentdError(grpc.StatusCode.UNAVAILABLE, "event stream ended early")
                )
            except grpc.RpcError as e:
                delay = policy.next_delay(from_rpc_error(e))
            finally:
                call.cancel()
            await asyncio.sleep(delay)

    async def _final_job(self, job_id: str) -> job_pb2.Job:
        deadline = time.monotonic() + 5.0
        while True:
            job = await self.get_job(job_id)
            if job.state in _common.FINAL_STATES or time.monotonic() > deadline:
                return job
            await asyncio.sleep(0.05)
