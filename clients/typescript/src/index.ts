// @agentd/client: the generated agentd.v1 services and messages, plus createAgentdClient() with
// helpers for sessions, files and job event streams.
export * from "./gen/agentd/v1/session_pb.js";
export * from "./gen/agentd/v1/job_pb.js";
export * from "./gen/agentd/v1/file_pb.js";
export * from "./gen/agentd/v1/server_info_pb.js";
export * from "./gen/agentd/v1/usage_pb.js";
export * from "./gen/agentd/v1/preset_pb.js";
export * from "./gen/agentd/v1/webhook_pb.js";
export {
  CHUNK_SIZE,
  FINAL_STATES,
  createAgentdClient,
  type AgentdClient,
  type AgentdClientOptions,
  type ArchiveFormatName,
  type CreateSessionOptions,
  type JobOptions,
  type JobRun,
  type PermissionAnswer,
  type PresetFields,
} from "./client.js";
export { PIECE_SIZE, uploadInPieces, type PieceUploadOptions } from "./pieces.js";
export {
  AgentdError,
  Code,
  ConnectError,
  ERROR_DOMAIN,
  errorInfo,
  errorReason,
  isAgentdError,
  toAgentdError,
} from "./errors.js";
export {
  WEBHOOK_SECRET_PREFIX,
  WEBHOOK_TOLERANCE_SECONDS,
  WebhookVerificationError,
  signWebhook,
  verifyWebhook,
  type WebhookHeaders,
} from "./webhooks.js";
export { textDeltas } from "./deltas.js";
