// @reelmill/client: reelmill's public API for TypeScript, generated from protos/ (src/gen,
// by scripts/gen_protos.py with buf and protoc-gen-es; never edit it) plus the few helpers
// below. It runs on any @connectrpc/connect transport: in Node, @connectrpc/connect-node's
// createGrpcTransport speaks native gRPC (HTTP/2) to the gateway's port.
//
//   import { createGrpcTransport } from "@connectrpc/connect-node";
//   import { bearerToken, createReelmillClients, errorReason, ErrorReason } from "@reelmill/client";
//
//   const transport = createGrpcTransport({
//     baseUrl: "http://127.0.0.1:50051",
//     interceptors: [bearerToken(process.env.REELMILL_TOKEN!)],
//   });
//   const { jobs } = createReelmillClients(transport);
//   const { job } = await jobs.getJob({ jobId });
//
// Messages are plain objects with camelCase fields (`jobId`, `sizeBytes`); int64 fields are
// bigint; enums are TypeScript enums (`JobState.SUCCEEDED`).

import {
  type Client,
  ConnectError,
  createClient,
  type Interceptor,
  type Transport,
} from "@connectrpc/connect";

import {
  type ErrorInfo,
  ErrorInfoSchema,
  type RetryInfo,
  RetryInfoSchema,
} from "./gen/google/rpc/error_details_pb.js";
import { ApiKeyService } from "./gen/reelmill/v1/api_key_service_pb.js";
import { ErrorReason } from "./gen/reelmill/v1/error_reason_pb.js";
import { JobService } from "./gen/reelmill/v1/job_service_pb.js";
import { WebhookService } from "./gen/reelmill/v1/webhook_service_pb.js";

export * from "./gen/reelmill/v1/api_key_service_pb.js";
export * from "./gen/reelmill/v1/error_reason_pb.js";
export * from "./gen/reelmill/v1/job_pb.js";
export * from "./gen/reelmill/v1/job_service_pb.js";
export * from "./gen/reelmill/v1/media_pb.js";
export * from "./gen/reelmill/v1/pipeline_pb.js";
export * from "./gen/reelmill/v1/upload_pb.js";
export * from "./gen/reelmill/v1/vision_pb.js";
export * from "./gen/reelmill/v1/webhook_service_pb.js";
// google.rpc, as the API sends it: a failed call's status (the grpc-status-details-bin
// trailer, which connect decodes into ConnectError.details) holds an ErrorInfo, and a
// RetryInfo when a retry may succeed later.
export {
  type ErrorInfo,
  ErrorInfoSchema,
  type RetryInfo,
  RetryInfoSchema,
} from "./gen/google/rpc/error_details_pb.js";
export { type Status, StatusSchema } from "./gen/google/rpc/status_pb.js";
export { Code as RpcCode } from "./gen/google/rpc/code_pb.js";

/** The ErrorInfo domain of every reelmill error. */
export const ERROR_DOMAIN = "reelmill.dev";

/** A client per public service, on one transport. */
export interface ReelmillClients {
  jobs: Client<typeof JobService>;
  apiKeys: Client<typeof ApiKeyService>;
  webhooks: Client<typeof WebhookService>;
}

export function createReelmillClients(transport: Transport): ReelmillClients {
  return {
    jobs: createClient(JobService, transport),
    apiKeys: createClient(ApiKeyService, transport),
    webhooks: createClient(WebhookService, transport),
  };
}

/** Sends `authorization: Bearer <token>` on every call: a JWT or an API key (`rk_…`). */
export function bearerToken(token: string): Interceptor {
  return (next) => async (request) => {
    request.header.set("authorization", `Bearer ${token}`);
    return next(request);
  };
}

/** The `google.rpc.ErrorInfo` a failed call carried (every reelmill error has one). */
export function errorInfo(error: unknown): ErrorInfo | undefined {
  return ConnectError.from(error).findDetails(ErrorInfoSchema)[0];
}

/**
 * The failed call's reason as an `ErrorReason`: `ErrorReason.JOB_NOT_FOUND`, …;
 * `ERROR_REASON_UNSPECIFIED` when it carried none, or one this client was built without
 * (a newer server's: the status code still says what kind of failure it is). The string
 * itself is `errorInfo(error)?.reason`.
 */
export function errorReason(error: unknown): ErrorReason {
  const reason = errorInfo(error)?.reason ?? "";
  const value = (ErrorReason as unknown as Record<string, ErrorReason | undefined>)[reason];
  return typeof value === "number" ? value : ErrorReason.ERROR_REASON_UNSPECIFIED;
}

/** Milliseconds the server asked the caller to wait before retrying (its `RetryInfo`). */
export function retryDelayMs(error: unknown): number | undefined {
  const info: RetryInfo | undefined = ConnectError.from(error).findDetails(RetryInfoSchema)[0];
  const delay = info?.retryDelay;
  if (delay === undefined) {
    return undefined;
  }
  return Number(delay.seconds) * 1000 + delay.nanos / 1e6;
}
