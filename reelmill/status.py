"""What a failed reelmill call says beyond its code: the ``google.rpc`` details of its status.

Shared by the client (which imports no server code) and the servers' error mapping.
"""

from __future__ import annotations

from typing import TypeVar

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

M = TypeVar("M", bound=Message)


def status_detail(error: grpc.RpcError, kind: type[M]) -> M | None:
    """The first detail of type ``kind`` in a failed call's status, if any."""
    status = rpc_status.from_call(error)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):
            found = kind()
            detail.Unpack(found)
            return found
    return None


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ``ErrorInfo`` a failed call carried, if any."""
    return status_detail(error, error_details_pb2.ErrorInfo)


def error_reason(error: grpc.RpcError) -> str:
    """The machine-readable reason (``ErrorInfo.reason``) of a failed call, or ""."""
    info = error_info(error)
    return info.reason if info is not None else ""


def retry_after(error: grpc.RpcError) -> float | None:
    """Seconds the server asked the caller to wait before retrying (its ``RetryInfo``)."""
    info = status_detail(error, error_details_pb2.RetryInfo)
    return info.retry_delay.ToNanoseconds() / 1e9 if info is not None else None
