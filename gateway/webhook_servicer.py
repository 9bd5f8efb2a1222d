"""WebhookService: the caller's webhook endpoints and deliveries. Thin: messages in,
``Webhooks`` calls, messages out (``gateway.webhooks``)."""

from __future__ import annotations

import logging
from typing import Any

import grpc

from gateway.auth import current_owner
from gateway.store import page_size
from gateway.webhooks.endpoints import Webhooks
from reelmill.v1 import webhook_service_pb2 as pb
from reelmill.v1 import webhook_service_pb2_grpc
from runtime.errors import InvalidArgument

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["WebhookService"].full_name


class WebhookServicer(webhook_service_pb2_grpc.WebhookServiceServicer):
    def __init__(self, webhooks: Webhooks) -> None:
        self.webhooks = webhooks

    async def CreateWebhookEndpoint(
        self, request: pb.CreateWebhookEndpointRequest, context: Context
    ) -> pb.CreateWebhookEndpointResponse:
        endpoint, secret = await self.webhooks.create(
            current_owner(), request.url, list(request.event_types), request.description
        )
        log.info("webhook endpoint created", extra={"endpoint_id": endpoint.id})
        return pb.CreateWebhookEndpointResponse(endpoint=endpoint, secret=secret)

    async def ListWebhookEndpoints(
        self, request: pb.ListWebhookEndpointsRequest, context: Context
    ) -> pb.ListWebhookEndpointsResponse:
        endpoints, token = await self.webhooks.list_endpoints(
            current_owner(), page_size(request.page_size), request.page_token
        )
        return pb.ListWebhookEndpointsResponse(endpoints=endpoints, next_page_token=token)

    async def DeleteWebhookEndpoint(
        self, request: pb.DeleteWebhookEndpointRequest, context: Context
    ) -> pb.DeleteWebhookEndpointResponse:
        dropped = await self.webhooks.delete(current_owner(), request.endpoint_id)
        return pb.DeleteWebhookEndpointResponse(dropped_deliveries=dropped)

    async def RotateWebhookSecret(
        self, request: pb.RotateWebhookSecretRequest, context: Context
    ) -> pb.RotateWebhookSecretResponse:
        overlap = None
        if request.HasField("overlap"):
            if request.overlap.seconds < 0 or request.overlap.nanos < 0:
                raise InvalidArgument("overlap must not be negative", reason="BAD_OVERLAP")
            overlap = request.overlap.ToTimedelta()
        endpoint, secret = await self.webhooks.rotate(current_owner(), request.endpoint_id, overlap)
        return pb.RotateWebhookSecretResponse(endpoint=endpoint, secret=secret)

    async def ListWebhookDeliveries(
        self, request: pb.ListWebhookDeliveriesRequest, context: Context
    ) -> pb.ListWebhookDeliveriesResponse:
        states = []
        for state in request.states:
            if state == pb.WEBHOOK_DELIVERY_STATE_UNSPECIFIED or state not in (
                pb.WebhookDeliveryState.values()
            ):
                raise InvalidArgument(
                    "states must name delivery states (not UNSPECIFIED)", reason="BAD_FILTER"
                )
            states.append(
                pb.WebhookDeliveryState.Name(state).removeprefix("WEBHOOK_DELIVERY_STATE_")
            )
        deliveries, token = await self.webhooks.list_deliveries(
            current_owner(),
            endpoint_id=request.endpoint_id,
            size=page_size(request.page_size),
            token=request.page_token,
            states=states,
            job_id=request.job_id,
        )
        return pb.ListWebhookDeliveriesResponse(deliveries=deliveries, next_page_token=token)

    async def RedeliverWebhook(
        self, request: pb.RedeliverWebhookRequest, context: Context
    ) -> pb.RedeliverWebhookResponse:
        delivery = await self.webhooks.redeliver(current_owner(), request.delivery_id)
        log.info("webhook redelivery requested", extra={"webhook_id": delivery.id})
        return pb.RedeliverWebhookResponse(delivery=delivery)
