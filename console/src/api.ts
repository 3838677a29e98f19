// The console's only way to the server: the generated clients (the same files the Node SDK
// ships, clients/typescript/src/gen) over gRPC-Web to the page's own origin, with the API key the
// user entered (kept in sessionStorage: gone when the tab closes, never in localStorage or a URL).
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { FileService } from "../../clients/typescript/src/gen/agentd/v1/file_pb.js";
import { JobService, JobState, type JobEvent } from "../../clients/typescript/src/gen/agentd/v1/job_pb.js";
import { PresetService } from "../../clients/typescript/src/gen/agentd/v1/preset_pb.js";
import { UsageService } from "../../clients/typescript/src/gen/agentd/v1/usage_pb.js";
import { WebhookService } from "../../clients/typescript/src/gen/agentd/v1/webhook_pb.js";
import { ServerInfoService } from "../../clients/typescript/src/gen/agentd/v1/server_info_pb.js";
import { SessionService } from "../../clients/typescript/src/gen/agentd/v1/session_pb.js";
import { errorInterceptor, isAgentdError, Code } from "../../clients/typescript/src/errors.js";
import { uploadInPieces } from "../../clients/typescript/src/pieces.js";

export interface Api {
  sessions: Client<typeof SessionService>;
  jobs: Client<typeof JobService>;
  files: Client<typeof FileService>;
  info: Client<typeof ServerInfoService>;
  presets: Client<typeof PresetService>;
  usage: Client<typeof UsageService>;
  webhooks: Client<typeof WebhookService>;
}

const KEY_SLOT = "agentd.console.apiKey";

export const savedKey = (): string => sessionStorage.getItem(KEY_SLOT) ?? "";
export const saveKey = (key: string) => sessionStorage.setItem(KEY_SLOT, key);
export const forgetKey = () => sessionStorage.removeItem(KEY_SLOT);

export function connect(key: string): Api {
  const auth: Interceptor = (next) => (req) => {
    req.header.set("authorization", `Bearer ${key}`);
    return next(req);
  };
  const transport = createGrpcWebTransport({
    baseUrl: location.origin,
    useBinaryFormat: true,
    interceptors: [auth, errorInterceptor],
  });
  return {
    sessions: createClient(SessionService, transport),
    jobs: createClient(JobService, transport),
    files: createClient(FileService, transport),
    info: createClient(ServerInfoService, transport),
    presets: createClient(PresetService, transport),
    usage: createClient(UsageService, transport),
    webhooks: createClient(WebhookService, transport),
  };
}

/** "CODE (REASON): message" — what the user needs to act, and the stable reason to search for. */
export function describe(err: unknown): string {
  if (isAgentdError(err)) {
    const reason = err.reason ? ` (${err.reason})` : "";
    return `${Code[err.code] ?? err.code}${reason}: ${err.rawMessage}`;
  }
  return err instanceof Error ? err.message : String(err);
}

export const isUnauthenticated = (err: unknown) => isAgentdError(err) && err.code === Code.Unauthenticated;

export const FINAL = new Set([JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT]);

export const stateName = (s: JobState) => (JobState[s] ?? String(s)).toLowerCase().replace("_", " ");

/** "team=a, ticket=42" → labels; an entry without "=" is a label with an empty value. */
export function parseLabels(text: string): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const part of text.split(",")) {
    const [k, ...v] = part.split("=");
    if (k.trim()) labels[k.trim()] = v.join("=").trim();
  }
  return labels;
}

/** JSON indented for reading; anything else as it came. */
export function pretty(json: string): string {
  try {
    return JSON.stringify(JSON.parse(json), null, 2);
  } catch {
    return json;
  }
}

export function fmtBytes(n: bigint | number): string {
  let v = Number(n);
  for (const u of ["B", "KiB", "MiB", "GiB"]) {
    if (v < 1024 || u === "GiB") return u === "B" ? `${v} B` : `${v.toFixed(1)} ${u}`;
    v /= 1024;
  }
  return `${v}`;
}

export function fmtTime(t?: { seconds: bigint; nanos: number }): string {
  if (!t || t.seconds === 0n) return "—";
  return new Date(Number(t.seconds) * 1000 + Math.floor(t.nanos / 1e6)).toLocaleString();
}

/** Reads a server-streamed file into a Blob and hands it to the browser as a download. */
export async function download(api: Api, sessionId: string, path: string): Promise<void> {
  const parts: BlobPart[] = [];
  for await (const r of api.files.downloadFile({ sessionId, path })) {
    if (r.part.case === "chunk") parts.push(r.part.value.slice());
  }
  const url = URL.createObjectURL(new Blob(parts));
  const a = document.createElement("a");
  a.href = url;
  a.download = path.split("/").pop() || "download";
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/**
 * Uploads one browser File into a session: gRPC-Web cannot stream a request, so it goes in
 * unary UploadFileChunk pieces (the SDK's helper) that the server stages and commits atomically.
 */
export async function upload(api: Api, sessionId: string, path: string, file: Blob, onProgress: (sent: number) => void) {
  await uploadInPieces(api.files, sessionId, path, file, { onProgress });
}
