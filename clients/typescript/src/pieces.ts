// One-file uploads in unary pieces (FileService.UploadFileChunk), for transports that cannot
// stream a request: gRPC-Web in a browser, HTTP/1.1-only proxies. No Node imports, so the web
// console and the Node SDK share it. The server stages the pieces and commits the file
// atomically on the last one; a piece at a wrong offset is refused (OFFSET_OUT_OF_RANGE), so a
// retried piece is detected, never written twice.
import type { Client } from "@connectrpc/connect";
import type { FileInfo, FileService } from "./gen/agentd/v1/file_pb.js";

/** Bytes per piece by default (the server takes at most 1 MiB per piece). */
export const PIECE_SIZE = 512 * 1024;

export interface PieceUploadOptions {
  /** Bytes per UploadFileChunk call, at most 1 MiB. */
  pieceSize?: number;
  /** Unix permission bits of the file; 0o644 when unset. */
  mode?: number;
  /** Expected lowercase hex SHA-256, checked by the server before it commits. */
  sha256?: string;
  /** Called after each piece with the bytes sent so far. */
  onProgress?: (sent: number) => void;
  signal?: AbortSignal;
}

/** Uploads `data` to `path` in `sessionId`, piece by piece; resolves to the committed file. */
export async function uploadInPieces(
  files: Client<typeof FileService>,
  sessionId: string,
  path: string,
  data: Blob | Uint8Array,
  opts: PieceUploadOptions = {},
): Promise<FileInfo> {
  const size = opts.pieceSize ?? PIECE_SIZE;
  const total = data instanceof Blob ? data.size : data.length;
  // Bytes in memory are cut without copying; a Blob (a browser File) is read piece by piece.
  const piece = async (at: number) =>
    data instanceof Blob ? new Uint8Array(await data.slice(at, at + size).arrayBuffer()) : data.subarray(at, at + size);
  const uploadId = crypto.randomUUID();
  let offset = 0;
  for (;;) {
    const chunk = await piece(offset);
    const last = offset + chunk.length >= total;
    const r = await files.uploadFileChunk(
      {
        sessionId,
        uploadId,
        header: offset === 0 ? { path, size: BigInt(total), mode: opts.mode, sha256: opts.sha256 ?? "" } : undefined,
        offset: BigInt(offset),
        chunk,
        last,
      },
      { signal: opts.signal },
    );
    offset += chunk.length;
    opts.onProgress?.(offset);
    if (last) {
      if (!r.file) throw new Error(`the server committed ${path} without describing it`);
      return r.file;
    }
  }
}
