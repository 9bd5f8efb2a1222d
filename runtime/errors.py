"""The one domain error tree, and its one mapping to gRPC.

    ReelmillError                 INTERNAL (message replaced by a generic one on the wire)
    ├── InvalidArgument           INVALID_ARGUMENT
    ├── NotFound                  NOT_FOUND
    ├── AlreadyExists             ALREADY_EXISTS
    ├── FailedPrecondition        FAILED_PRECONDITION
    ├── OutOfRange                OUT_OF_RANGE
    ├── Aborted                   ABORTED
    ├── PermissionDenied          PERMISSION_DENIED
    ├── Unauthenticated           UNAUTHENTICATED
    ├── ResourceExhausted         RESOURCE_EXHAUSTED
    ├── Cancelled                 CANCELLED
    ├── DeadlineExceeded          DEADLINE_EXCEEDED
    ├── Unavailable               UNAVAILABLE
    ├── Unimplemented             UNIMPLEMENTED
    └── Internal                  INTERNAL

Every error carries a machine-readable ``reason`` (sent as ``google.rpc.ErrorInfo``) and a
message meant for the caller; one that knows when a retry may succeed also carries
``retry_after`` seconds (sent as ``google.rpc.RetryInfo``). Code raises these;
``ErrorMappingInterceptor`` turns them into statuses, so no servicer handles gRPC codes
itself. Anything else that escapes a handler is logged with its traceback and reaches the
caller as INTERNAL with a generic message, unless a translation registered by the process
(``register_translation``) names it.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, ClassVar

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from reelmill.status import error_info as error_info  # re-exported for the servers
from reelmill.status import retry_after

DOMAIN = "reelmill.dev"

log = logging.getLogger(__name__)


class ReelmillError(Exception):
    """Base of every error reelmill raises on purpose."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    default_reason: ClassVar[str] = "INTERNAL"
    #: Whether a retry of the same call may succeed.
    transient: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})
        #: Seconds after which a retry may succeed (RESOURCE_EXHAUSTED, UNAVAILABLE).
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason}: {self.message})"


class InvalidArgument(ReelmillError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"


class NotFound(ReelmillError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(ReelmillError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(ReelmillError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class OutOfRange(ReelmillError):
    """Past the valid range (bytes beyond an upload's declared size)."""

    code = grpc.StatusCode.OUT_OF_RANGE
    default_reason = "OUT_OF_RANGE"


class Aborted(ReelmillError):
    """Lost to a concurrent operation on the same resource (another write took it over)."""

    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"


class PermissionDenied(ReelmillError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class Unauthenticated(ReelmillError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class ResourceExhausted(ReelmillError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"
    transient = True


class Cancelled(ReelmillError):
    code = grpc.StatusCode.CANCELLED
    default_reason = "CANCELLED"


class DeadlineExceeded(ReelmillError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"
    transient = True


class Unavailable(ReelmillError):
    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"
    transient = True


class Unimplemented(ReelmillError):
    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "UNIMPLEMENTED"


class Internal(ReelmillError):
    code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"


_BY_CODE: dict[grpc.StatusCode, type[ReelmillError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        OutOfRange,
        Aborted,
        PermissionDenied,
        Unauthenticated,
        ResourceExhausted,
        Cancelled,
        DeadlineExceeded,
        Unavailable,
        Unimplemented,
        Internal,
    )
}

GENERIC_INTERNAL_MESSAGE = "internal error; the server logged the details"


def to_status(error: ReelmillError) -> grpc.Status:
    """The ``grpc.Status`` (with an ``ErrorInfo`` detail, and a ``RetryInfo`` one when the error
    has ``retry_after``) that represents ``error``."""
    message = error.message
    if type(error) in (ReelmillError, Internal):
        message = GENERIC_INTERNAL_MESSAGE
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
    details = [any_pb2.Any()]
    details[0].Pack(info)
    if error.retry_after is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromNanoseconds(int(max(error.retry_after, 0.0) * 1e9))
        details.append(any_pb2.Any())
        details[1].Pack(retry)
    status = status_pb2.Status(code=error.code.value[0], message=message, details=details)
    result: grpc.Status = rpc_status.to_status(status)
    return result


def from_rpc_error(rpc_error: grpc.aio.AioRpcError) -> ReelmillError:
    """The domain error for a failed downstream call, keeping its code, reason, message and
    retry delay."""
    cls = _BY_CODE.get(rpc_error.code(), Internal)
    info = error_info(rpc_error)
    if info is None and rpc_error.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        # reelmill servers always attach ErrorInfo; without it the failure came from the
        # transport (the peer died mid-call, a stream was reset), which a retry may outlive.
        return Unavailable(
            f"the call failed in transport: {rpc_error.details() or rpc_error.code().name}",
            reason="TRANSPORT_FAILURE",
        )
    reason = info.reason if info is not None else None
    metadata = dict(info.metadata) if info is not None else None
    return cls(
        rpc_error.details() or cls.default_reason,
        reason=reason,
        metadata=metadata,
        retry_after=retry_after(rpc_error),
    )


#: Functions that name a process's own dependency failures as domain errors.
_translations: list[Callable[[BaseException], ReelmillError | None]] = []


def register_translation(translate: Callable[[BaseException], ReelmillError | None]) -> None:
    """Lets a process map exceptions of its own dependencies to domain errors instead of
    INTERNAL: the gateway's unreachable database becomes UNAVAILABLE, which callers retry.
    ``translate`` returns None for exceptions it does not know. Called once at start."""
    if translate not in _translations:
        _translations.append(translate)


def _translated(exc: BaseException) -> ReelmillError | None:
    for translate in _translations:
        if (error := translate(exc)) is not None:
            return error
    return None


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
    if not isinstance(exc, ReelmillError) and (translated := _translated(exc)) is not None:
        log.warning("%s (%s: %s)", translated.message, type(exc).__name__, exc)
        exc = translated
    if isinstance(exc, ReelmillError):
        error = exc
        if type(error) in (ReelmillError, Internal):
            log.error("internal error: %s", error.message, exc_info=error)
    else:
        log.exception("unhandled error in handler", exc_info=exc)
        error = Internal(GENERIC_INTERNAL_MESSAGE)
    status = to_status(error)
    await context.abort(status.code, status.details, status.trailing_metadata)


Handler = Callable[..., Any]


def _wrap_unary(behavior: Handler) -> Handler:
    async def wrapper(request_or_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await behavior(request_or_iterator, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc)

    return wrapper


def _wrap_stream(behavior: Handler) -> Handler:
    async def wrapper(
        request_or_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        try:
            responses = behavior(request_or_iterator, context)
            if inspect.isawaitable(responses):
                await responses  # a handler that writes with context.write (health Watch)
            else:
                async for response in responses:
                    yield response
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc)

    return wrapper


def wrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any],
    unary: Callable[[Handler], Handler],
    stream: Callable[[Handler], Handler],
) -> grpc.RpcMethodHandler[Any, Any]:
    """The same handler with its behaviour wrapped: ``unary`` for unary responses, ``stream``
    for streaming ones."""
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            unary(handler.unary_unary), handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            unary(handler.stream_unary), handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            stream(handler.unary_stream), handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(
            stream(handler.stream_stream),
            handler.request_deserializer,
            handler.response_serializer,
        )
    return handler


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Maps exceptions escaping any handler to statuses, in one place."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return wrap_handler(handler, _wrap_unary, _wrap_stream)
