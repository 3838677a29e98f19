"""Python client for agentd, which runs CLI coding agents (Claude Code, …) in isolated sessions
and streams what they do.

``agentd.Client`` (blocking) and ``agentd.AsyncClient`` (asyncio) wrap the generated gRPC code in
``agentd.v1``; every failure is an ``agentd.AgentdError`` carrying the gRPC ``code`` and the
server's stable ``reason``. ``agentd.verify_webhook`` checks the signed webhooks agentd sends.
"""

from agentd._aio import AsyncClient, AsyncRun
from agentd._client import Client, Run
from agentd._common import CHUNK_SIZE, FINAL_STATES, PermissionAnswer
from agentd._deltas import atext_deltas, text_deltas
from agentd._errors import (
    ERROR_DOMAIN,
    AgentdError,
    AlreadyExistsError,
    CancelledError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    from_rpc_error,
)
from agentd._webhooks import WebhookVerificationError, sign_webhook, verify_webhook
from agentd.v1.file_pb2 import FileChange, FileInfo
from agentd.v1.job_pb2 import Job, JobEvent, JobState
from agentd.v1.session_pb2 import Session

__all__ = [
    "CHUNK_SIZE",
    "ERROR_DOMAIN",
    "FINAL_STATES",
    "PermissionAnswer",
    "AgentdError",
    "AlreadyExistsError",
    "AsyncClient",
    "AsyncRun",
    "CancelledError",
    "Client",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "FileChange",
    "FileInfo",
    "InternalError",
    "InvalidArgumentError",
    "Job",
    "JobEvent",
    "JobState",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "Run",
    "Session",
    "UnauthenticatedError",
    "UnavailableError",
    "WebhookVerificationError",
    "atext_deltas",
    "from_rpc_error",
    "sign_webhook",
    "text_deltas",
    "verify_webhook",
]

__version__ = "0.1.0"
