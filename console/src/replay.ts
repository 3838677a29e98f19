// Loading a job's event log into the page, cheapest first screen first. The timeline shows the
// end of the log, so the tail (the last TAIL events, then the live stream) is fetched before
// anything else; once it is painted, the rest streams in forward from seq 1, jumping to the
// page of PAGE seqs the viewport shows when the stream would not reach it soon. Rows sit at
// fixed positions by seq, so an event that arrives late fills its own row and nothing moves.
// Each read is a StreamJobEvents from a seq, ended by the client once its range is in.
import { isAgentdError, Code } from "../../clients/typescript/src/errors.js";
import type { Job, JobEvent, PermissionRequest } from "../../clients/typescript/src/gen/agentd/v1/job_pb.js";
import type { Api } from "./api";

/** Events fetched before the first screen: a screenful and then some. */
export const TAIL = 200;
/** The backfill's unit of "loaded" and of a jump (the server's replay batch: one message). */
export const PAGE = 1000;

/** The events seen so far, by seq (seq N at index N-1; holes not loaded yet). */
export class Timeline {
  events: (JobEvent | undefined)[] = [];
  /** How many events are loaded. */
  count = 0;
  lastSeq = 0n;
  /** Seqs a stream skipped (never delivered where they should have been). */
  gaps = 0;
  results = new Map<string, number>();
  /** Permission requests not yet resolved, by request id, oldest first. */
  asks = new Map<string, PermissionRequest>();
  private resolved = new Set<string>();

  /** Rows to lay out: up to the highest seq seen, loaded or not (the tail comes first). */
  get size() {
    return this.events.length;
  }

  add(batch: JobEvent[]) {
    for (const e of batch) {
      const i = Number(e.seq) - 1;
      if (i < 0 || this.events[i]) continue;
      this.events[i] = e;
      this.count++;
      if (e.seq > this.lastSeq) this.lastSeq = e.seq;
      const k = e.kind;
      if (k.case === "toolResult") this.results.set(k.value.id, i);
      // Pages arrive out of order: a resolution may be seen before its request.
      if (k.case === "permissionRequest" && !this.resolved.has(k.value.requestId)) this.asks.set(k.value.requestId, k.value);
      if (k.case === "permissionResolved") (this.asks.delete(k.value.requestId), this.resolved.add(k.value.requestId));
    }
  }
}

const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((res) => {
    const t = setTimeout(res, ms);
    signal.addEventListener("abort", () => (clearTimeout(t), res()), { once: true });
  });

const transient = (err: unknown) =>
  err instanceof TypeError || (isAgentdError(err) && [Code.Unavailable, Code.Unknown, Code.Internal, Code.DeadlineExceeded].includes(err.code));

/** Where a read stops early: at `until` (inclusive), or once `enough(last)` says so. */
export interface Range {
  after: bigint;
  until?: bigint;
  enough?: (last: bigint) => boolean;
}

/**
 * Streams a job's events after `range.after` until the stream ends (the job is final), the
 * range says enough, or `signal` aborts; returns the last seq delivered. A dropped connection
 * reattaches from there, so nothing is missed or repeated; errors the server meant (not found,
 * denied) end it. `on.gap` hears of seqs the stream skipped.
 */
export async function readEvents(
  api: Api,
  jobId: string,
  range: Range,
  on: { events: (events: JobEvent[]) => void; retry: (err: unknown) => void; gap: (n: number) => void },
  signal: AbortSignal,
): Promise<bigint> {
  const { until, enough } = range;
  let last = range.after;
  let delay = 250;
  while (!signal.aborted) {
    // Its own controller: leaving a range early must end that request, not the caller's.
    const call = new AbortController();
    const stop = () => call.abort();
    signal.addEventListener("abort", stop, { once: true });
    try {
      for await (const r of api.jobs.streamJobEvents({ jobId, afterSeq: last }, { signal: call.signal })) {
        const batch = until === undefined ? r.events : r.events.filter((e) => e.seq <= until);
        if (batch.length === 0 && r.events.length === 0) continue;
        if (batch.length) {
          if (batch[0].seq !== last + 1n) on.gap(Number(batch[0].seq - last - 1n));
          last = batch[batch.length - 1].seq;
          on.events(batch);
        }
        delay = 250;
        if (batch.length < r.events.length || (until !== undefined && last >= until) || enough?.(last)) return last;
      }
      return last;
    } catch (err) {
      if (signal.aborted) return last;
      if (!transient(err)) throw err;
      on.retry(err);
      await sleep(delay, signal);
      delay = Math.min(delay * 2, 5000);
    } finally {
      signal.removeEventListener("abort", stop);
      call.abort();
    }
  }
  return last;
}

/**
 * The backfill of seqs 1..`upto` once the tail is on screen, in pages of PAGE seqs. One stream
 * reads forward through a run of missing pages (one request for the whole log, as fast as the
 * server replays); when the viewport shows a missing page the stream would not reach soon, it
 * stops and starts again there.
 */
export class Backfill {
  private readonly loaded: boolean[];
  private missing: number;
  private wanted = -1;

  constructor(private readonly upto: bigint) {
    this.loaded = new Array<boolean>(Math.ceil(Number(upto) / PAGE)).fill(false);
    this.missing = this.loaded.length;
  }

  get done() {
    return this.missing === 0;
  }

  /** The viewport shows rows `first`..`last` (indexes, `last` exclusive). */
  want(first: number, last: number) {
    this.wanted = -1;
    for (let p = Math.floor(first / PAGE); p <= Math.floor(Math.max(first, last - 1) / PAGE) && p < this.loaded.length; p++) {
      if (!this.loaded[p]) return void (this.wanted = p);
    }
  }

  private end(p: number) {
    return Math.min((p + 1) * PAGE, Number(this.upto));
  }

  /** Marks pages `from`.. loaded as far as seq `last` covers them; the next page to read. */
  private advance(from: number, last: bigint): number {
    let p = from;
    while (p < this.loaded.length && Number(last) >= this.end(p)) {
      if (!this.loaded[p]) (this.loaded[p] = true), this.missing--;
      p++;
    }
    return p;
  }

  /** Reads every missing page with `read`, until done or aborted. */
  async run(read: (range: Range) => Promise<bigint>, signal: AbortSignal) {
    while (!signal.aborted && !this.done) {
      const start = this.wanted >= 0 && !this.loaded[this.wanted] ? this.wanted : this.loaded.indexOf(false);
      let stop = start;
      while (stop < this.loaded.length && !this.loaded[stop]) stop++;
      let next = start;
      // Stop when the viewport wants a page behind this stream or more than two pages ahead.
      const enough = (last: bigint) => {
        next = this.advance(next, last);
        const w = this.wanted;
        return w >= 0 && !this.loaded[w] && (w < next || w > next + 2);
      };
      const last = await read({ after: BigInt(start * PAGE), until: BigInt(this.end(stop - 1)), enough });
      if (signal.aborted) return;
      next = this.advance(next, last);
      // The server had nothing more for this run (events pruned): the gap is reported; move on.
      if (next === start) this.advance(start, BigInt(this.end(stop - 1)));
    }
  }
}

/** Marks on the performance timeline; the e2e test reads them to split the first screen's cost. */
export const mark = (name: string) => performance.mark(`agentd:${name}`);

export interface ReplayHooks {
  /** The job's row, read first (its last seq says where the tail starts). */
  job: (job: Job) => void;
  /** A batch was added to the timeline. */
  events: (batch: JobEvent[]) => void;
  retry: (err: unknown) => void;
}

/** One job's log coming into a Timeline: the tail and live stream first, then the backfill. */
export class Replay {
  private backfill?: Backfill;

  constructor(
    private readonly api: Api,
    private readonly jobId: string,
    private readonly t: Timeline,
  ) {}

  /** The viewport moved to rows `first`..`last`. */
  want(first: number, last: number) {
    this.backfill?.want(first, last);
  }

  /**
   * Resolves once the job is final and every event is in. The backfill waits for `painted` (the
   * tail on screen) or the tail's end, so it never delays the first screen.
   */
  async run(hooks: ReplayHooks, painted: Promise<void>, signal: AbortSignal): Promise<void> {
    const { job } = await this.api.jobs.getJob({ jobId: this.jobId }, { signal });
    if (!job) throw new Error(`GetJob answered without job ${this.jobId}`);
    mark("job-loaded");
    hooks.job(job);
    const last = job.lastSeq;
    const tailFrom = last > BigInt(TAIL) ? last - BigInt(TAIL) : 0n;
    this.backfill = new Backfill(tailFrom);
    const on = {
      events: (batch: JobEvent[]) => (this.t.add(batch), hooks.events(batch)),
      retry: hooks.retry,
      gap: (n: number) => (this.t.gaps += n),
    };
    const tail = readEvents(this.api, this.jobId, { after: tailFrom }, on, signal);
    await Promise.race([painted, tail]);
    const read = (range: Range) => readEvents(this.api, this.jobId, range, on, signal);
    await Promise.all([tail, this.backfill.run(read, signal)]);
  }
}
