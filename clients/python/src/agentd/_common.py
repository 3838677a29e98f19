"""What the sync and async clients share and that does no network I/O: configuration from the
environment, the API-key metadata, the event cursor that makes reattaching gap- and duplicate-free,
the reconnect policy, request builders, and safe local paths for downloads.
"""

from __future__ import annotations

import os
import stat
import time
import uuid
from collections.abc import Generator, Mapping, Sequence
from typing import BinaryIO
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from typing import Any

import grpc

from agentd._errors import AgentdError, InternalError, InvalidArgumentError
from agentd.v1 import file_pb2, job_pb2, preset_pb2, session_pb2, usage_pb2

#: Upload chunk size: the server accepts at most 1 MiB per chunk.
CHUNK_SIZE = 1 << 20

#: Job states after which a job never changes again.
FINAL_STATES = frozenset(
    {
        job_pb2.JOB_STATE_SUCCEEDED,
        job_pb2.JOB_STATE_FAILED,
        job_pb2.JOB_STATE_CANCELLED,
        job_pb2.JOB_STATE_TIMED_OUT,
    }
)

StrPath = str | os.PathLike[str]
#: What an upload entry may come from: a local file path, or the bytes themselves.
FileSource = StrPath | bytes


@dataclass(frozen=True)
class Target:
    """Where the server is and how to reach it."""

    address: str
    secure: bool


def resolve_target(target: str | None) -> Target:
    """``host:port``, ``http://host:port`` (plaintext) or ``https://host[:port]`` (TLS); falls back
    to ``AGENTD_URL``, then ``127.0.0.1:50051``."""
    raw = (target or os.environ.get("AGENTD_URL") or "127.0.0.1:50051").strip()
    secure = False
    if raw.startswith("https://"):
        raw, secure = raw[len("https://") :], True
    elif raw.startswith("http://"):
        raw = raw[len("http://") :]
    raw = raw.rstrip("/")
    if not raw or "/" in raw:
        raise InvalidArgumentError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"target must be host:port or http(s)://host:port, got {raw!r}",
            "INVALID_FIELD",
        )
    if secure and ":" not in raw.rsplit("]", 1)[-1]:
        raw += ":443"
    return Target(raw, secure)


def resolve_api_key(api_key: str | None) -> str:
    """The key to send; ``""`` sends none (a server on loopback without keys accepts that)."""
    return api_key if api_key is not None else os.environ.get("AGENTD_API_KEY", "")


def auth_metadata(api_key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


class EventCursor:
    """Tracks the last delivered seq of one job's event stream so that replays after a reattach
    deliver every event exactly once, and detects gaps (which would mean lost events)."""

    def __init__(self, after_seq: int = 0) -> None:
        self.last_seq = after_seq
        self.finished = False

    def accept(self, events: Sequence[job_pb2.JobEvent]) -> list[job_pb2.JobEvent]:
        out: list[job_pb2.JobEvent] = []
        for ev in events:
            if self.finished or ev.seq <= self.last_seq:
                continue
            if ev.seq != self.last_seq + 1:
                raise InternalError(
                    grpc.StatusCode.DATA_LOSS,
                    f"event stream skipped from seq {self.last_seq} to {ev.seq}",
                    "SEQ_GAP",
                )
            self.last_seq = ev.seq
            out.append(ev)
            if ev.WhichOneof("kind") == "finished":
                self.finished = True
        return out


class Reconnect:
    """Reattach policy: retry on UNAVAILABLE with capped exponential backoff, giving up when no
    progress was made for ``timeout`` seconds."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._attempt = 0
        self._since = time.monotonic()

    def progressed(self) -> None:
        self._attempt = 0
        self._since = time.monotonic()

    def next_delay(self, err: AgentdError) -> float:
        """The pause before the next attempt; re-raises ``err`` when it is not retryable or the
        budget is spent."""
        if err.code != grpc.StatusCode.UNAVAILABLE:
            raise err
        if time.monotonic() - self._since > self.timeout:
            raise err
        self._attempt += 1
        return float(min(0.05 * (2 ** (self._attempt - 1)), 2.0))


def submit_request(
    session_id: str,
    prompt: str,
    *,
    agent: str = "",
    model: str = "",
    timeout_seconds: int = 0,
    env: Mapping[str, str] | None = None,
    allowed_tools: Sequence[str] = (),
    max_turns: int = 0,
    append_system_prompt: str = "",
    permission_mode: str = "",
    request_id: str = "",
    preset: str = "",
    variables: Mapping[str, str] | None = None,
    mcp_servers: Sequence[str] = (),
    subagents: Sequence[str] = (),
    skills: Sequence[str] = (),
    allow_rules: Sequence[str] = (),
    deny_rules: Sequence[str] = (),
    permission_timeout_seconds: int = 0,
) -> job_pb2.SubmitJobRequest:
    return job_pb2.SubmitJobRequest(
        session_id=session_id,
        prompt=prompt,
        preset=preset,
        variables=dict(variables or {}),
        mcp_servers=list(mcp_servers),
        subagents=list(subagents),
        skills=list(skills),
        agent=agent,
        model=model,
        timeout_seconds=timeout_seconds,
        env=dict(env or {}),
        allowed_tools=list(allowed_tools),
        max_turns=max_turns,
        append_system_prompt=append_system_prompt,
        permission_mode=permission_mode,
        allow_rules=list(allow_rules),
        deny_rules=list(deny_rules),
        permission_timeout_seconds=permission_timeout_seconds,
        # Always set, so that retrying a RunJob/SubmitJob whose reply was lost cannot run it twice.
        request_id=request_id or f"sdk-{uuid.uuid4()}",
    )


@dataclass
class UploadEntry:
    """One file to upload: its path in the workspace and where its bytes come from."""

    path: str
    source: FileSource
    mode: int | None = None
    size: int | None = field(default=None)


def upload_entries(files: Mapping[str, FileSource]) -> list[UploadEntry]:
    out: list[UploadEntry] = []
    for remote, source in files.items():
        if isinstance(source, bytes):
            out.append(UploadEntry(remote, source, None, len(source)))
        else:
            st = os.stat(source)
            if not stat.S_ISREG(st.st_mode):
                raise InvalidArgumentError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"files[{remote!r}]: {os.fspath(source)!r} is not a regular file",
                    "NOT_A_REGULAR_FILE",
                )
            out.append(UploadEntry(remote, source, stat.S_IMODE(st.st_mode), st.st_size))
    return out


def directory_entries(local_dir: StrPath, prefix: str = "") -> list[UploadEntry]:
    """Every regular file under ``local_dir`` (symlinks and special files are skipped, never
    followed), mapped to ``prefix/relative/path`` in the workspace, in path order."""
    root = Path(local_dir)
    if not root.is_dir():
        raise InvalidArgumentError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"local_dir: {os.fspath(local_dir)!r} is not a directory",
            "NOT_A_DIRECTORY",
        )
    out: list[UploadEntry] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            full = Path(dirpath) / name
            st = full.lstat()
            if not stat.S_ISREG(st.st_mode):
                continue
            rel = full.relative_to(root).as_posix()
            remote = f"{prefix.rstrip('/')}/{rel}" if prefix else rel
            out.append(UploadEntry(remote, full, stat.S_IMODE(st.st_mode), st.st_size))
    return out


def header_request(session_id: str, entry: UploadEntry) -> file_pb2.UploadFilesRequest:
    header = file_pb2.UploadFileHeader(path=entry.path)
    if entry.mode is not None:
        header.mode = entry.mode
    if entry.size is not None:
        header.size = entry.size
    return file_pb2.UploadFilesRequest(session_id=session_id, header=header)


def iter_chunks(entry: UploadEntry) -> Generator[bytes, None, None]:
    """The entry's content in chunks of at most 1 MiB, read lazily (never the whole file)."""
    if isinstance(entry.source, bytes):
        for i in range(0, len(entry.source), CHUNK_SIZE):
            yield entry.source[i : i + CHUNK_SIZE]
        return
    with open(entry.source, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            yield chunk


def safe_local_path(dest_dir: StrPath, remote_path: str) -> Path:
    """Joins a server-given relative path under ``dest_dir``, refusing anything that would land
    outside it (absolute paths, ``..``), whatever the server sends."""
    rel = PurePosixPath(remote_path)
    if rel.is_absolute() or not rel.parts or any(p in ("..", "") for p in rel.parts):
        raise InvalidArgumentError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"path {remote_path!r} from the server is not a safe relative path",
            "INVALID_PATH",
        )
    return Path(dest_dir).joinpath(*rel.parts)


def next_outputs_request(
    req: file_pb2.GetJobOutputsRequest, page: file_pb2.GetJobOutputsResponse
) -> None:
    """Turns ``req`` into the request for the page after ``page``: of the job that page was of,
    since a session's latest succeeded job may change between pages."""
    req.job_id = page.job_id
    req.page_token = page.next_page_token


def add_outputs_page(
    out: file_pb2.GetJobOutputsResponse, page: file_pb2.GetJobOutputsResponse
) -> None:
    """Appends ``page`` to the pages gathered in ``out``."""
    out.changes.extend(page.changes)
    out.next_page_token = page.next_page_token


def output_paths(outputs: file_pb2.GetJobOutputsResponse) -> list[str]:
    """The regular files a job added or modified (deleted files have nothing to download)."""
    return [
        c.path
        for c in outputs.changes
        if c.kind in (file_pb2.CHANGE_KIND_ADDED, file_pb2.CHANGE_KIND_MODIFIED)
        and c.file.type == file_pb2.FILE_TYPE_REGULAR
    ]


def usage_request(
    group_by: int, start_seconds: int | None, end_seconds: int | None
) -> usage_pb2.GetUsageRequest:
    """A GetUsage request; unset bounds leave the range open on that side."""
    req = usage_pb2.GetUsageRequest(group_by=usage_pb2.UsageGroupBy.ValueType(group_by))
    if start_seconds is not None:
        req.start_time.seconds = start_seconds
    if end_seconds is not None:
        req.end_time.seconds = end_seconds
    return req


ArchiveFormatName = str


def snapshot_point(before: bool) -> session_pb2.SnapshotPoint.ValueType:
    """The side of a job a fork or rewind starts from."""
    return session_pb2.SNAPSHOT_POINT_BEFORE if before else session_pb2.SNAPSHOT_POINT_AFTER


def archive_format(fmt: ArchiveFormatName | int) -> file_pb2.ArchiveFormat.ValueType:
    """``"tar"``, ``"tar.gz"`` (or ``"tgz"``), ``"zip"``, or an ``ArchiveFormat`` value."""
    if isinstance(fmt, int):
        return file_pb2.ArchiveFormat.ValueType(fmt)
    names: dict[str, file_pb2.ArchiveFormat.ValueType] = {
        "tar": file_pb2.ARCHIVE_FORMAT_TAR,
        "tar.gz": file_pb2.ARCHIVE_FORMAT_TAR_GZ,
        "tgz": file_pb2.ARCHIVE_FORMAT_TAR_GZ,
        "zip": file_pb2.ARCHIVE_FORMAT_ZIP,
    }
    try:
        return names[fmt.lower()]
    except KeyError:
        raise ValueError(f"unknown archive format {fmt!r}: use tar, tar.gz or zip") from None


def archive_requests(
    session_id: str, fmt: ArchiveFormatName | int, dest: str, source: BinaryIO
) -> Generator[file_pb2.UploadArchiveRequest, None, None]:
    """The UploadArchive stream: the header, then ``source`` 1 MiB at a time."""
    yield file_pb2.UploadArchiveRequest(
        session_id=session_id,
        header=file_pb2.UploadArchiveHeader(format=archive_format(fmt), dest=dest),
    )
    while chunk := source.read(CHUNK_SIZE):
        yield file_pb2.UploadArchiveRequest(chunk=chunk)


def preset(name: str, **fields: Any) -> preset_pb2.Preset:
    """A Preset message: ``name`` plus any Preset field (prompt_template, agent, model,
    overridable, mcp_servers, subagents, skills, env, timeout_seconds, …)."""
    return preset_pb2.Preset(name=name, **fields)


# What an ``on_permission`` callback returns: True allows; False denies; a string denies and tells
# the agent why; None leaves the request to another watcher or to its timeout (denied).
PermissionAnswer = bool | str | None


def respond_request(
    job_id: str, request: job_pb2.PermissionRequest, answer: PermissionAnswer
) -> job_pb2.RespondToPermissionRequest | None:
    """The RespondToPermission call for a callback's answer, or None when it leaves the request."""
    if answer is None:
        return None
    if isinstance(answer, bool):
        return job_pb2.RespondToPermissionRequest(
            job_id=job_id, request_id=request.request_id, allow=answer
        )
    return job_pb2.RespondToPermissionRequest(
        job_id=job_id, request_id=request.request_id, allow=False, message=answer
    )


# Another watcher, a rule or the timeout decided first: not the caller's failure.
ALREADY_DECIDED = "PERMISSION_DECIDED"
