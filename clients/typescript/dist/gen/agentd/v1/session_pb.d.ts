import type { GenFile, GenMessage, GenService } from "@bufbuild/protobuf/codegenv2";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import type { Message } from "@bufbuild/protobuf";
/**
 * Describes the file agentd/v1/session.proto.
 */
export declare const file_agentd_v1_session: GenFile;
/**
 * A session: a workspace directory where jobs run one at a time, in submit order.
 *
 * @generated from message agentd.v1.Session
 */
export type Session = Message<"agentd.v1.Session"> & {
    /**
     * Server-assigned identifier, e.g. `ses_0192f3c1...`.
     *
     * @generated from field: string session_id = 1;
     */
    sessionId: string;
    /**
     * Labels given at creation; usable as a filter in ListSessions.
     *
     * @generated from field: map<string, string> labels = 2;
     */
    labels: {
        [key: string]: string;
    };
    /**
     * When the session was created.
     *
     * @generated from field: google.protobuf.Timestamp create_time = 3;
     */
    createTime?: Timestamp | undefined;
    /**
     * When the session expires if nothing extends it. Submitting a job extends it by `ttl_seconds`.
     *
     * @generated from field: google.protobuf.Timestamp expire_time = 4;
     */
    expireTime?: Timestamp | undefined;
    /**
     * Time to live after the last activity, in seconds.
     *
     * @generated from field: uint32 ttl_seconds = 5;
     */
    ttlSeconds: number;
    /**
     * Number of regular files currently in the workspace.
     *
     * @generated from field: uint64 file_count = 6;
     */
    fileCount: bigint;
    /**
     * Total size of the regular files in the workspace, in bytes.
     *
     * @generated from field: uint64 total_bytes = 7;
     */
    totalBytes: bigint;
    /**
     * Number of jobs ever submitted to this session.
     *
     * @generated from field: uint64 job_count = 8;
     */
    jobCount: bigint;
    /**
     * The job currently running in this session, if any.
     *
     * @generated from field: string running_job_id = 9;
     */
    runningJobId: string;
    /**
     * The agent's own conversation id from the session's latest job; the next job resumes it.
     *
     * @generated from field: string conversation_id = 10;
     */
    conversationId: string;
};
/**
 * Describes the message agentd.v1.Session.
 * Use `create(SessionSchema)` to create a new message.
 */
export declare const SessionSchema: GenMessage<Session>;
/**
 * One file given inline at session creation.
 *
 * @generated from message agentd.v1.FileContent
 */
export type FileContent = Message<"agentd.v1.FileContent"> & {
    /**
     * Relative path inside the workspace, with `/` separators, e.g. `src/main.py`.
     *
     * @generated from field: string path = 1;
     */
    path: string;
    /**
     * The file's bytes.
     *
     * @generated from field: bytes content = 2;
     */
    content: Uint8Array;
    /**
     * Unix permission bits (e.g. 0o755 = 493); 0o644 when absent.
     *
     * @generated from field: optional uint32 mode = 3;
     */
    mode?: number | undefined;
};
/**
 * Describes the message agentd.v1.FileContent.
 * Use `create(FileContentSchema)` to create a new message.
 */
export declare const FileContentSchema: GenMessage<FileContent>;
/**
 * Request for SessionService.CreateSession.
 *
 * @generated from message agentd.v1.CreateSessionRequest
 */
export type CreateSessionRequest = Message<"agentd.v1.CreateSessionRequest"> & {
    /**
     * Files to place in the workspace before anything runs. Limits on count and size apply.
     *
     * @generated from field: repeated agentd.v1.FileContent files = 1;
     */
    files: FileContent[];
    /**
     * Time to live in seconds after the last activity; 0 means the server default.
     *
     * @generated from field: uint32 ttl_seconds = 2;
     */
    ttlSeconds: number;
    /**
     * Free-form labels (keys 1-63 chars of [a-z0-9_.-], values up to 256 chars).
     *
     * @generated from field: map<string, string> labels = 3;
     */
    labels: {
        [key: string]: string;
    };
    /**
     * Idempotency key: a second request with the same key returns the session the first created.
     *
     * @generated from field: string request_id = 4;
     */
    requestId: string;
};
/**
 * Describes the message agentd.v1.CreateSessionRequest.
 * Use `create(CreateSessionRequestSchema)` to create a new message.
 */
export declare const CreateSessionRequestSchema: GenMessage<CreateSessionRequest>;
/**
 * Response for SessionService.CreateSession.
 *
 * @generated from message agentd.v1.CreateSessionResponse
 */
export type CreateSessionResponse = Message<"agentd.v1.CreateSessionResponse"> & {
    /**
     * The created (or, for a repeated `request_id`, the previously created) session.
     *
     * @generated from field: agentd.v1.Session session = 1;
     */
    session?: Session | undefined;
};
/**
 * Describes the message agentd.v1.CreateSessionResponse.
 * Use `create(CreateSessionResponseSchema)` to create a new message.
 */
export declare const CreateSessionResponseSchema: GenMessage<CreateSessionResponse>;
/**
 * Request for SessionService.GetSession.
 *
 * @generated from message agentd.v1.GetSessionRequest
 */
export type GetSessionRequest = Message<"agentd.v1.GetSessionRequest"> & {
    /**
     * The session to fetch.
     *
     * @generated from field: string session_id = 1;
     */
    sessionId: string;
};
/**
 * Describes the message agentd.v1.GetSessionRequest.
 * Use `create(GetSessionRequestSchema)` to create a new message.
 */
export declare const GetSessionRequestSchema: GenMessage<GetSessionRequest>;
/**
 * Response for SessionService.GetSession.
 *
 * @generated from message agentd.v1.GetSessionResponse
 */
export type GetSessionResponse = Message<"agentd.v1.GetSessionResponse"> & {
    /**
     * The session.
     *
     * @generated from field: agentd.v1.Session session = 1;
     */
    session?: Session | undefined;
};
/**
 * Describes the message agentd.v1.GetSessionResponse.
 * Use `create(GetSessionResponseSchema)` to create a new message.
 */
export declare const GetSessionResponseSchema: GenMessage<GetSessionResponse>;
/**
 * Request for SessionService.ListSessions.
 *
 * @generated from message agentd.v1.ListSessionsRequest
 */
export type ListSessionsRequest = Message<"agentd.v1.ListSessionsRequest"> & {
    /**
     * Maximum number of sessions to return (1-1000); 0 means 100.
     *
     * @generated from field: int32 page_size = 1;
     */
    pageSize: number;
    /**
     * Opaque token from a previous response's `next_page_token`.
     *
     * @generated from field: string page_token = 2;
     */
    pageToken: string;
    /**
     * Only sessions carrying all of these labels with these values are returned.
     *
     * @generated from field: map<string, string> label_filter = 3;
     */
    labelFilter: {
        [key: string]: string;
    };
};
/**
 * Describes the message agentd.v1.ListSessionsRequest.
 * Use `create(ListSessionsRequestSchema)` to create a new message.
 */
export declare const ListSessionsRequestSchema: GenMessage<ListSessionsRequest>;
/**
 * Response for SessionService.ListSessions.
 *
 * @generated from message agentd.v1.ListSessionsResponse
 */
export type ListSessionsResponse = Message<"agentd.v1.ListSessionsResponse"> & {
    /**
     * The page of sessions, newest first.
     *
     * @generated from field: repeated agentd.v1.Session sessions = 1;
     */
    sessions: Session[];
    /**
     * Token for the next page; empty when there are no more.
     *
     * @generated from field: string next_page_token = 2;
     */
    nextPageToken: string;
};
/**
 * Describes the message agentd.v1.ListSessionsResponse.
 * Use `create(ListSessionsResponseSchema)` to create a new message.
 */
export declare const ListSessionsResponseSchema: GenMessage<ListSessionsResponse>;
/**
 * Request for SessionService.DeleteSession.
 *
 * @generated from message agentd.v1.DeleteSessionRequest
 */
export type DeleteSessionRequest = Message<"agentd.v1.DeleteSessionRequest"> & {
    /**
     * The session to delete.
     *
     * @generated from field: string session_id = 1;
     */
    sessionId: string;
};
/**
 * Describes the message agentd.v1.DeleteSessionRequest.
 * Use `create(DeleteSessionRequestSchema)` to create a new message.
 */
export declare const DeleteSessionRequestSchema: GenMessage<DeleteSessionRequest>;
/**
 * Response for SessionService.DeleteSession.
 *
 * @generated from message agentd.v1.DeleteSessionResponse
 */
export type DeleteSessionResponse = Message<"agentd.v1.DeleteSessionResponse"> & {
    /**
     * Number of queued or running jobs that were cancelled by the deletion.
     *
     * @generated from field: uint32 cancelled_jobs = 1;
     */
    cancelledJobs: number;
};
/**
 * Describes the message agentd.v1.DeleteSessionResponse.
 * Use `create(DeleteSessionResponseSchema)` to create a new message.
 */
export declare const DeleteSessionResponseSchema: GenMessage<DeleteSessionResponse>;
/**
 * SessionService manages sessions: isolated workspaces (a directory of files plus a private HOME
 * for the agent) in which jobs run. A session lives until it is deleted or its TTL expires.
 *
 * @generated from service agentd.v1.SessionService
 */
export declare const SessionService: GenService<{
    /**
     * Creates a session, optionally with initial files. Idempotent per `request_id`.
     *
     * @generated from rpc agentd.v1.SessionService.CreateSession
     */
    createSession: {
        methodKind: "unary";
        input: typeof CreateSessionRequestSchema;
        output: typeof CreateSessionResponseSchema;
    };
    /**
     * Returns one session of the caller's tenant.
     *
     * @generated from rpc agentd.v1.SessionService.GetSession
     */
    getSession: {
        methodKind: "unary";
        input: typeof GetSessionRequestSchema;
        output: typeof GetSessionResponseSchema;
    };
    /**
     * Lists the caller's sessions, newest first, with optional label filtering.
     *
     * @generated from rpc agentd.v1.SessionService.ListSessions
     */
    listSessions: {
        methodKind: "unary";
        input: typeof ListSessionsRequestSchema;
        output: typeof ListSessionsResponseSchema;
    };
    /**
     * Deletes a session: cancels its queued and running jobs and removes its workspace.
     *
     * @generated from rpc agentd.v1.SessionService.DeleteSession
     */
    deleteSession: {
        methodKind: "unary";
        input: typeof DeleteSessionRequestSchema;
        output: typeof DeleteSessionResponseSchema;
    };
}>;
//# sourceMappingURL=session_pb.d.ts.map