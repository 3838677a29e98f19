import type { MessageInitShape } from "@bufbuild/protobuf";
import { type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { type FileInfo, type GetJobOutputsResponse, type UploadFilesRequestSchema } from "./gen/agentd/v1/file_pb.js";
import { JobState, type Job, type JobEvent, type SubmitJobRequestSchema } from "./gen/agentd/v1/job_pb.js";
import { type GetServerInfoResponse } from "./gen/agentd/v1/server_info_pb.js";
import { type Session } from "./gen/agentd/v1/session_pb.js";
/** Upload chunk size: the server accepts at most 1 MiB per chunk. */
export declare const CHUNK_SIZE: number;
/** States after which a job never changes again. */
export declare const FINAL_STATES: ReadonlySet<JobState>;
export interface AgentdClientOptions {
    /** e.g. "http://127.0.0.1:50051"; default: AGENTD_URL. A bare host:port means http. */
    baseUrl?: string;
    /** Default: AGENTD_API_KEY. Sent as `authorization: Bearer <key>`. */
    apiKey?: string;
    /** How long streams keep reattaching without progress before giving up (default 30 s). */
    reconnectTimeoutMs?: number;
    /** Extra interceptors, run inside the auth and error ones. */
    interceptors?: Interceptor[];
}
/** Job options, as in SubmitJobRequest (minus session and prompt). */
export type JobOptions = Omit<MessageInitShape<typeof SubmitJobRequestSchema>, "sessionId" | "prompt" | "$typeName">;
export interface CreateSessionOptions {
    /** A local directory to upload (streamed), or workspace path → content (sent inline). */
    files?: string | Record<string, string | Uint8Array>;
    ttlSeconds?: number;
    labels?: Record<string, string>;
    requestId?: string;
}
/** A job started by run(): iterate it for the events; afterwards `job` is the final job. */
export interface JobRun extends AsyncIterable<JobEvent> {
    /** The job as submitted once known; the final job after the iteration or wait(). */
    readonly job: Job | undefined;
    /** Consumes the remaining events and resolves to the final job. */
    wait(): Promise<Job>;
    /** Cancels the job (once it is known). */
    cancel(): Promise<Job>;
}
export declare function createAgentdClient(options?: AgentdClientOptions): {
    /** The generated Connect clients, authenticated, errors mapped to AgentdError. */
    sessions: Client<import("@bufbuild/protobuf/codegenv2").GenService<{
        createSession: {
            methodKind: "unary";
            input: typeof import("./gen/agentd/v1/session_pb.js").CreateSessionRequestSchema;
            output: typeof import("./gen/agentd/v1/session_pb.js").CreateSessionResponseSchema;
        };
        getSession: {
            methodKind: "unary";
            input: typeof import("./gen/agentd/v1/session_pb.js").GetSessionRequestSchema;
            output: typeof import("./gen/agentd/v1/session_pb.js").GetSessionResponseSchema;
        };
        listSessions: {
            methodKind: "unary";
            input: typeof import("./gen/agentd/v1/session_pb.js").ListSessionsRequestSchema;
            output: typeof import("./gen/agentd/v1/session_pb.js").ListSessionsResponseSchema;
        };
        deleteSession: {
            methodKind: "unary";
            input: typeof import("./gen/agentd/v1/session_pb.js").DeleteSessionRequestSchema;
            output: typeof import("./gen/agentd/v1/session_pb.js").DeleteSessionResponseSchema;
        };
    }>>;
    jobs: Client<import("@bufbuild/protobuf/codegenv2").GenService<{
        submitJob: {
            methodKind: "unary";
            input: typeof SubmitJobRequestSchema;
            output: typeof import("./gen/agentd/v1/job_pb.js").SubmitJobResponseSchema;
        };
        getJob: {
            methodKind: "unary";
            input: typeof import("./gen/agentd/v1/job_pb.js").GetJobRequestSchema;
            output: typeof import("./gen/agentd/v1/job_pb.js").GetJobResponseSchema;
        };
        listJobs: {
            methodKind: "unary";
            input: typeof import("./gen/agentd/v1/job_pb.js").ListJobsRequestSchema;
            output: typeof import("./gen/agentd/v1/job_pb.js").ListJobsResponseSchema;
        };
        cancelJob: {
            methodKind: "unary";
            input: typeof import("./gen/agentd/v1/job_pb.js").CancelJobRequestSchema;
            output: typeof import("./gen/agentd/v1/job_pb.js").CancelJobResponseSchema;
        };
        streamJobEvents: {
            methodKind: "server_streaming";
            input: typeof import("./gen/agentd/v1/job_pb.js").StreamJobEventsRequestSchema;
            output: typeof import("./gen/agentd/v1/job_pb.js").StreamJobEventsResponseSchema;
        };
        runJob: {
            methodKind: "server_streaming";
            input: typeof import("./gen/agentd/v1/job_pb.js").RunJobRequestSchema;
            output: typeof import("./gen/agentd/v1/job_pb.js").RunJobResponseSchema;
        };
    }>>;
    files: Client<import("@bufbuild/protobuf/codegenv2").GenService<{
        uploadFiles: {
            methodKind: "client_streaming";
            input: typeof UploadFilesRequestSchema;
            output: typeof import("./gen/agentd/v1/file_pb.js").UploadFilesResponseSchema;
        };
        downloadFile: {
            methodKind: "server_streaming";
            input: typeof import("./gen/agentd/v1/file_pb.js").DownloadFileRequestSchema;
            output: typeof import("./gen/agentd/v1/file_pb.js").DownloadFileResponseSchema;
        };
        listFiles: {
            methodKind: "unary";
            input: typeof import("./gen/agentd/v1/file_pb.js").ListFilesRequestSchema;
            output: typeof import("./gen/agentd/v1/file_pb.js").ListFilesResponseSchema;
        };
        getJobOutputs: {
            methodKind: "unary";
            input: typeof import("./gen/agentd/v1/file_pb.js").GetJobOutputsRequestSchema;
            output: typeof import("./gen/agentd/v1/file_pb.js").GetJobOutputsResponseSchema;
        };
        deleteFile: {
            methodKind: "unary";
            input: typeof import("./gen/agentd/v1/file_pb.js").DeleteFileRequestSchema;
            output: typeof import("./gen/agentd/v1/file_pb.js").DeleteFileResponseSchema;
        };
    }>>;
    server: Client<import("@bufbuild/protobuf/codegenv2").GenService<{
        getServerInfo: {
            methodKind: "unary";
            input: typeof import("./gen/agentd/v1/server_info_pb.js").GetServerInfoRequestSchema;
            output: typeof import("./gen/agentd/v1/server_info_pb.js").GetServerInfoResponseSchema;
        };
    }>>;
    transport: Transport;
    baseUrl: string;
    /** Closes the HTTP/2 connection (and any open streams). */
    close(): void;
    /** The server's version, agents (with availability) and limits. */
    serverInfo(): Promise<GetServerInfoResponse>;
    createSession(opts?: CreateSessionOptions): Promise<Session>;
    getSession(sessionId: string): Promise<Session>;
    /** All of the caller's sessions, newest first, fetching pages as needed. */
    listSessions(opts?: {
        labelFilter?: Record<string, string>;
        pageSize?: number;
    }): AsyncGenerator<Session>;
    /** Deletes a session; resolves to the number of jobs that cancelled. */
    deleteSession(sessionId: string): Promise<number>;
    /** Uploads workspace path → local file path or bytes, in one stream of ≤ 1 MiB chunks. */
    upload(sessionId: string, filesToSend: Record<string, string | Uint8Array>): Promise<FileInfo[]>;
    /** Uploads every regular file under `localDir` (modes kept) to `prefix/`. */
    uploadDir(sessionId: string, localDir: string, prefix?: string): Promise<FileInfo[]>;
    /** Streams one workspace file to `dest` (via a temp file, renamed when complete). */
    download(sessionId: string, remote: string, dest: string, opts?: {
        offset?: bigint;
        includeSha256?: boolean;
    }): Promise<FileInfo | undefined>;
    /** A small file's content (use download() for large ones). */
    readFile(sessionId: string, remote: string): Promise<Uint8Array>;
    /** Every entry under `dir` (recursively, in path order), fetching pages as needed. */
    listFiles(sessionId: string, dir?: string, opts?: {
        includeSha256?: boolean;
        pageSize?: number;
    }): AsyncGenerator<FileInfo>;
    deleteFile(sessionId: string, remote: string, opts?: {
        recursive?: boolean;
    }): Promise<bigint>;
    /** What a job changed (default: the session's latest succeeded job). */
    outputs(sessionId: string, jobId?: string): Promise<GetJobOutputsResponse>;
    /** Downloads every file the job added or modified into `destDir`; resolves to local paths. */
    downloadOutputs(sessionId: string, destDir: string, jobId?: string): Promise<string[]>;
    submit(sessionId: string, prompt: string, opts?: JobOptions): Promise<Job>;
    /** Submits a job and streams its events; reattaches from the last seq on disconnects. */
    run(sessionId: string, prompt: string, opts?: JobOptions): JobRun;
    getJob(jobId: string): Promise<Job>;
    listJobs(sessionId: string, opts?: {
        states?: JobState[];
        pageSize?: number;
    }): AsyncGenerator<Job>;
    cancel(jobId: string): Promise<Job>;
    /** The job's events after `afterSeq`, each exactly once, ending with `finished`. */
    stream(jobId: string, opts?: {
        afterSeq?: bigint;
    }): AsyncIterable<JobEvent>;
    /** Resolves to the job once it is final. */
    wait(jobId: string): Promise<Job>;
};
export type AgentdClient = ReturnType<typeof createAgentdClient>;
//# sourceMappingURL=client.d.ts.map