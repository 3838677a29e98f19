// The hand-written layer over the generated services: createAgentdClient() returns the three
// Connect clients (authenticated, errors mapped to AgentdError) plus helpers that stream files
// from and to disk and follow a job's events, reattaching from the last seen seq when the
// connection drops.
import { createReadStream } from "node:fs";
import { lstat, mkdir, open, readdir, rename, rm, stat, type FileHandle } from "node:fs/promises";
import * as path from "node:path";
import { randomUUID } from "node:crypto";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";

import {
  ArchiveFormat,
  ChangeKind,
  FileService,
  FileType,
  type FileEvent,
  type FileInfo,
  type UploadArchiveRequestSchema,
  type UploadArchiveResponse,
  type GetJobOutputsResponse,
  type UploadFilesRequestSchema,
} from "./gen/agentd/v1/file_pb.js";
import {
  JobService,
  JobState,
  type Job,
  type JobChange,
  type JobEvent,
  type PermissionRequest,
  type SubmitJobRequestSchema,
} from "./gen/agentd/v1/job_pb.js";
import { PresetService, type Preset, type PresetSchema } from "./gen/agentd/v1/preset_pb.js";
import { WebhookService } from "./gen/agentd/v1/webhook_pb.js";
import { ServerInfoService, type GetServerInfoResponse } from "./gen/agentd/v1/server_info_pb.js";
import {
  SessionService,
  SnapshotPoint,
  type RewindSessionResponse,
  type Session,
} from "./gen/agentd/v1/session_pb.js";
import {
  UsageGroupBy,
  UsageService,
  type ModelCall,
  type UsageBucket,
} from "./gen/agentd/v1/usage_pb.js";
import { AgentdError, errorInterceptor, toAgentdError } from "./errors.js";
import { uploadInPieces, type PieceUploadOptions } from "./pieces.js";

/** Upload chunk size: the server accepts at most 1 MiB per chunk. */
export const CHUNK_SIZE = 1 << 20;

/** States after which a job never changes again. */
export const FINAL_STATES: ReadonlySet<JobState> = new Set([
  JobState.SUCCEEDED,
  JobState.FAILED,
  JobState.CANCELLED,
  JobState.TIMED_OUT,
]);

export interface AgentdClientOptions {
  /** e.g. "http://127.0.0.1:50051"; default: AGENTD_URL. A bare host:port means http. */
  baseUrl?: string;
  /** Default: AGENTD_API_KEY. Sent as `authorization: Bearer <key>`; none is sent when empty. */
  apiKey?: string;
  /** How long streams keep reattaching without progress before giving up (default 30 s). */
  reconnectTimeoutMs?: number;
  /** Extra interceptors, run inside the auth and error ones. */
  interceptors?: Interceptor[];
}

/** Job options, as in SubmitJobRequest (minus session and prompt). */
export type JobOptions = Omit<
  MessageInitShape<typeof SubmitJobRequestSchema>,
  "sessionId" | "prompt" | "$typeName"
>;

/** A preset's fields (PresetService): prompt template with `{{variables}}`, agent, model,
 * overridable fields, MCP servers, subagents, skills, limits. */
export type PresetFields = Omit<MessageInitShape<typeof PresetSchema>, "name" | "$typeName">;

export interface CreateSessionOptions {
  /** A local directory to upload (streamed), or workspace path → content (sent inline). */
  files?: string | Record<string, string | Uint8Array>;
  ttlSeconds?: number;
  labels?: Record<string, string>;
  requestId?: string;
}

/**
 * What an onPermission callback answers: true allows; false denies; a string denies and tells
 * the agent why; undefined leaves the request to another watcher or to its timeout (denied).
 */
export type PermissionAnswer = boolean | string | undefined;

/** A job started by run(): iterate it for the events; afterwards `job` is the final job. */
export interface JobRun extends AsyncIterable<JobEvent> {
  /** The job as submitted once known; the final job after the iteration or wait(). */
  readonly job: Job | undefined;
  /** Consumes the remaining events (answering permission requests) and resolves to the final job. */
  wait(): Promise<Job>;
  /** Cancels the job (once it is known). */
  cancel(): Promise<Job>;
  /**
   * Answers the job's permission requests (submit with `permissionMode: "ask"`) while the run
   * is iterated or waited for; the callback may be async. Returns the run.
   */
  onPermission(callback: (req: PermissionRequest) => PermissionAnswer | Promise<PermissionAnswer>): JobRun;
  /** Sends a user message to the running agent (its next turn where it is mid-turn). */
  send(text: string): Promise<void>;
  /**
   * Stops the agent's turn, keeping the conversation: the job ends CANCELLED with reason
   * INTERRUPTED, and the session's next job continues the conversation.
   */
  interrupt(): Promise<void>;
  /** The finished job's unified diff (from its workspace snapshots). */
  diff(opts?: { paths?: string[]; contextLines?: number }): Promise<string>;
}

interface UploadEntry {
  path: string;
  source: string | Uint8Array;
  mode?: number;
  size: bigint;
}

function resolveBaseUrl(baseUrl: string | undefined): string {
  const raw = (baseUrl ?? process.env.AGENTD_URL ?? "http://127.0.0.1:50051").trim();
  return /^https?:\/\//.test(raw) ? raw.replace(/\/+$/, "") : `http://${raw}`;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Tracks the last delivered seq so a replay after reattaching delivers each event once. */
class EventCursor {
  finished = false;
  constructor(public lastSeq: bigint) {}

  accept(events: JobEvent[]): JobEvent[] {
    const out: JobEvent[] = [];
    for (const ev of events) {
      if (this.finished || ev.seq <= this.lastSeq) continue;
      if (ev.seq !== this.lastSeq + 1n) {
        throw new AgentdError(
          `event stream skipped from seq ${this.lastSeq} to ${ev.seq}`,
          Code.DataLoss,
          { reason: "SEQ_GAP", domain: "", metadata: {} },
        );
      }
      this.lastSeq = ev.seq;
      out.push(ev);
      if (ev.kind.case === "finished") this.finished = true;
    }
    return out;
  }
}

/** Whether a failed stream is worth reattaching: the server is unreachable (UNAVAILABLE), or the
 * connection broke under the stream (connect-node reports a reset socket as ABORTED; agentd
 * itself never answers ABORTED, and its own errors carry a reason). */
function isConnectionError(err: AgentdError): boolean {
  return err.code === Code.Unavailable || (err.code === Code.Aborted && err.reason === "");
}

/** Retry on connection errors with capped backoff until no progress was made for `timeoutMs`. */
class Reconnect {
  private attempt = 0;
  private since = Date.now();
  constructor(private readonly timeoutMs: number) {}

  progressed(): void {
    this.attempt = 0;
    this.since = Date.now();
  }

  /** The pause before the next attempt; throws `err` when it is not retryable. */
  nextDelay(err: AgentdError): number {
    if (!isConnectionError(err) || Date.now() - this.since > this.timeoutMs) throw err;
    this.attempt += 1;
    return Math.min(50 * 2 ** (this.attempt - 1), 2000);
  }
}

function safeLocalPath(destDir: string, remote: string): string {
  const parts = remote.split("/");
  if (remote.startsWith("/") || parts.some((p) => p === "" || p === "." || p === "..")) {
    throw new AgentdError(`path ${JSON.stringify(remote)} from the server is not a safe relative path`,
      Code.InvalidArgument, { reason: "INVALID_PATH", domain: "", metadata: {} });
  }
  return path.join(destDir, ...parts);
}

async function directoryEntries(localDir: string, prefix: string): Promise<UploadEntry[]> {
  const st = await stat(localDir).catch(() => undefined);
  if (!st?.isDirectory()) {
    throw new AgentdError(`localDir: ${JSON.stringify(localDir)} is not a directory`,
      Code.InvalidArgument, { reason: "NOT_A_DIRECTORY", domain: "", metadata: {} });
  }
  const out: UploadEntry[] = [];
  const walk = async (dir: string, rel: string): Promise<void> => {
    const names = (await readdir(dir)).sort();
    for (const name of names) {
      const full = path.join(dir, name);
      const relPath = rel ? `${rel}/${name}` : name;
      const s = await lstat(full);
      // Symlinks and special files are skipped, never followed.
      if (s.isDirectory()) await walk(full, relPath);
      else if (s.isFile()) {
        const remote = prefix ? `${prefix.replace(/\/+$/, "")}/${relPath}` : relPath;
        out.push({ path: remote, source: full, mode: s.mode & 0o7777, size: BigInt(s.size) });
      }
    }
  };
  await walk(localDir, "");
  return out;
}

async function fileEntries(files: Record<string, string | Uint8Array>): Promise<UploadEntry[]> {
  const out: UploadEntry[] = [];
  for (const [remote, source] of Object.entries(files)) {
    if (typeof source === "string") {
      const s = await stat(source);
      if (!s.isFile()) {
        throw new AgentdError(`files[${JSON.stringify(remote)}]: ${source} is not a regular file`,
          Code.InvalidArgument, { reason: "NOT_A_REGULAR_FILE", domain: "", metadata: {} });
      }
      out.push({ path: remote, source, mode: s.mode & 0o7777, size: BigInt(s.size) });
    } else {
      out.push({ path: remote, source, size: BigInt(source.length) });
    }
  }
  return out;
}

async function* chunksOf(entry: UploadEntry): AsyncGenerator<Uint8Array> {
  if (typeof entry.source !== "string") {
    for (let i = 0; i < entry.source.length; i += CHUNK_SIZE) {
      yield entry.source.subarray(i, i + CHUNK_SIZE);
    }
    return;
  }
  // Read lazily, 1 MiB at a time: a file is never held whole in memory.
  for await (const chunk of createReadStream(entry.source, { highWaterMark: CHUNK_SIZE })) {
    yield chunk as Buffer;
  }
}

async function writeAll(fd: FileHandle, data: Uint8Array): Promise<void> {
  let off = 0;
  while (off < data.length) {
    const { bytesWritten } = await fd.write(data, off, data.length - off);
    off += bytesWritten;
  }
}

export function createAgentdClient(options: AgentdClientOptions = {}) {
  const baseUrl = resolveBaseUrl(options.baseUrl);
  const apiKey = options.apiKey ?? process.env.AGENTD_API_KEY ?? "";
  const reconnectTimeoutMs = options.reconnectTimeoutMs ?? 30_000;
  const auth: Interceptor = (next) => (req) => {
    // No key: send none (a server on loopback without configured keys accepts that).
    if (apiKey) req.header.set("authorization", `Bearer ${apiKey}`);
    return next(req);
  };
  const sessionManager = new Http2SessionManager(baseUrl);
  const transport: Transport = createGrpcTransport({
    baseUrl,
    sessionManager,
    interceptors: [errorInterceptor, auth, ...(options.interceptors ?? [])],
  });
  const sessions: Client<typeof SessionService> = createClient(SessionService, transport);
  const jobs: Client<typeof JobService> = createClient(JobService, transport);
  const files: Client<typeof FileService> = createClient(FileService, transport);
  const server: Client<typeof ServerInfoService> = createClient(ServerInfoService, transport);
  const usage: Client<typeof UsageService> = createClient(UsageService, transport);
  const presets: Client<typeof PresetService> = createClient(PresetService, transport);
  const webhooks: Client<typeof WebhookService> = createClient(WebhookService, transport);

  async function upload(sessionId: string, entries: UploadEntry[]): Promise<FileInfo[]> {
    async function* requests(): AsyncIterable<MessageInitShape<typeof UploadFilesRequestSchema>> {
      if (entries.length === 0) yield { sessionId };
      for (const e of entries) {
        yield {
          sessionId,
          part: { case: "header", value: { path: e.path, mode: e.mode, size: e.size } },
        };
        for await (const chunk of chunksOf(e)) yield { part: { case: "chunk", value: chunk } };
      }
    }
    return (await files.uploadFiles(requests())).files;
  }

  async function downloadTo(
    sessionId: string,
    remote: string,
    write: (chunk: Uint8Array) => Promise<void>,
    opts: { offset?: bigint; includeSha256?: boolean },
  ): Promise<FileInfo | undefined> {
    let info: FileInfo | undefined;
    for await (const res of files.downloadFile({
      sessionId,
      path: remote,
      offset: opts.offset ?? 0n,
      includeSha256: opts.includeSha256 ?? false,
    })) {
      if (res.part.case === "info") info = res.part.value;
      else if (res.part.case === "chunk") await write(res.part.value);
    }
    return info;
  }

  async function finalJob(jobId: string): Promise<Job> {
    // The finished event is written with the final state; allow a short lag regardless.
    const deadline = Date.now() + 5000;
    for (;;) {
      const job = (await jobs.getJob({ jobId })).job;
      if (!job) throw new AgentdError("GetJob returned no job", Code.Internal, { reason: "", domain: "", metadata: {} });
      if (FINAL_STATES.has(job.state) || Date.now() > deadline) return job;
      await sleep(50);
    }
  }

  async function* follow(jobId: string, cursor: EventCursor, policy: Reconnect): AsyncGenerator<JobEvent> {
    while (!cursor.finished) {
      const ac = new AbortController();
      let delay: number;
      try {
        for await (const res of jobs.streamJobEvents({ jobId, afterSeq: cursor.lastSeq }, { signal: ac.signal })) {
          policy.progressed();
          yield* cursor.accept(res.events);
          if (cursor.finished) return;
        }
        // A clean end before `finished` (e.g. the server draining): reattach.
        delay = policy.nextDelay(new AgentdError("event stream ended early", Code.Unavailable,
          { reason: "", domain: "", metadata: {} }));
      } catch (e) {
        delay = policy.nextDelay(toAgentdError(e));
      } finally {
        ac.abort();
      }
      await sleep(delay);
    }
  }

  // The events a capped change left out run from the last one carried up to the change's own
  // last seq; the stream may go further (a running job), so it stops there.
  async function completeEvents(change: JobChange): Promise<void> {
    const until = change.job?.lastSeq ?? 0n;
    const after = change.events.at(-1)?.seq ?? change.eventsAfterSeq;
    if (after < until) {
      for await (const ev of client.stream(change.job!.jobId, { afterSeq: after })) {
        if (ev.seq > until) break;
        change.events.push(ev);
        if (ev.seq === until) break;
      }
    }
    change.eventsTruncated = false;
  }

  const client = {
    /** The generated Connect clients, authenticated, errors mapped to AgentdError. */
    sessions,
    jobs,
    files,
    server,
    usage,
    presets,
    webhooks,
    transport,
    baseUrl,

    /** Closes the HTTP/2 connection (and any open streams). */
    close(): void {
      sessionManager.abort();
    },

    /** The server's version, agents (with availability) and limits. */
    async serverInfo(): Promise<GetServerInfoResponse> {
      return server.getServerInfo({});
    },

    /** The caller's model usage from the ledger over [start, end), grouped (default: one total). */
    async getUsage(
      opts: { groupBy?: UsageGroupBy; start?: Date; end?: Date } = {},
    ): Promise<UsageBucket[]> {
      const ts = (d?: Date) =>
        d && { seconds: BigInt(Math.floor(d.getTime() / 1000)), nanos: (d.getTime() % 1000) * 1e6 };
      const res = await usage.getUsage({
        groupBy: opts.groupBy ?? UsageGroupBy.UNSPECIFIED,
        startTime: ts(opts.start),
        endTime: ts(opts.end),
      });
      return res.buckets;
    },

    /** Every model call of a job through the gateway (model, tokens, cost, latency, status). */
    async listModelCalls(jobId: string): Promise<ModelCall[]> {
      return (await usage.listModelCalls({ jobId })).calls;
    },

    // ---- presets ----------------------------------------------------------------------------

    /** Creates one of the caller's presets; jobs use it with `{ preset: name, variables }`. */
    async createPreset(name: string, fields: PresetFields = {}): Promise<Preset> {
      const res = await presets.createPreset({ preset: { ...fields, name } });
      return res.preset!;
    },

    /** The caller's preset, else the operator's (`readOnly`). */
    async getPreset(name: string): Promise<Preset> {
      return (await presets.getPreset({ name })).preset!;
    },

    /** The caller's presets, then the operator's, by name. */
    async listPresets(): Promise<Preset[]> {
      return (await presets.listPresets({})).presets;
    },

    /** Replaces one of the caller's presets whole. */
    async updatePreset(name: string, fields: PresetFields = {}): Promise<Preset> {
      return (await presets.updatePreset({ preset: { ...fields, name } })).preset!;
    },

    async deletePreset(name: string): Promise<void> {
      await presets.deletePreset({ name });
    },

    // ---- sessions ---------------------------------------------------------------------------

    async createSession(opts: CreateSessionOptions = {}): Promise<Session> {
      const inline: { path: string; content: Uint8Array }[] = [];
      let entries: UploadEntry[] | undefined;
      if (typeof opts.files === "string") entries = await directoryEntries(opts.files, "");
      else if (opts.files) {
        for (const [p, c] of Object.entries(opts.files)) {
          inline.push({ path: p, content: typeof c === "string" ? new TextEncoder().encode(c) : c });
        }
      }
      const res = await sessions.createSession({
        files: inline,
        ttlSeconds: opts.ttlSeconds ?? 0,
        labels: opts.labels ?? {},
        requestId: opts.requestId ?? "",
      });
      const session = res.session!;
      if (entries) {
        await upload(session.sessionId, entries);
        return client.getSession(session.sessionId);
      }
      return session;
    },

    async getSession(sessionId: string): Promise<Session> {
      return (await sessions.getSession({ sessionId })).session!;
    },

    /** All of the caller's sessions, newest first, fetching pages as needed. */
    async *listSessions(opts: { labelFilter?: Record<string, string>; pageSize?: number } = {}): AsyncGenerator<Session> {
      let pageToken = "";
      do {
        const res = await sessions.listSessions({ labelFilter: opts.labelFilter ?? {}, pageSize: opts.pageSize ?? 0, pageToken });
        yield* res.sessions;
        pageToken = res.nextPageToken;
      } while (pageToken);
    },

    /**
     * A new session whose workspace is the job's snapshot (after it, or `before` it) and whose
     * conversation is a fork of the job's; the job's own session is untouched.
     */
    async forkSession(
      jobId: string,
      opts: { before?: boolean; labels?: Record<string, string>; ttlSeconds?: number } = {},
    ): Promise<Session> {
      const point = opts.before ? SnapshotPoint.BEFORE : SnapshotPoint.AFTER;
      const res = await sessions.forkSession({ jobId, point, labels: opts.labels ?? {}, ttlSeconds: opts.ttlSeconds ?? 0 });
      return res.session!;
    },

    /**
     * Puts the session's workspace and conversation back to after the job (or `before` it);
     * later jobs stay listed with `rewoundPast` set.
     */
    async rewindSession(sessionId: string, jobId: string, opts: { before?: boolean } = {}): Promise<RewindSessionResponse> {
      const point = opts.before ? SnapshotPoint.BEFORE : SnapshotPoint.AFTER;
      return sessions.rewindSession({ sessionId, jobId, point });
    },

    /** Deletes a session; resolves to the number of jobs that cancelled. */
    async deleteSession(sessionId: string): Promise<number> {
      return (await sessions.deleteSession({ sessionId })).cancelledJobs;
    },

    // ---- files ------------------------------------------------------------------------------

    /** Uploads workspace path → local file path or bytes, in one stream of ≤ 1 MiB chunks. */
    async upload(sessionId: string, filesToSend: Record<string, string | Uint8Array>): Promise<FileInfo[]> {
      return upload(sessionId, await fileEntries(filesToSend));
    },

    /**
     * Uploads one file in unary UploadFileChunk pieces instead of a client stream (for
     * proxies that cannot stream a request); committed atomically on the last piece.
     */
    async uploadInPieces(sessionId: string, remote: string, data: Blob | Uint8Array, opts: PieceUploadOptions = {}): Promise<FileInfo> {
      return uploadInPieces(files, sessionId, remote, data, opts);
    },

    /** Uploads every regular file under `localDir` (modes kept) to `prefix/`. */
    async uploadDir(sessionId: string, localDir: string, prefix = ""): Promise<FileInfo[]> {
      return upload(sessionId, await directoryEntries(localDir, prefix));
    },

    /** Streams one workspace file to `dest` (via a temp file, renamed when complete). */
    async download(
      sessionId: string,
      remote: string,
      dest: string,
      opts: { offset?: bigint; includeSha256?: boolean } = {},
    ): Promise<FileInfo | undefined> {
      await mkdir(path.dirname(dest), { recursive: true });
      const tmp = path.join(path.dirname(dest), `.${path.basename(dest)}.agentd-partial`);
      const fd = await open(tmp, "w");
      try {
        let info: FileInfo | undefined;
        try {
          info = await downloadTo(sessionId, remote, (c) => writeAll(fd, c), opts);
        } finally {
          await fd.close();
        }
        await rename(tmp, dest);
        return info;
      } finally {
        await rm(tmp, { force: true });
      }
    },

    /** A small file's content (use download() for large ones). */
    async readFile(sessionId: string, remote: string): Promise<Uint8Array> {
      const parts: Uint8Array[] = [];
      await downloadTo(sessionId, remote, async (c) => { parts.push(c); }, {});
      return Buffer.concat(parts);
    },

    /** Every entry under `dir` (recursively, in path order), fetching pages as needed. */
    async *listFiles(
      sessionId: string,
      dir = "",
      opts: { includeSha256?: boolean; pageSize?: number } = {},
    ): AsyncGenerator<FileInfo> {
      let pageToken = "";
      do {
        const res = await files.listFiles({
          sessionId, path: dir, includeSha256: opts.includeSha256 ?? false, pageSize: opts.pageSize ?? 0, pageToken,
        });
        yield* res.files;
        pageToken = res.nextPageToken;
      } while (pageToken);
    },

    async deleteFile(sessionId: string, remote: string, opts: { recursive?: boolean } = {}): Promise<bigint> {
      return (await files.deleteFile({ sessionId, path: remote, recursive: opts.recursive ?? false })).deletedFiles;
    },

    /** A finished job's unified diff, as git prints it (binary files marked, not dumped). */
    async jobDiff(jobId: string, opts: { paths?: string[]; contextLines?: number } = {}): Promise<string> {
      const parts: Uint8Array[] = [];
      for await (const res of files.getJobDiff({ jobId, paths: opts.paths ?? [], contextLines: opts.contextLines })) {
        parts.push(res.chunk);
      }
      return Buffer.concat(parts).toString("utf8");
    },

    /** What a job changed (default: the session's latest succeeded job): every page, as one response. */
    async outputs(sessionId: string, jobId = ""): Promise<GetJobOutputsResponse> {
      const out = await files.getJobOutputs({ sessionId, jobId });
      while (out.nextPageToken) {
        // The later pages are of the first page's job: a session's latest succeeded job may change.
        const page = await files.getJobOutputs({ sessionId, jobId: out.jobId, pageToken: out.nextPageToken });
        for (const c of page.changes) out.changes.push(c);
        out.nextPageToken = page.nextPageToken;
      }
      return out;
    },

    /** Downloads every file the job added or modified into `destDir`; resolves to local paths. */
    async downloadOutputs(sessionId: string, destDir: string, jobId = ""): Promise<string[]> {
      const out = await client.outputs(sessionId, jobId);
      const written: string[] = [];
      for (const c of out.changes) {
        if (c.kind !== ChangeKind.ADDED && c.kind !== ChangeKind.MODIFIED) continue;
        if (c.file?.type !== FileType.REGULAR) continue;
        const local = safeLocalPath(destDir, c.path);
        await client.download(sessionId, c.path, local);
        written.push(local);
      }
      return written;
    },

    /**
     * Streams the workspace (or `opts.paths` of it) as one archive to `dest` (via a temp file,
     * renamed when complete); resolves to its size in bytes. Format: "tar", "tar.gz" (default)
     * or "zip".
     */
    async downloadArchive(
      sessionId: string,
      dest: string,
      opts: { format?: ArchiveFormatName; paths?: string[]; jobId?: string } = {},
    ): Promise<number> {
      await mkdir(path.dirname(dest), { recursive: true });
      const tmp = path.join(path.dirname(dest), `.${path.basename(dest)}.agentd-partial`);
      const fd = await open(tmp, "w");
      try {
        let size = 0;
        try {
          for await (const res of files.downloadArchive({
            sessionId,
            paths: opts.paths ?? [],
            format: archiveFormat(opts.format ?? "tar.gz"),
            jobId: opts.jobId ?? "",
          })) {
            await writeAll(fd, res.chunk);
            size += res.chunk.length;
          }
        } finally {
          await fd.close();
        }
        await rename(tmp, dest);
        return size;
      } finally {
        await rm(tmp, { force: true });
      }
    },

    /**
     * Extracts a local tar, tar.gz or zip archive into `opts.dest` of the workspace, all or
     * nothing: a hostile or broken archive rejects and writes nothing.
     */
    async uploadArchive(
      sessionId: string,
      localArchive: string,
      opts: { format?: ArchiveFormatName; dest?: string } = {},
    ): Promise<UploadArchiveResponse> {
      async function* requests(): AsyncIterable<MessageInitShape<typeof UploadArchiveRequestSchema>> {
        yield {
          sessionId,
          part: { case: "header", value: { format: archiveFormat(opts.format ?? "tar.gz"), dest: opts.dest ?? "" } },
        };
        for await (const chunk of createReadStream(localArchive, { highWaterMark: CHUNK_SIZE })) {
          yield { part: { case: "chunk", value: new Uint8Array(chunk as Buffer) } };
        }
      }
      return files.uploadArchive(requests());
    },

    /** The workspace's file changes as they happen; resume with `afterSeq` (a seen event's seq). */
    async *watchFiles(
      sessionId: string,
      opts: { paths?: string[]; afterSeq?: bigint; signal?: AbortSignal } = {},
    ): AsyncGenerator<FileEvent> {
      for await (const res of files.watchFiles(
        { sessionId, paths: opts.paths ?? [], afterSeq: opts.afterSeq ?? 0n },
        { signal: opts.signal },
      )) {
        if (res.event) yield res.event;
      }
    },

    // ---- jobs -------------------------------------------------------------------------------

    async submit(sessionId: string, prompt: string, opts: JobOptions = {}): Promise<Job> {
      return (await jobs.submitJob({ requestId: randomUUID(), ...opts, sessionId, prompt })).job!;
    },

    /** Submits a job and streams its events; reattaches from the last seq on disconnects. */
    run(sessionId: string, prompt: string, opts: JobOptions = {}): JobRun {
      // Always set, so retrying a RunJob whose first reply was lost cannot run the job twice.
      const request = { requestId: randomUUID(), ...opts, sessionId, prompt };
      let job: Job | undefined;
      const cursor = new EventCursor(0n);
      const policy = new Reconnect(reconnectTimeoutMs);
      async function* generate(): AsyncGenerator<JobEvent> {
        while (job === undefined) {
          const ac = new AbortController();
          try {
            for await (const res of jobs.runJob({ job: request }, { signal: ac.signal })) {
              if (res.job && job === undefined) job = res.job;
              policy.progressed();
              yield* cursor.accept(res.events);
              if (cursor.finished) break;
            }
            if (job === undefined) {
              throw new AgentdError("RunJob ended without a job", Code.Internal, { reason: "", domain: "", metadata: {} });
            }
          } catch (e) {
            const err = toAgentdError(e);
            if (job !== undefined && isConnectionError(err)) break;
            await sleep(policy.nextDelay(err));
          } finally {
            ac.abort();
          }
        }
        if (!cursor.finished) yield* follow(job.jobId, cursor, policy);
        job = await finalJob(job.jobId);
      }
      let onPermission: ((req: PermissionRequest) => PermissionAnswer | Promise<PermissionAnswer>) | undefined;
      const notYet = () =>
        new AgentdError("the job is not submitted yet", Code.FailedPrecondition, { reason: "", domain: "", metadata: {} });
      async function answer(req: PermissionRequest): Promise<void> {
        const a = await onPermission!(req);
        if (a === undefined || job === undefined) return;
        const message = typeof a === "string" ? a : "";
        try {
          await jobs.respondToPermission({ jobId: job.jobId, requestId: req.requestId, allow: a === true, message });
        } catch (e) {
          // Another watcher, a rule or the timeout decided first: not the caller's failure.
          if (toAgentdError(e).reason !== "PERMISSION_DECIDED") throw e;
        }
      }
      async function* answered(): AsyncGenerator<JobEvent> {
        for await (const ev of generate()) {
          if (onPermission && ev.kind.case === "permissionRequest") await answer(ev.kind.value);
          yield ev;
        }
      }
      const events = answered();
      const run: JobRun = {
        get job() {
          return job;
        },
        [Symbol.asyncIterator]: () => events,
        async wait(): Promise<Job> {
          for await (const _ of events) { /* drain */ }
          return job!;
        },
        async cancel(): Promise<Job> {
          if (!job) throw notYet();
          return client.cancel(job.jobId);
        },
        onPermission(callback) {
          onPermission = callback;
          return run;
        },
        async send(text: string): Promise<void> {
          if (!job) throw notYet();
          await jobs.sendInput({ jobId: job.jobId, text });
        },
        async interrupt(): Promise<void> {
          if (!job) throw notYet();
          await jobs.interruptJob({ jobId: job.jobId });
        },
        async diff(opts: { paths?: string[]; contextLines?: number } = {}): Promise<string> {
          if (!job) throw notYet();
          return client.jobDiff(job.jobId, opts);
        },
      };
      return run;
    },

    async getJob(jobId: string): Promise<Job> {
      return (await jobs.getJob({ jobId })).job!;
    },

    async *listJobs(sessionId: string, opts: { states?: JobState[]; pageSize?: number } = {}): AsyncGenerator<Job> {
      let pageToken = "";
      do {
        const res = await jobs.listJobs({ sessionId, states: opts.states ?? [], pageSize: opts.pageSize ?? 0, pageToken });
        yield* res.jobs;
        pageToken = res.nextPageToken;
      } while (pageToken);
    },

    async cancel(jobId: string): Promise<Job> {
      return (await jobs.cancelJob({ jobId })).job!;
    },

    /** The job's events after `afterSeq`, each exactly once, ending with `finished`. */
    stream(jobId: string, opts: { afterSeq?: bigint } = {}): AsyncIterable<JobEvent> {
      return follow(jobId, new EventCursor(opts.afterSeq ?? 0n), new Reconnect(reconnectTimeoutMs));
    },

    /**
     * Every change of the caller's jobs (creation, start, finish) matching the filter, each once
     * and in order, forever. `afterCursor` replays retained changes after it (0n: all); absent
     * starts now. Resumes from the last position read when the connection drops.
     *
     * With `includeEvents` each change also carries the job's events since its previous change
     * this watch admits (`change.events`), so every event of the followed jobs arrives once, in
     * order; a change the server capped is completed from the job's event stream first.
     */
    async *watchJobs(
      opts: {
        sessionId?: string;
        labels?: Record<string, string>;
        agents?: string[];
        states?: JobState[];
        afterCursor?: bigint;
        includeEvents?: boolean;
      } = {},
    ): AsyncGenerator<JobChange> {
      const policy = new Reconnect(reconnectTimeoutMs);
      let cursor = opts.afterCursor;
      for (;;) {
        const ac = new AbortController();
        try {
          const req = {
            sessionId: opts.sessionId ?? "",
            labels: opts.labels ?? {},
            agents: opts.agents ?? [],
            states: opts.states ?? [],
            afterCursor: cursor,
            includeEvents: opts.includeEvents ?? false,
          };
          for await (const res of jobs.watchJobs(req, { signal: ac.signal })) {
            policy.progressed();
            for (const change of res.changes) {
              if (change.eventsTruncated) await completeEvents(change);
              yield change;
            }
            cursor = res.cursor;
          }
          await sleep(policy.nextDelay(new AgentdError("watch stream ended", Code.Unavailable, { reason: "", domain: "", metadata: {} })));
        } catch (e) {
          await sleep(policy.nextDelay(toAgentdError(e)));
        } finally {
          ac.abort();
        }
      }
    },

    /** One WaitJob call: the job once final, or as it is when the timeout passes first. */
    async waitJob(jobId: string, opts: { timeoutSeconds?: number } = {}): Promise<{ job: Job; timedOut: boolean }> {
      const res = await jobs.waitJob({ jobId, timeoutSeconds: opts.timeoutSeconds ?? 0 });
      return { job: res.job!, timedOut: res.timedOut };
    },

    /** Resolves to the job once it is final. */
    async wait(jobId: string): Promise<Job> {
      const job = await client.getJob(jobId);
      if (!FINAL_STATES.has(job.state)) {
        const after = job.lastSeq > 0n ? job.lastSeq - 1n : 0n;
        for await (const _ of client.stream(jobId, { afterSeq: after })) { /* drain */ }
      }
      return finalJob(jobId);
    },
  };
  return client;
}

export type AgentdClient = ReturnType<typeof createAgentdClient>;

/** An archive format by name. */
export type ArchiveFormatName = "tar" | "tar.gz" | "zip";

function archiveFormat(name: ArchiveFormatName): ArchiveFormat {
  switch (name) {
    case "tar":
      return ArchiveFormat.TAR;
    case "tar.gz":
      return ArchiveFormat.TAR_GZ;
    case "zip":
      return ArchiveFormat.ZIP;
    default:
      throw new Error(`unknown archive format ${String(name)}: use tar, tar.gz or zip`);
  }
}
