// The whole flow through the generated client, as a Node caller writes it: upload
// (client-streaming UploadVideo), create a job, WatchJob to the end, GetJob, DownloadArtifact,
// and a refused call's reason from its error details. Over native gRPC (HTTP/2) to the
// gateway, with @connectrpc/connect-node's gRPC transport. It imports the package by its own
// name, so it runs what a consumer gets (dist/, built by `npm ci`).
//
// node .test-build/flow.js GATEWAY CLIP      (REELMILL_TOKEN in the environment)
//
// Prints one JSON object per line (bigints as strings); tests/test_typescript_client.py
// reads them. Exits 1 on any unexpected failure.

import { createHash, randomUUID } from "node:crypto";
import { createReadStream, statSync } from "node:fs";
import { basename } from "node:path";

import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import {
  ArtifactKind,
  bearerToken,
  createReelmillClients,
  ERROR_DOMAIN,
  ErrorReason,
  errorInfo,
  errorReason,
  JobState,
  StageState,
  UploadVideoRequestSchema,
} from "@reelmill/client";

function print(record: Record<string, unknown>): void {
  console.log(JSON.stringify(record, (_, value) => (typeof value === "bigint" ? value.toString() : value)));
}

async function* uploadRequests(path: string): AsyncGenerator<
  MessageInitShape<typeof UploadVideoRequestSchema>
> {
  const size = statSync(path).size;
  yield {
    part: {
      case: "header",
      value: { filename: basename(path), contentType: "video/mp4", sizeBytes: BigInt(size) },
    },
  };
  for await (const chunk of createReadStream(path, { highWaterMark: 256 * 1024 })) {
    yield { part: { case: "chunk", value: chunk as Buffer } };
  }
}

async function main(): Promise<void> {
  const [gateway, clip] = process.argv.slice(2);
  const token = process.env.REELMILL_TOKEN;
  if (!gateway || !clip || !token) {
    throw new Error("usage: REELMILL_TOKEN=… node flow.js HOST:PORT CLIP");
  }
  const transport = createGrpcTransport({
    baseUrl: `http://${gateway}`,
    interceptors: [bearerToken(token)],
  });
  const { jobs } = createReelmillClients(transport);

  const { video } = await jobs.uploadVideo(uploadRequests(clip), { timeoutMs: 60_000 });
  if (!video) throw new Error("UploadVideo returned no video");
  print({
    step: "uploaded",
    videoId: video.id,
    sizeBytes: video.sizeBytes,
    sha256: video.sha256,
    width: video.mediaInfo?.videoStreams[0]?.width,
  });

  const { job: created } = await jobs.createJob(
    {
      source: { case: "videoId", value: video.id },
      labels: { via: "typescript" },
      spec: {
        transcode: { ladder: [{ height: 120 }], preset: "ultrafast", hls: false },
        audio: { disabled: true },
        scenes: { disabled: true },
      },
    },
    { timeoutMs: 30_000 },
  );
  if (!created) throw new Error("CreateJob returned no job");
  print({ step: "created", jobId: created.id, state: JobState[created.state] });

  const sequences: bigint[] = [];
  let finalState = "";
  for await (const { event } of jobs.watchJob({ jobId: created.id }, { timeoutMs: 240_000 })) {
    if (!event) throw new Error("WatchJob sent a response without an event");
    sequences.push(event.sequence);
    if (event.job) finalState = JobState[event.job.state] ?? "";
    print({ step: "event", sequence: event.sequence, payload: event.payload.case ?? "" });
  }
  print({ step: "watched", sequences, finalState });

  const { job } = await jobs.getJob({ jobId: created.id });
  if (!job) throw new Error("GetJob returned no job");
  print({
    step: "got",
    state: JobState[job.state],
    stages: Object.fromEntries(job.stages.map((s) => [s.name, StageState[s.state]])),
    artifacts: job.artifacts.map((a) => ({
      name: a.name,
      kind: ArtifactKind[a.kind],
      sizeBytes: a.sizeBytes,
      sha256: a.sha256,
    })),
  });

  const rendition = job.artifacts.find((a) => a.kind === ArtifactKind.RENDITION_MP4);
  if (!rendition) throw new Error("no rendition among the artifacts");
  const digest = createHash("sha256");
  let announced = "";
  let bytes = 0;
  for await (const response of jobs.downloadArtifact({ jobId: job.id, artifactName: rendition.name })) {
    if (response.part.case === "artifact") {
      announced = response.part.value.sha256;
    } else if (response.part.case === "chunk") {
      digest.update(response.part.value);
      bytes += response.part.value.length;
    }
  }
  print({ step: "downloaded", name: rendition.name, bytes, sha256: digest.digest("hex"), announced });

  const unknown = randomUUID();
  try {
    await jobs.getJob({ jobId: unknown });
    print({ step: "error", refused: false });
  } catch (error) {
    const refused = ConnectError.from(error);
    const info = errorInfo(error);
    print({
      step: "error",
      refused: true,
      code: Code[refused.code],
      message: refused.rawMessage,
      reason: info?.reason,
      domain: info?.domain,
      isReelmill: info?.domain === ERROR_DOMAIN,
      reasonEnum: ErrorReason[errorReason(error)],
      isJobNotFound: errorReason(error) === ErrorReason.JOB_NOT_FOUND,
    });
  }
}

main().catch((error: unknown) => {
  const refused = ConnectError.from(error);
  print({ step: "failed", code: Code[refused.code], message: refused.message, reason: errorInfo(error)?.reason });
  process.exitCode = 1;
});
