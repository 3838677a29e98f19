import type { GenEnum, GenFile, GenMessage, GenService } from "@bufbuild/protobuf/codegenv2";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import type { Message } from "@bufbuild/protobuf";
/**
 * Describes the file agentd/v1/file.proto.
 */
export declare const file_agentd_v1_file: GenFile;
/**
 * Metadata of one workspace entry.
 *
 * @generated from message agentd.v1.FileInfo
 */
export type FileInfo = Message<"agentd.v1.FileInfo"> & {
    /**
     * Relative path inside the workspace, with `/` separators.
     *
     * @generated from field: string path = 1;
     */
    path: string;
    /**
     * The entry's kind.
     *
     * @generated from field: agentd.v1.FileType type = 2;
     */
    type: FileType;
    /**
     * Size in bytes (regular files).
     *
     * @generated from field: uint64 size = 3;
     */
    size: bigint;
    /**
     * Unix permission bits.
     *
     * @generated from field: uint32 mode = 4;
     */
    mode: number;
    /**
     * Last modification time.
     *
     * @generated from field: google.protobuf.Timestamp modify_time = 5;
     */
    modifyTime?: Timestamp | undefined;
    /**
     * Lowercase hex SHA-256 of the content, when requested (or always for uploads).
     *
     * @generated from field: string sha256 = 6;
     */
    sha256: string;
    /**
     * For symlinks: the link target, as stored.
     *
     * @generated from field: string symlink_target = 7;
     */
    symlinkTarget: string;
};
/**
 * Describes the message agentd.v1.FileInfo.
 * Use `create(FileInfoSchema)` to create a new message.
 */
export declare const FileInfoSchema: GenMessage<FileInfo>;
/**
 * Announces one file in an upload stream.
 *
 * @generated from message agentd.v1.UploadFileHeader
 */
export type UploadFileHeader = Message<"agentd.v1.UploadFileHeader"> & {
    /**
     * Relative path inside the workspace. Missing parent directories are created.
     *
     * @generated from field: string path = 1;
     */
    path: string;
    /**
     * Unix permission bits; 0o644 when absent.
     *
     * @generated from field: optional uint32 mode = 2;
     */
    mode?: number | undefined;
    /**
     * Expected size in bytes, checked when given.
     *
     * @generated from field: optional uint64 size = 3;
     */
    size?: bigint | undefined;
    /**
     * Expected lowercase hex SHA-256 of the content, checked when given.
     *
     * @generated from field: string sha256 = 4;
     */
    sha256: string;
};
/**
 * Describes the message agentd.v1.UploadFileHeader.
 * Use `create(UploadFileHeaderSchema)` to create a new message.
 */
export declare const UploadFileHeaderSchema: GenMessage<UploadFileHeader>;
/**
 * Request message of FileService.UploadFiles (a client stream).
 *
 * @generated from message agentd.v1.UploadFilesRequest
 */
export type UploadFilesRequest = Message<"agentd.v1.UploadFilesRequest"> & {
    /**
     * The target session. Required on the first message; later messages may repeat it.
     *
     * @generated from field: string session_id = 1;
     */
    sessionId: string;
    /**
     * A header starting a new file, or a chunk of the current file.
     *
     * @generated from oneof agentd.v1.UploadFilesRequest.part
     */
    part: {
        /**
         * Starts a new file; ends the previous one.
         *
         * @generated from field: agentd.v1.UploadFileHeader header = 2;
         */
        value: UploadFileHeader;
        case: "header";
    } | {
        /**
         * Up to 1 MiB of the current file's content.
         *
         * @generated from field: bytes chunk = 3;
         */
        value: Uint8Array;
        case: "chunk";
    } | {
        case: undefined;
        value?: undefined;
    };
};
/**
 * Describes the message agentd.v1.UploadFilesRequest.
 * Use `create(UploadFilesRequestSchema)` to create a new message.
 */
export declare const UploadFilesRequestSchema: GenMessage<UploadFilesRequest>;
/**
 * Response for FileService.UploadFiles.
 *
 * @generated from message agentd.v1.UploadFilesResponse
 */
export type UploadFilesResponse = Message<"agentd.v1.UploadFilesResponse"> & {
    /**
     * The files written, with size and SHA-256.
     *
     * @generated from field: repeated agentd.v1.FileInfo files = 1;
     */
    files: FileInfo[];
};
/**
 * Describes the message agentd.v1.UploadFilesResponse.
 * Use `create(UploadFilesResponseSchema)` to create a new message.
 */
export declare const UploadFilesResponseSchema: GenMessage<UploadFilesResponse>;
/**
 * Request for FileService.DownloadFile.
 *
 * @generated from message agentd.v1.DownloadFileRequest
 */
export type DownloadFileRequest = Message<"agentd.v1.DownloadFileRequest"> & {
    /**
     * The session.
     *
     * @generated from field: string session_id = 1;
     */
    sessionId: string;
    /**
     * Relative path of a regular file inside the workspace.
     *
     * @generated from field: string path = 2;
     */
    path: string;
    /**
     * Byte offset to start from, to resume an interrupted download.
     *
     * @generated from field: uint64 offset = 3;
     */
    offset: bigint;
    /**
     * Whether to compute the whole file's SHA-256 and put it in the info message.
     *
     * @generated from field: bool include_sha256 = 4;
     */
    includeSha256: boolean;
};
/**
 * Describes the message agentd.v1.DownloadFileRequest.
 * Use `create(DownloadFileRequestSchema)` to create a new message.
 */
export declare const DownloadFileRequestSchema: GenMessage<DownloadFileRequest>;
/**
 * Response message of FileService.DownloadFile (a server stream).
 *
 * @generated from message agentd.v1.DownloadFileResponse
 */
export type DownloadFileResponse = Message<"agentd.v1.DownloadFileResponse"> & {
    /**
     * The file's info first, then its content.
     *
     * @generated from oneof agentd.v1.DownloadFileResponse.part
     */
    part: {
        /**
         * The file's metadata; the first message.
         *
         * @generated from field: agentd.v1.FileInfo info = 1;
         */
        value: FileInfo;
        case: "info";
    } | {
        /**
         * Up to 1 MiB of content, in order, starting at the requested offset.
         *
         * @generated from field: bytes chunk = 2;
         */
        value: Uint8Array;
        case: "chunk";
    } | {
        case: undefined;
        value?: undefined;
    };
};
/**
 * Describes the message agentd.v1.DownloadFileResponse.
 * Use `create(DownloadFileResponseSchema)` to create a new message.
 */
export declare const DownloadFileResponseSchema: GenMessage<DownloadFileResponse>;
/**
 * Request for FileService.ListFiles.
 *
 * @generated from message agentd.v1.ListFilesRequest
 */
export type ListFilesRequest = Message<"agentd.v1.ListFilesRequest"> & {
    /**
     * The session.
     *
     * @generated from field: string session_id = 1;
     */
    sessionId: string;
    /**
     * Directory to list, relative to the workspace root; empty means the root.
     *
     * @generated from field: string path = 2;
     */
    path: string;
    /**
     * Whether to compute each regular file's SHA-256.
     *
     * @generated from field: bool include_sha256 = 3;
     */
    includeSha256: boolean;
    /**
     * Maximum number of entries to return (1-10000); 0 means 1000.
     *
     * @generated from field: int32 page_size = 4;
     */
    pageSize: number;
    /**
     * Opaque token from a previous response's `next_page_token`.
     *
     * @generated from field: string page_token = 5;
     */
    pageToken: string;
};
/**
 * Describes the message agentd.v1.ListFilesRequest.
 * Use `create(ListFilesRequestSchema)` to create a new message.
 */
export declare const ListFilesRequestSchema: GenMessage<ListFilesRequest>;
/**
 * Response for FileService.ListFiles.
 *
 * @generated from message agentd.v1.ListFilesResponse
 */
export type ListFilesResponse = Message<"agentd.v1.ListFilesResponse"> & {
    /**
     * Entries in path order (directories and symlinks included; symlinks never followed).
     *
     * @generated from field: repeated agentd.v1.FileInfo files = 1;
     */
    files: FileInfo[];
    /**
     * Token for the next page; empty when there are no more.
     *
     * @generated from field: string next_page_token = 2;
     */
    nextPageToken: string;
};
/**
 * Describes the message agentd.v1.ListFilesResponse.
 * Use `create(ListFilesResponseSchema)` to create a new message.
 */
export declare const ListFilesResponseSchema: GenMessage<ListFilesResponse>;
/**
 * One file a job changed.
 *
 * @generated from message agentd.v1.FileChange
 */
export type FileChange = Message<"agentd.v1.FileChange"> & {
    /**
     * Relative path inside the workspace.
     *
     * @generated from field: string path = 1;
     */
    path: string;
    /**
     * What happened to it.
     *
     * @generated from field: agentd.v1.ChangeKind kind = 2;
     */
    kind: ChangeKind;
    /**
     * The file after the job; unset for deleted files.
     *
     * @generated from field: agentd.v1.FileInfo file = 3;
     */
    file?: FileInfo | undefined;
};
/**
 * Describes the message agentd.v1.FileChange.
 * Use `create(FileChangeSchema)` to create a new message.
 */
export declare const FileChangeSchema: GenMessage<FileChange>;
/**
 * Request for FileService.GetJobOutputs.
 *
 * @generated from message agentd.v1.GetJobOutputsRequest
 */
export type GetJobOutputsRequest = Message<"agentd.v1.GetJobOutputsRequest"> & {
    /**
     * The session.
     *
     * @generated from field: string session_id = 1;
     */
    sessionId: string;
    /**
     * The job; empty means the session's latest succeeded job.
     *
     * @generated from field: string job_id = 2;
     */
    jobId: string;
};
/**
 * Describes the message agentd.v1.GetJobOutputsRequest.
 * Use `create(GetJobOutputsRequestSchema)` to create a new message.
 */
export declare const GetJobOutputsRequestSchema: GenMessage<GetJobOutputsRequest>;
/**
 * Response for FileService.GetJobOutputs.
 *
 * @generated from message agentd.v1.GetJobOutputsResponse
 */
export type GetJobOutputsResponse = Message<"agentd.v1.GetJobOutputsResponse"> & {
    /**
     * The job the changes belong to.
     *
     * @generated from field: string job_id = 1;
     */
    jobId: string;
    /**
     * The changed files, in path order.
     *
     * @generated from field: repeated agentd.v1.FileChange changes = 2;
     */
    changes: FileChange[];
};
/**
 * Describes the message agentd.v1.GetJobOutputsResponse.
 * Use `create(GetJobOutputsResponseSchema)` to create a new message.
 */
export declare const GetJobOutputsResponseSchema: GenMessage<GetJobOutputsResponse>;
/**
 * Request for FileService.DeleteFile.
 *
 * @generated from message agentd.v1.DeleteFileRequest
 */
export type DeleteFileRequest = Message<"agentd.v1.DeleteFileRequest"> & {
    /**
     * The session.
     *
     * @generated from field: string session_id = 1;
     */
    sessionId: string;
    /**
     * Relative path of the file or directory to delete.
     *
     * @generated from field: string path = 2;
     */
    path: string;
    /**
     * Required to delete a non-empty directory.
     *
     * @generated from field: bool recursive = 3;
     */
    recursive: boolean;
};
/**
 * Describes the message agentd.v1.DeleteFileRequest.
 * Use `create(DeleteFileRequestSchema)` to create a new message.
 */
export declare const DeleteFileRequestSchema: GenMessage<DeleteFileRequest>;
/**
 * Response for FileService.DeleteFile.
 *
 * @generated from message agentd.v1.DeleteFileResponse
 */
export type DeleteFileResponse = Message<"agentd.v1.DeleteFileResponse"> & {
    /**
     * Number of files removed.
     *
     * @generated from field: uint64 deleted_files = 1;
     */
    deletedFiles: bigint;
};
/**
 * Describes the message agentd.v1.DeleteFileResponse.
 * Use `create(DeleteFileResponseSchema)` to create a new message.
 */
export declare const DeleteFileResponseSchema: GenMessage<DeleteFileResponse>;
/**
 * The kind of a workspace entry.
 *
 * @generated from enum agentd.v1.FileType
 */
export declare enum FileType {
    /**
     * Not set.
     *
     * @generated from enum value: FILE_TYPE_UNSPECIFIED = 0;
     */
    UNSPECIFIED = 0,
    /**
     * A regular file.
     *
     * @generated from enum value: FILE_TYPE_REGULAR = 1;
     */
    REGULAR = 1,
    /**
     * A directory.
     *
     * @generated from enum value: FILE_TYPE_DIRECTORY = 2;
     */
    DIRECTORY = 2,
    /**
     * A symbolic link (never followed by the server).
     *
     * @generated from enum value: FILE_TYPE_SYMLINK = 3;
     */
    SYMLINK = 3
}
/**
 * Describes the enum agentd.v1.FileType.
 */
export declare const FileTypeSchema: GenEnum<FileType>;
/**
 * How a job changed a file.
 *
 * @generated from enum agentd.v1.ChangeKind
 */
export declare enum ChangeKind {
    /**
     * Not set.
     *
     * @generated from enum value: CHANGE_KIND_UNSPECIFIED = 0;
     */
    UNSPECIFIED = 0,
    /**
     * The file did not exist before the job.
     *
     * @generated from enum value: CHANGE_KIND_ADDED = 1;
     */
    ADDED = 1,
    /**
     * The file's content, size or mode changed.
     *
     * @generated from enum value: CHANGE_KIND_MODIFIED = 2;
     */
    MODIFIED = 2,
    /**
     * The file existed before the job and does not after.
     *
     * @generated from enum value: CHANGE_KIND_DELETED = 3;
     */
    DELETED = 3
}
/**
 * Describes the enum agentd.v1.ChangeKind.
 */
export declare const ChangeKindSchema: GenEnum<ChangeKind>;
/**
 * FileService moves files in and out of a session's workspace, streamed in chunks, and reports
 * what a job changed.
 *
 * @generated from service agentd.v1.FileService
 */
export declare const FileService: GenService<{
    /**
     * Uploads files with a client stream: for each file a header, then its content in chunks of at
     * most 1 MiB. All files are staged under temporary names and renamed into place only when the
     * stream ends cleanly, so a broken upload leaves nothing behind.
     *
     * @generated from rpc agentd.v1.FileService.UploadFiles
     */
    uploadFiles: {
        methodKind: "client_streaming";
        input: typeof UploadFilesRequestSchema;
        output: typeof UploadFilesResponseSchema;
    };
    /**
     * Downloads one file: the first message carries its info, the following ones its content.
     *
     * @generated from rpc agentd.v1.FileService.DownloadFile
     */
    downloadFile: {
        methodKind: "server_streaming";
        input: typeof DownloadFileRequestSchema;
        output: typeof DownloadFileResponseSchema;
    };
    /**
     * Lists the files under a directory of the workspace, recursively.
     *
     * @generated from rpc agentd.v1.FileService.ListFiles
     */
    listFiles: {
        methodKind: "unary";
        input: typeof ListFilesRequestSchema;
        output: typeof ListFilesResponseSchema;
    };
    /**
     * Lists the files a job added, modified or deleted.
     *
     * @generated from rpc agentd.v1.FileService.GetJobOutputs
     */
    getJobOutputs: {
        methodKind: "unary";
        input: typeof GetJobOutputsRequestSchema;
        output: typeof GetJobOutputsResponseSchema;
    };
    /**
     * Deletes one file, or a directory with `recursive`.
     *
     * @generated from rpc agentd.v1.FileService.DeleteFile
     */
    deleteFile: {
        methodKind: "unary";
        input: typeof DeleteFileRequestSchema;
        output: typeof DeleteFileResponseSchema;
    };
}>;
//# sourceMappingURL=file_pb.d.ts.map