// Errors: every failed call rejects with a ConnectError (the class Connect users already know),
// specifically an AgentdError that adds the stable `reason` from the server's
// google.rpc.ErrorInfo. Switch on `code` and `reason`, never on the message text.
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import { Code, ConnectError } from "@connectrpc/connect";
/** ErrorInfo.domain of agentd's own errors. */
export const ERROR_DOMAIN = "agentd";
const brand = Symbol("agentd.AgentdError");
/** A failed agentd call: `code` is the gRPC code, `reason` the stable cause (or ""). */
export class AgentdError extends ConnectError {
    /** e.g. "JOB_NOT_FOUND"; empty when the server (or transport) gave none. */
    reason;
    /** "agentd" for agentd's own errors. */
    domain;
    /** ErrorInfo metadata, e.g. the offending `field`. */
    errorMetadata;
    [brand] = true;
    constructor(message, code, info, metadata, cause, details = []) {
        super(message, code, metadata, undefined, cause);
        this.details = details;
        this.reason = info.reason;
        this.domain = info.domain;
        this.errorMetadata = info.metadata;
    }
}
function decodeErrorInfo(bytes) {
    const info = { reason: "", domain: "", metadata: {} };
    const r = new BinaryReader(bytes);
    while (r.pos < r.len) {
        const [no, wt] = r.tag();
        if (no === 1 && wt === WireType.LengthDelimited)
            info.reason = r.string();
        else if (no === 2 && wt === WireType.LengthDelimited)
            info.domain = r.string();
        else if (no === 3 && wt === WireType.LengthDelimited) {
            const e = new BinaryReader(r.bytes());
            let key = "";
            let value = "";
            while (e.pos < e.len) {
                const [eno, ewt] = e.tag();
                if (eno === 1 && ewt === WireType.LengthDelimited)
                    key = e.string();
                else if (eno === 2 && ewt === WireType.LengthDelimited)
                    value = e.string();
                else
                    e.skip(ewt);
            }
            info.metadata[key] = value;
        }
        else
            r.skip(wt);
    }
    return info;
}
/** The ErrorInfo carried by an error, if any. */
export function errorInfo(err) {
    if (!(err instanceof ConnectError))
        return undefined;
    for (const d of err.details) {
        if ("type" in d && d.type === "google.rpc.ErrorInfo") {
            try {
                return decodeErrorInfo(d.value);
            }
            catch {
                return undefined; // a malformed detail must not hide the real error
            }
        }
    }
    return undefined;
}
/** Whether `err` is an AgentdError. (`instanceof` cannot tell: ConnectError's Symbol.hasInstance
 * accepts any ConnectError-shaped value, subclasses included.) */
export function isAgentdError(err) {
    return typeof err === "object" && err !== null && brand in err;
}
/** Converts anything thrown by a call into an AgentdError (idempotent). */
export function toAgentdError(err) {
    if (isAgentdError(err))
        return err;
    const ce = ConnectError.from(err);
    const info = errorInfo(ce) ?? { reason: "", domain: "", metadata: {} };
    return new AgentdError(ce.rawMessage, ce.code, info, ce.metadata, ce.cause ?? err, ce.details);
}
/** The `reason` of any error thrown by this SDK ("" when there is none). */
export function errorReason(err) {
    if (isAgentdError(err))
        return err.reason;
    return errorInfo(err)?.reason ?? "";
}
async function* mapStreamErrors(it) {
    try {
        yield* it;
    }
    catch (e) {
        throw toAgentdError(e);
    }
}
/** Turns every error of every call (including mid-stream ones) into an AgentdError. */
export const errorInterceptor = (next) => async (req) => {
    try {
        const res = await next(req);
        if (!res.stream)
            return res;
        return { ...res, message: mapStreamErrors(res.message) };
    }
    catch (e) {
        throw toAgentdError(e);
    }
};
export { Code, ConnectError };
//# sourceMappingURL=errors.js.map