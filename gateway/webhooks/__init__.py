"""Webhooks: endpoints an owner registers, and the job events delivered to them.

- ``events``: which job events are webhook events, by name (``job.succeeded`` …);
- ``outbox``: in the event's own transaction, one delivery row per matching endpoint
  (``gateway.journal.append_event`` calls it), so no event is lost or invented by a crash;
- ``secrets``: the signing secrets, sealed at rest;
- ``endpoints``: create, list, delete, rotate; deliveries listed and redelivered;
- ``delivery``: the worker every gateway runs — claims due deliveries with
  ``FOR UPDATE SKIP LOCKED``, POSTs them signed (``reelmill.webhooks``) through the SSRF guard,
  and retries on the schedule or gives up.
"""
