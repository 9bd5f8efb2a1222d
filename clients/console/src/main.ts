// reelmill's web console: one page over the gateway's browser port, built with esbuild from
// the generated TypeScript client (clients/typescript/src) and @connectrpc/connect-web's
// Connect transport. Served as static files by the gateway itself, so calls are same-origin.
import { fromJson } from "@bufbuild/protobuf";
import { ConnectError } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import Hls from "hls.js";

import {
  type Artifact,
  bearerToken,
  createReelmillClients,
  ErrorReason,
  errorReason,
  type Job,
  JobState,
  JobView,
  PipelineSpecSchema,
  type ReelmillClients,
  StageState,
} from "../../typescript/src/index.js";

const TOKEN_KEY = "reelmill.token";
const SPEC_KEY = "reelmill.spec";
const TERMINAL = new Set([JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED]);

/** The gateway's browser port: this page's origin, or a `<meta name="reelmill-api">`'s content
 * when the console is served from another host (whose origin is then in REELMILL_CORS_ORIGINS). */
const API = (document.querySelector('meta[name="reelmill-api"]') as HTMLMetaElement | null)?.content || location.origin;
const app = document.getElementById("app") as HTMLElement;
let clients: ReelmillClients | null = null;
let token = localStorage.getItem(TOKEN_KEY) ?? "";
/** Streams to stop when the page changes. */
let watches: AbortController[] = [];
let player: Hls | null = null;

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

/** A failed call as a person reads it: the reason (JOB_NOT_FOUND), then the message. */
export function describe(error: unknown): string {
  const reason = ErrorReason[errorReason(error)];
  const connect = ConnectError.from(error);
  return `${reason && reason !== "ERROR_REASON_UNSPECIFIED" ? reason + ": " : ""}${connect.rawMessage}`;
}

function connectClients(secret: string): ReelmillClients {
  const transport = createConnectTransport({
    baseUrl: API,
    useBinaryFormat: true,
    interceptors: [bearerToken(secret)],
  });
  return createReelmillClients(transport);
}

function stateName(state: JobState): string {
  return `JOB_STATE_${JobState[state]}`;
}

function seconds(value: number): string {
  const m = Math.floor(value / 60);
  const s = Math.floor(value % 60);
  return `${m}:${String(s).padStart(2, "0")}`;
}

function stopPage(): void {
  for (const watch of watches) {
    watch.abort();
  }
  watches = [];
  if (player) {
    player.destroy();
    player = null;
  }
}

// -- sign in ----------------------------------------------------------------------------------

function signIn(message = ""): void {
  stopPage();
  (document.getElementById("signout") as HTMLElement).hidden = true;
  const input = el("input", { type: "password", id: "token", placeholder: "JWT or API key (rk_…)" });
  const error = el("p", { id: "signin-error", class: "error" }, message);
  const button = el("button", { id: "signin" }, "Sign in");
  const form = el("form", { class: "card" }, el("h2", {}, "Sign in"), input, el("p"), button, error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const candidate = input.value.trim();
    try {
      await connectClients(candidate).jobs.listJobs({ pageSize: 1 });
    } catch (failure) {
      error.textContent = describe(failure);
      return;
    }
    token = candidate;
    localStorage.setItem(TOKEN_KEY, token);
    route();
  });
  app.replaceChildren(form);
}

// -- uploads ----------------------------------------------------------------------------------

/** PUT the bytes of one slice; resolves with the committed size. */
function put(
  uploadId: string,
  offset: number,
  body: Blob,
  progress: (loaded: number) => void,
): Promise<number> {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("PUT", `${API}/uploads/${encodeURIComponent(uploadId)}?offset=${offset}`);
    request.setRequestHeader("authorization", `Bearer ${token}`);
    request.setRequestHeader("content-type", "application/octet-stream");
    request.upload.onprogress = (event) => progress(event.loaded);
    request.onerror = () => reject(new Error("the upload connection failed"));
    request.onload = () => {
      let answer: { committedSize?: string; code?: string; message?: string } = {};
      try {
        answer = JSON.parse(request.responseText);
      } catch {
        // not JSON: reported below
      }
      if (request.status === 200 && answer.committedSize !== undefined) {
        resolve(Number(answer.committedSize));
      } else {
        reject(new Error(`${answer.code ?? request.status}: ${answer.message ?? request.responseText}`));
      }
    };
    request.send(body);
  });
}

async function uploadFile(file: File, bar: HTMLProgressElement, status: HTMLElement): Promise<void> {
  if (!clients) return;
  const { jobs } = clients;
  status.textContent = `Uploading ${file.name}…`;
  const { upload } = await jobs.startUpload({
    header: { filename: file.name, contentType: file.type, sizeBytes: BigInt(file.size) },
  });
  if (!upload) throw new Error("no upload");
  const part = Number(upload.partSize) || 16 * 1024 * 1024;
  let committed = Number(upload.committedSize);
  bar.max = file.size;
  while (committed < file.size) {
    // Whole parts (or the end): a write commits up to its last complete part.
    const end = Math.min(file.size, committed + part * 4);
    const start = committed;
    committed = await put(upload.id, start, file.slice(start, end), (loaded) => {
      bar.value = start + loaded;
    });
    if (committed <= start) throw new Error("the upload made no progress");
    bar.value = committed;
  }
  status.textContent = "Verifying…";
  const { video } = await jobs.finishUpload({ uploadId: upload.id });
  const specText = (document.getElementById("spec") as HTMLTextAreaElement).value.trim();
  localStorage.setItem(SPEC_KEY, specText);
  const spec = specText ? fromJson(PipelineSpecSchema, JSON.parse(specText)) : undefined;
  const { job } = await jobs.createJob({
    source: { case: "videoId", value: video?.id ?? "" },
    spec,
    labels: { filename: file.name.slice(0, 200).replace(/[^\w.-]/g, "_") },
  });
  status.textContent = `Job ${job?.id} created`;
  if (job) addJobRow(job, true);
}

/** Adds a job to the jobs list and follows it live (set by the jobs page). */
let addJobRow: (job: Job, first?: boolean) => void = () => {};

// -- jobs -------------------------------------------------------------------------------------

function stageChips(job: Job): HTMLElement {
  const chips = el("div", { class: "stages" });
  for (const stage of job.stages) {
    const state = StageState[stage.state];
    const chip = el("span", { class: `stage ${state}`, "data-stage": stage.name, title: `${stage.name}: ${state}` });
    const bar = el("span", { class: "bar" });
    bar.style.width = `${Math.round((stage.state === StageState.SUCCEEDED ? 1 : stage.progress) * 100)}%`;
    chip.append(bar, `${stage.name} ${stage.state === StageState.RUNNING ? Math.round(stage.progress * 100) + "%" : ""}`);
    chips.append(chip);
  }
  return chips;
}

function jobRow(job: Job): HTMLTableRowElement {
  const link = el("a", { href: `#/jobs/${job.id}`, class: "id" }, job.id);
  const row = el(
    "tr",
    { "data-job": job.id, "data-state": stateName(job.state) },
    el("td", {}, link, el("div", { class: "muted" }, job.labels.filename ?? "")),
    el("td", { class: `state ${stateName(job.state)}` }, JobState[job.state]),
    el("td", {}, stageChips(job)),
    el("td", { class: "muted" }, job.createTime ? new Date(Number(job.createTime.seconds) * 1000).toLocaleString() : ""),
  );
  return row;
}

function watchJob(jobId: string, onJob: (job: Job) => void): void {
  if (!clients) return;
  const { jobs } = clients;
  const abort = new AbortController();
  watches.push(abort);
  (async () => {
    try {
      for await (const response of jobs.watchJob({ jobId }, { signal: abort.signal })) {
        const { job } = await jobs.getJob({ jobId, view: JobView.BASIC });
        if (job) onJob(job);
        void response;
      }
      const { job } = await jobs.getJob({ jobId, view: JobView.FULL });
      if (job) onJob(job);
    } catch (error) {
      if (!abort.signal.aborted) console.warn("watch", jobId, describe(error));
    }
  })();
}

async function jobsPage(): Promise<void> {
  stopPage();
  if (!clients) return;
  const drop = el("div", { id: "drop" }, "Drop a video here, or ", el("input", { type: "file", id: "file", accept: "video/*,audio/*" }));
  const bar = el("progress", { id: "progress", value: "0", max: "1" });
  const status = el("p", { id: "upload-status" });
  const spec = el("textarea", { id: "spec", rows: "3", placeholder: 'Pipeline spec as JSON (optional), e.g. {"transcode": {"ladder": [{"height": 360}]}}' });
  spec.value = localStorage.getItem(SPEC_KEY) ?? "";
  const options = el("details", {}, el("summary", {}, "Options"), spec);
  const start = (file: File | undefined) => {
    if (!file) return;
    uploadFile(file, bar, status).catch((error) => {
      status.textContent = `Upload failed: ${error instanceof ConnectError ? describe(error) : String(error)}`;
      status.className = "error";
    });
  };
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    start(event.dataTransfer?.files[0]);
  });
  (drop.querySelector("#file") as HTMLInputElement).addEventListener("change", (event) =>
    start((event.target as HTMLInputElement).files?.[0]),
  );

  const filter = el("input", { type: "text", id: "filter", placeholder: "Filter: state, id or file name" });
  const body = el("tbody", { id: "jobs" });
  const table = el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Job"), el("th", {}, "State"), el("th", {}, "Stages"), el("th", {}, "Created"))), body);
  app.replaceChildren(el("section", { class: "card" }, drop, bar, status, options), el("section", { class: "card" }, filter, table));

  const applyFilter = () => {
    const text = filter.value.trim().toLowerCase();
    for (const row of Array.from(body.rows)) {
      row.hidden = text !== "" && !row.textContent!.toLowerCase().includes(text);
    }
  };
  filter.addEventListener("input", applyFilter);

  addJobRow = (job: Job, first = false) => {
    let row = jobRow(job);
    if (first) body.prepend(row);
    else body.append(row);
    if (!TERMINAL.has(job.state)) {
      watchJob(job.id, (updated) => {
        const next = jobRow(updated);
        row.replaceWith(next);
        row = next;
        applyFilter();
      });
    }
  };
  const { jobs } = await clients.jobs.listJobs({ pageSize: 100 });
  for (const job of jobs) {
    addJobRow(job);
  }
  applyFilter();
}

// -- one job ----------------------------------------------------------------------------------

async function artifactUrl(jobId: string, name: string): Promise<string> {
  const { url } = await clients!.jobs.getArtifactUrl({ jobId, artifactName: name });
  return url;
}

function captionsTrack(job: Job): HTMLTrackElement | null {
  const segments = job.transcript?.segments ?? [];
  if (segments.length === 0) return null;
  const stamp = (t: number) => {
    const ms = Math.round(t * 1000);
    const h = Math.floor(ms / 3600000);
    const m = Math.floor((ms % 3600000) / 60000);
    const s = Math.floor((ms % 60000) / 1000);
    return `${String(h).padStart(2, "0")}:${String(m).padStart(2, "0")}:${String(s).padStart(2, "0")}.${String(ms % 1000).padStart(3, "0")}`;
  };
  const text = ["WEBVTT", ""];
  for (const segment of segments) {
    text.push(`${stamp(segment.startSeconds)} --> ${stamp(Math.max(segment.endSeconds, segment.startSeconds + 0.5))}`, segment.text.trim(), "");
  }
  const url = URL.createObjectURL(new Blob([text.join("\n")], { type: "text/vtt" }));
  return el("track", { kind: "captions", src: url, srclang: job.transcript?.language || "en", label: "Transcript", default: "" });
}

function artifactList(job: Job): HTMLElement {
  const list = el("ul", { id: "artifacts" });
  const groups = new Map<string, Artifact[]>();
  for (const artifact of job.artifacts) {
    const group = artifact.name.includes("/") ? artifact.name.split("/")[0] : "files";
    groups.set(group, [...(groups.get(group) ?? []), artifact]);
  }
  for (const [group, artifacts] of groups) {
    const shown = group === "hls" ? artifacts.filter((a) => a.name.endsWith(".m3u8")) : artifacts;
    const items = el("ul");
    for (const artifact of shown) {
      const link = el("a", { href: "#", "data-artifact": artifact.name }, artifact.name);
      link.addEventListener("click", async (event) => {
        event.preventDefault();
        window.open(await artifactUrl(job.id, artifact.name), "_blank");
      });
      items.append(el("li", {}, link, el("span", { class: "muted" }, ` ${Math.round(Number(artifact.sizeBytes) / 1024)} KiB`)));
    }
    const extra = group === "hls" ? ` (${artifacts.length - shown.length} segments)` : "";
    list.append(el("li", {}, `${group}${extra}`, items));
  }
  return list;
}

async function jobPage(jobId: string): Promise<void> {
  stopPage();
  if (!clients) return;
  let job: Job | undefined;
  try {
    job = (await clients.jobs.getJob({ jobId, view: JobView.FULL })).job;
  } catch (error) {
    app.replaceChildren(el("p", { id: "job-error", class: "error" }, describe(error)));
    return;
  }
  if (!job) return;
  const meta = job.metadata;
  const title = el("h2", { id: "title" }, meta?.title || job.labels.filename || job.id);
  const state = el("p", {}, el("span", { id: "job-state", class: `state ${stateName(job.state)}` }, stateName(job.state)), " ", el("span", { class: "id" }, job.id));
  const header = el("section", { class: "card" }, title, state, stageChips(job));
  if (job.error && job.error.reason) {
    header.append(el("p", { class: "error" }, `${job.error.reason}: ${job.error.message}`));
  }
  const video = el("video", { id: "player", controls: "", playsinline: "", crossorigin: "anonymous" });
  const timeline = el("div", { id: "timeline" });
  const left = el("section", { class: "card" }, video, timeline);
  const right = el("section", { class: "card" });
  app.replaceChildren(header, el("div", { class: "grid" }, left, right));

  if (!TERMINAL.has(job.state)) {
    watchJob(job.id, (updated) => {
      if (TERMINAL.has(updated.state) || updated.state !== job!.state) {
        void jobPage(jobId);
      } else {
        header.querySelector(".stages")!.replaceWith(stageChips(updated));
      }
    });
  }

  const master = job.artifacts.find((a) => a.name.endsWith("master.m3u8"));
  const rendition = job.artifacts.find((a) => a.name.endsWith(".mp4") && a.name.startsWith("renditions/"));
  if (master) {
    const url = await artifactUrl(job.id, master.name);
    if (Hls.isSupported()) {
      player = new Hls();
      player.loadSource(url);
      player.attachMedia(video);
    } else {
      video.src = url;
    }
  } else if (rendition) {
    video.src = await artifactUrl(job.id, rendition.name);
  } else {
    left.append(el("p", { class: "muted" }, "No playable rendition."));
  }
  const track = captionsTrack(job);
  if (track) {
    video.append(track);
    track.track.mode = "showing";
  }

  const duration = job.mediaInfo?.duration ? Number(job.mediaInfo.duration.seconds) + job.mediaInfo.duration.nanos / 1e9 : 0;
  const chapters = meta?.chapters ?? [];
  if (duration > 0) {
    for (const chapter of chapters) {
      const mark = el("div", { class: "chapter", title: chapter.title }, el("span", {}, chapter.title));
      mark.style.left = `${(chapter.startSeconds / duration) * 100}%`;
      mark.addEventListener("click", () => {
        video.currentTime = chapter.startSeconds;
      });
      timeline.append(mark);
    }
  }

  void storyboard(job, timeline, duration, video);

  if (meta) {
    right.append(el("h3", {}, "Metadata"));
    if (meta.summary || meta.description) right.append(el("p", { id: "summary" }, meta.summary || meta.description));
    if (meta.tags.length) right.append(el("p", { class: "muted" }, meta.tags.join(", ")));
  }
  if (chapters.length) {
    const list = el("ol", { id: "chapters" });
    for (const chapter of chapters) {
      const item = el("li", {}, `${seconds(chapter.startSeconds)} ${chapter.title}`);
      item.addEventListener("click", () => {
        video.currentTime = chapter.startSeconds;
      });
      list.append(item);
    }
    right.append(el("h3", {}, "Chapters"), list);
  }
  const segments = job.transcript?.segments ?? [];
  if (segments.length) {
    const transcript = el("div", { class: "transcript", id: "transcript" });
    for (const segment of segments) {
      const line = el("p", {}, el("span", { class: "muted" }, seconds(segment.startSeconds) + " "), segment.text.trim());
      line.addEventListener("click", () => {
        video.currentTime = segment.startSeconds;
      });
      transcript.append(line);
    }
    left.append(el("h3", {}, `Transcript (${job.transcript?.language})`), transcript);
  }
  const shots = job.scenes?.shots ?? [];
  if (shots.length) {
    right.append(el("h3", {}, `Scenes (${shots.length})`), el("ol", { id: "scenes" }, ...shots.slice(0, 50).map((shot) => el("li", {}, `${seconds(shot.startSeconds)}–${seconds(shot.endSeconds)}`))));
  }
  const texts = job.onScreenText?.entries ?? [];
  if (texts.length) {
    right.append(el("h3", {}, "On screen"), el("ul", { id: "on-screen-text" }, ...texts.slice(0, 50).map((entry) => el("li", {}, `${seconds(entry.startSeconds)} ${entry.text}`))));
  }
  if (job.mediaInfo) {
    const info = job.mediaInfo;
    const stream = info.videoStreams?.[0];
    right.append(el("h3", {}, "Media"), el("p", { class: "muted" }, `${duration.toFixed(1)} s${stream ? `, ${stream.width}×${stream.height} ${stream.codec}` : ""}`));
  }
  right.append(el("h3", {}, "Artifacts"), artifactList(job));
}

/** Storyboard thumbnails over the timeline: the storyboard's WebVTT (sprite#xywh cues),
 * fetched by its signed URL, whose sprite sheets resolve relative to it. */
async function storyboard(job: Job, timeline: HTMLElement, duration: number, video: HTMLVideoElement): Promise<void> {
  const board = job.artifacts.find((a) => a.name.startsWith("storyboard/") && a.name.endsWith(".vtt"));
  if (!board || duration <= 0) return;
  const url = await artifactUrl(job.id, board.name);
  const text = await (await fetch(url)).text();
  const cues: { start: number; end: number; image: string; x: number; y: number; w: number; h: number }[] = [];
  const time = (t: string) => t.split(":").reduce((total, part) => total * 60 + Number(part), 0);
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] ?? "";
    if (!line.includes("-->")) continue;
    const [start = "0", end = "0"] = line.split("-->").map((part) => part.trim());
    const target = lines[i + 1] ?? "";
    const [file = "", fragment = ""] = target.split("#xywh=");
    const [x = 0, y = 0, w = 0, h = 0] = fragment.split(",").map(Number);
    cues.push({ start: time(start), end: time(end), image: new URL(file, url).href, x, y, w, h });
  }
  if (!cues.length) return;
  const thumb = el("div", { class: "thumb", id: "storyboard-thumb" });
  timeline.append(thumb);
  timeline.addEventListener("mousemove", (event) => {
    const box = timeline.getBoundingClientRect();
    const at = ((event.clientX - box.left) / box.width) * duration;
    const cue = cues.find((c) => at >= c.start && at < c.end) ?? cues[cues.length - 1]!;
    Object.assign(thumb.style, {
      display: "block",
      left: `${Math.max(0, event.clientX - box.left - cue.w / 2)}px`,
      width: `${cue.w}px`,
      height: `${cue.h}px`,
      backgroundImage: `url("${cue.image}")`,
      backgroundPosition: `-${cue.x}px -${cue.y}px`,
    });
  });
  timeline.addEventListener("mouseleave", () => {
    thumb.style.display = "none";
  });
  timeline.addEventListener("click", (event) => {
    if ((event.target as HTMLElement).closest(".chapter")) return;
    const box = timeline.getBoundingClientRect();
    video.currentTime = ((event.clientX - box.left) / box.width) * duration;
  });
}

// -- routing ----------------------------------------------------------------------------------

function route(): void {
  if (!token) {
    signIn();
    return;
  }
  clients = connectClients(token);
  const out = document.getElementById("signout") as HTMLElement;
  out.hidden = false;
  const match = location.hash.match(/^#\/jobs\/([\w-]+)/);
  const page = match ? jobPage(match[1]) : jobsPage();
  page.catch((error) => {
    if (errorReason(error) === ErrorReason.INVALID_TOKEN || errorReason(error) === ErrorReason.TOKEN_EXPIRED) {
      token = "";
      localStorage.removeItem(TOKEN_KEY);
      signIn(describe(error));
      return;
    }
    app.replaceChildren(el("p", { class: "error", id: "page-error" }, describe(error)));
  });
}

document.getElementById("signout")!.addEventListener("click", () => {
  token = "";
  localStorage.removeItem(TOKEN_KEY);
  location.hash = "#/";
  signIn();
});
window.addEventListener("hashchange", route);
route();
