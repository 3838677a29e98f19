"""The SDK's one error hierarchy: every failed call raises an :class:`AgentdError` subclass chosen by
the gRPC status code, carrying the stable ``reason`` from the server's ``google.rpc.ErrorInfo``
(switch on ``reason``, never on the message text).

The rich status travels in the ``grpc-status-details-bin`` trailer as a serialized
``google.rpc.Status``. Only three tiny messages of it are needed, so they are declared here in a
private descriptor pool rather than pulling in googleapis-common-protos (whose protobuf bounds
would then constrain ours, and whose descriptors would clash if registered twice).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

ERROR_DOMAIN = "agentd"
_STATUS_DETAILS_KEY = "grpc-status-details-bin"
_ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"


def _build_rpc_types() -> tuple[Any, Any]:
    f = descriptor_pb2.FileDescriptorProto(
        name="agentd_sdk/google_rpc_subset.proto", package="google.rpc", syntax="proto3"
    )
    lbl_opt = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    lbl_rep = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    t_str = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
    t_bytes = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
    t_int = descriptor_pb2.FieldDescriptorProto.TYPE_INT32
    t_msg = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE

    # Same wire format as google.protobuf.Any; declared locally to stay self-contained.
    any_ = f.message_type.add(name="AnyLike")
    any_.field.add(name="type_url", number=1, label=lbl_opt, type=t_str)
    any_.field.add(name="value", number=2, label=lbl_opt, type=t_bytes)

    status = f.message_type.add(name="Status")
    status.field.add(name="code", number=1, label=lbl_opt, type=t_int)
    status.field.add(name="message", number=2, label=lbl_opt, type=t_str)
    status.field.add(
        name="details", number=3, label=lbl_rep, type=t_msg, type_name=".google.rpc.AnyLike"
    )

    info = f.message_type.add(name="ErrorInfo")
    info.field.add(name="reason", number=1, label=lbl_opt, type=t_str)
    info.field.add(name="domain", number=2, label=lbl_opt, type=t_str)
    entry = info.nested_type.add(name="MetadataEntry")
    entry.field.add(name="key", number=1, label=lbl_opt, type=t_str)
    entry.field.add(name="value", number=2, label=lbl_opt, type=t_str)
    entry.options.map_entry = True
    info.field.add(
        name="metadata",
        number=3,
        label=lbl_rep,
        type=t_msg,
        type_name=".google.rpc.ErrorInfo.MetadataEntry",
    )

    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    status_cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("google.rpc.Status"))
    info_cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("google.rpc.ErrorInfo"))
    return status_cls, info_cls


_Status, _ErrorInfo = _build_rpc_types()


class AgentdError(Exception):
    """A call to agentd failed.

    Attributes:
        code: the gRPC status code.
        reason: the stable machine-readable cause from ``ErrorInfo`` (e.g. ``"JOB_NOT_FOUND"``),
            or ``""`` when the server (or a proxy, or the transport) sent none.
        message: the server's human-readable message.
        domain: the ``ErrorInfo`` domain (``"agentd"`` for agentd's own errors).
        metadata: the ``ErrorInfo`` metadata (e.g. the offending ``field``).
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}" + (f" [{reason}]" if reason else ""))
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgumentError(AgentdError):
    """The request was malformed (INVALID_ARGUMENT)."""


class NotFoundError(AgentdError):
    """The session, job or file does not exist for this caller (NOT_FOUND)."""


class AlreadyExistsError(AgentdError):
    """An idempotency key was reused with a different request (ALREADY_EXISTS)."""


class FailedPreconditionError(AgentdError):
    """The target is in a state that does not allow the operation (FAILED_PRECONDITION)."""


class ResourceExhaustedError(AgentdError):
    """A limit was hit (RESOURCE_EXHAUSTED)."""


class OutOfRangeError(AgentdError):
    """An offset or cursor is out of range (OUT_OF_RANGE)."""


class UnauthenticatedError(AgentdError):
    """The API key is missing or invalid (UNAUTHENTICATED)."""


class PermissionDeniedError(AgentdError):
    """The caller may not do this (PERMISSION_DENIED)."""


class UnavailableError(AgentdError):
    """The server could not be reached or is shutting down (UNAVAILABLE)."""


class DeadlineExceededError(AgentdError):
    """The call's deadline passed (DEADLINE_EXCEEDED)."""


class CancelledError(AgentdError):
    """The call was cancelled on the client side (CANCELLED)."""


class InternalError(AgentdError):
    """The server failed (INTERNAL, UNKNOWN, DATA_LOSS, UNIMPLEMENTED, ...)."""


_BY_CODE: dict[grpc.StatusCode, type[AgentdError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRangeError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: CancelledError,
}


def _error_info(trailers: Iterable[tuple[str, str | bytes]] | None) -> tuple[str, str, dict[str, str]]:
    for key, value in trailers or ():
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = _Status.FromString(value)
            for detail in status.details:
                if detail.type_url == _ERROR_INFO_TYPE:
                    info = _ErrorInfo.FromString(detail.value)
                    return str(info.reason), str(info.domain), dict(info.metadata)
        except Exception:  # noqa: BLE001 - a malformed trailer must not hide the real error
            return "", "", {}
    return "", "", {}


def from_rpc_error(err: grpc.RpcError) -> AgentdError:
    """Converts a grpcio error (sync or ``grpc.aio``) into the matching :class:`AgentdError`."""
    code_fn = getattr(err, "code", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    details_fn = getattr(err, "details", None)
    message = details_fn() if callable(details_fn) else str(err)
    trailers_fn = getattr(err, "trailing_metadata", None)
    trailers = trailers_fn() if callable(trailers_fn) else None
    reason, domain, metadata = _error_info(trailers)
    cls = _BY_CODE.get(code, InternalError)
    return cls(code, str(message or ""), reason, domain, metadata)
