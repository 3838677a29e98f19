import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
/** ErrorInfo.domain of agentd's own errors. */
export declare const ERROR_DOMAIN = "agentd";
declare const brand: unique symbol;
/** A failed agentd call: `code` is the gRPC code, `reason` the stable cause (or ""). */
export declare class AgentdError extends ConnectError {
    /** e.g. "JOB_NOT_FOUND"; empty when the server (or transport) gave none. */
    readonly reason: string;
    /** "agentd" for agentd's own errors. */
    readonly domain: string;
    /** ErrorInfo metadata, e.g. the offending `field`. */
    readonly errorMetadata: Record<string, string>;
    readonly [brand] = true;
    constructor(message: string, code: Code, info: {
        reason: string;
        domain: string;
        metadata: Record<string, string>;
    }, metadata?: Headers, cause?: unknown, details?: ConnectError["details"]);
}
interface ErrorInfo {
    reason: string;
    domain: string;
    metadata: Record<string, string>;
}
/** The ErrorInfo carried by an error, if any. */
export declare function errorInfo(err: unknown): ErrorInfo | undefined;
/** Whether `err` is an AgentdError. (`instanceof` cannot tell: ConnectError's Symbol.hasInstance
 * accepts any ConnectError-shaped value, subclasses included.) */
export declare function isAgentdError(err: unknown): err is AgentdError;
/** Converts anything thrown by a call into an AgentdError (idempotent). */
export declare function toAgentdError(err: unknown): AgentdError;
/** The `reason` of any error thrown by this SDK ("" when there is none). */
export declare function errorReason(err: unknown): string;
/** Turns every error of every call (including mid-stream ones) into an AgentdError. */
export declare const errorInterceptor: Interceptor;
export { Code, ConnectError };
//# sourceMappingURL=errors.d.ts.map