"""ApiKeyService: the caller's API keys. Thin: messages in, ``ApiKeys`` calls, messages out.

Only a caller authenticated with a JWT may create keys (PERMISSION_DENIED with an API key:
a leaked key must not be able to mint more keys that outlive its revocation). Any caller may
list its owner's keys and revoke one (a program can revoke its own key).
"""

from __future__ import annotations

import logging
from typing import Any

import grpc

from gateway.api_keys import ApiKeys, validate_display_name
from gateway.auth import current_owner, current_principal
from gateway.store import page_size
from reelmill.v1 import api_key_service_pb2, api_key_service_pb2_grpc
from runtime.errors import PermissionDenied

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]

SERVICE_NAME = api_key_service_pb2.DESCRIPTOR.services_by_name["ApiKeyService"].full_name


class ApiKeyServicer(api_key_service_pb2_grpc.ApiKeyServiceServicer):
    def __init__(self, keys: ApiKeys) -> None:
        self.keys = keys

    async def CreateApiKey(
        self, request: api_key_service_pb2.CreateApiKeyRequest, context: Context
    ) -> api_key_service_pb2.CreateApiKeyResponse:
        principal = current_principal()
        if principal.method != "jwt":
            raise PermissionDenied(
                "API keys cannot create API keys; authenticate with a bearer JWT",
                reason="API_KEY_CANNOT_CREATE_KEYS",
            )
        key, secret = await self.keys.create(
            principal.owner, validate_display_name(request.display_name)
        )
        log.info("API key created", extra={"api_key_id": key.id})
        return api_key_service_pb2.CreateApiKeyResponse(api_key=key, secret=secret)

    async def ListApiKeys(
        self, request: api_key_service_pb2.ListApiKeysRequest, context: Context
    ) -> api_key_service_pb2.ListApiKeysResponse:
        keys, token = await self.keys.list(
            current_owner(), page_size(request.page_size), request.page_token
        )
        return api_key_service_pb2.ListApiKeysResponse(api_keys=keys, next_page_token=token)

    async def RevokeApiKey(
        self, request: api_key_service_pb2.RevokeApiKeyRequest, context: Context
    ) -> api_key_service_pb2.RevokeApiKeyResponse:
        key = await self.keys.revoke(current_owner(), request.api_key_id)
        return api_key_service_pb2.RevokeApiKeyResponse(api_key=key)
