// A job's page: its facts (state, reason, usage and cost), cancel, and its timeline — its last
// events first, then followed live while the earlier ones load behind them (`replay`), in a
// virtualised list (fixed-height rows placed by seq, so thousands of events cost the same as
// thirty and nothing shifts while streaming or backfilling), with the
// selected event unfolded below it. Keys: ↑/↓ or j/k select, Home/End jump, End also re-follows.
// While it runs: its open permission requests, input and interrupt (`control`); once final: the
// files it changed and their diff (`changes`), and rewind or fork from it (`history`).
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { FINAL, fmtTime, isUnauthenticated, pretty, stateName, type Api } from "./api";
import { mark, Replay, Timeline } from "./replay";
import { ErrorLine } from "./sessions";
import { Controls } from "./control";
import { Changes } from "./changes";
import { HistoryActions, RewoundMark, rewoundText } from "./history";
import type { Job, JobEvent, Usage } from "../../clients/typescript/src/gen/agentd/v1/job_pb.js";
import { JobState } from "../../clients/typescript/src/gen/agentd/v1/job_pb.js";

const ROW = 26;
const OVERSCAN = 10;

export function usageText(u?: Usage): string {
  if (!u) return "—";
  const cost = u.costUsd !== undefined ? ` · $${u.costUsd.toFixed(4)}` : "";
  return `${u.inputTokens} in · ${u.outputTokens} out · ${u.cacheReadInputTokens} cached · ${u.numTurns} turns${cost}`;
}

function summary(e: JobEvent): [string, string] {
  const k = e.kind;
  switch (k.case) {
    case "started":
      return ["started", `${k.value.agent} · pid ${k.value.pid}${k.value.resumedConversationId ? " · resumed" : ""}`];
    case "init":
      return ["init", `${k.value.model} · ${k.value.tools.length} tools${k.value.agentVersion ? ` · ${k.value.agentVersion}` : ""}`];
    case "text":
      return ["text", k.value.text];
    case "toolCall":
      return ["tool", `${k.value.name} ${k.value.inputJson}`];
    case "toolResult":
      return [k.value.isError ? "tool error" : "result", k.value.content];
    case "usage":
      return ["usage", usageText(k.value)];
    case "stderr":
      return ["stderr", k.value.line];
    case "unparsed":
      return ["stdout", k.value.line];
    case "other":
      return ["other", k.value.type];
    case "truncated":
      return ["truncated", k.value.reason];
    case "limitExceeded":
      return ["limit", `${k.value.limit}: ${k.value.message}`];
    case "permissionRequest":
      return ["asks", `${k.value.tool} ${k.value.inputJson}`];
    case "permissionResolved":
      return [k.value.allow ? "allowed" : "denied", `by ${k.value.who}${k.value.message ? ` · ${k.value.message}` : ""}`];
    case "input":
      return ["input", k.value.text];
    case "modelCall":
      return ["model", `${k.value.model} · ${k.value.status || "no answer"} · ${k.value.inputTokens} in · ${k.value.outputTokens} out · ${k.value.latencyMs} ms`];
    case "egressDenied":
      return ["egress", `denied ${k.value.host}:${k.value.port}`];
    case "finished":
      return ["finished", `${stateName(k.value.state)}${k.value.reason ? ` · ${k.value.reason}` : ""}${k.value.errorMessage ? ` · ${k.value.errorMessage}` : ""}`];
    default:
      return ["event", e.raw];
  }
}

function Detail({ t, index }: { t: Timeline; index: number }) {
  const e = t.events[index];
  if (index >= 0 && !e) return <p class="empty">Event #{index + 1} is still loading.</p>;
  if (!e) return <p class="empty">Select an event (↑/↓, Enter) to unfold it.</p>;
  const [kind, text] = summary(e);
  let body = <pre>{text}</pre>;
  if (e.kind.case === "toolCall") {
    const r = t.results.get(e.kind.value.id);
    const res = r !== undefined ? t.events[r]?.kind : undefined;
    body = (
      <>
        <h4>{e.kind.value.name} · input</h4>
        <pre>{pretty(e.kind.value.inputJson)}</pre>
        <h4>result{res?.case === "toolResult" && res.value.isError ? " (error)" : ""}</h4>
        <pre>{res?.case === "toolResult" ? res.value.content : "(none yet)"}</pre>
      </>
    );
  }
  return (
    <div class="detail" aria-label="Event detail">
      <div class="muted">
        #{String(e.seq)} · {kind} · {fmtTime(e.time)}
      </div>
      {body}
    </div>
  );
}

function Rows({ t, version, selected, onSelect, onView }: { t: Timeline; version: number; selected: number; onSelect: (i: number) => void; onView: (first: number, last: number) => void }) {
  const box = useRef<HTMLDivElement>(null);
  const [top, setTop] = useState(0);
  const [height, setHeight] = useState(600);
  const [tail, setTail] = useState(true);
  const n = t.size;
  useEffect(() => {
    const el = box.current!;
    const ro = new ResizeObserver(() => setHeight(el.clientHeight));
    ro.observe(el);
    return () => ro.disconnect();
  }, []);
  // Where following the end last put the view: a scroll whose event has not come yet (it comes
  // with the next frame) has moved it away, and must not be undone by this effect.
  const followed = useRef(-1);
  useEffect(() => {
    const el = box.current;
    if (!tail || !el) return;
    if (followed.current >= 0 && el.scrollTop !== followed.current && el.scrollTop + el.clientHeight < el.scrollHeight - ROW) return;
    el.scrollTop = n * ROW;
    followed.current = el.scrollTop;
  }, [version, tail]);
  useEffect(() => {
    const el = box.current;
    if (!el || selected < 0) return;
    if (selected * ROW < el.scrollTop) el.scrollTop = selected * ROW;
    else if ((selected + 1) * ROW > el.scrollTop + el.clientHeight) el.scrollTop = (selected + 1) * ROW - el.clientHeight;
  }, [selected]);
  const first = Math.max(0, Math.floor(top / ROW) - OVERSCAN);
  const last = Math.min(n, Math.ceil((top + height) / ROW) + OVERSCAN);
  useEffect(() => onView(first, last), [first, last]);
  const onKey = (e: KeyboardEvent) => {
    const move = (i: number) => {
      e.preventDefault();
      setTail(false);
      onSelect(Math.max(0, Math.min(n - 1, i)));
    };
    if (e.key === "ArrowDown" || e.key === "j") move(selected + 1);
    else if (e.key === "ArrowUp" || e.key === "k") move(selected - 1);
    else if (e.key === "Home") move(0);
    else if (e.key === "PageDown") move(selected + Math.floor(height / ROW));
    else if (e.key === "PageUp") move(selected - Math.floor(height / ROW));
    else if (e.key === "End") {
      e.preventDefault();
      onSelect(n - 1);
      setTail(true);
    }
  };
  const rows = [];
  for (let i = first; i < last; i++) {
    const e = t.events[i];
    const style = { top: `${i * ROW}px` };
    const sel = i === selected ? " sel" : "";
    // A row not loaded yet keeps its place; its event fills it when its page arrives.
    if (!e) {
      rows.push(
        <div key={i} class={`ev pending${sel}`} style={style} role="row" aria-selected={i === selected} aria-busy="true" onClick={() => (setTail(false), onSelect(i))}>
          <span class="seq">{i + 1}</span>
          <span class="kind">…</span>
        </div>,
      );
      continue;
    }
    const [kind, text] = summary(e);
    rows.push(
      <div
        key={i}
        class={`ev k-${e.kind.case ?? "none"}${sel}`}
        style={style}
        role="row"
        aria-selected={i === selected}
        data-seq={String(e.seq)}
        onClick={() => (setTail(false), onSelect(i))}
      >
        <span class="seq">{String(e.seq)}</span>
        <span class="kind">{kind}</span>
        <span class="text">{text.length > 400 ? text.slice(0, 400) + "…" : text}</span>
      </div>,
    );
  }
  return (
    <div
      ref={box}
      class="timeline"
      tabIndex={0}
      role="grid"
      aria-label="Timeline"
      aria-rowcount={n}
      onKeyDown={onKey}
      onScroll={(e) => {
        const el = e.currentTarget;
        setTop(el.scrollTop);
        setTail(el.scrollTop + el.clientHeight >= el.scrollHeight - ROW);
      }}
    >
      <div class="spacer" style={{ height: `${n * ROW}px` }}>
        {rows}
      </div>
    </div>
  );
}

function Facts({ job }: { job: Job }) {
  const exit = job.exitStatus?.status;
  return (
    <dl class="facts">
      <dt>State</dt>
      <dd class={`state s${job.state}`} data-testid="job-state">
        {stateName(job.state)}
        {job.state === JobState.QUEUED && job.queuePosition ? ` (#${job.queuePosition} in queue)` : ""}
      </dd>
      {job.reason && (
        <>
          <dt>Reason</dt>
          <dd>{job.reason}</dd>
        </>
      )}
      {job.errorMessage && (
        <>
          <dt>Error</dt>
          <dd class="error">{job.errorMessage}</dd>
        </>
      )}
      {job.rewoundPast && (
        <>
          <dt>History</dt>
          <dd>
            <RewoundMark job={job} /> the session was rewound to before this job ended: its changes and conversation are no longer the session's
          </dd>
        </>
      )}
      <dt>Agent</dt>
      <dd>
        {job.agent}
        {job.model ? ` · ${job.model}` : ""}
      </dd>
      <dt>Session</dt>
      <dd>
        <a class="mono" href={`#/sessions/${encodeURIComponent(job.sessionId)}`}>
          {job.sessionId}
        </a>
      </dd>
      <dt>Times</dt>
      <dd>
        created {fmtTime(job.createTime)} · started {fmtTime(job.startTime)} · ended {fmtTime(job.endTime)}
      </dd>
      {exit?.case && (
        <>
          <dt>Exit</dt>
          <dd>{exit.case === "code" ? `code ${exit.value}` : `signal ${exit.value}`}</dd>
        </>
      )}
      <dt>Usage</dt>
      <dd>{usageText(job.usage)}</dd>
      <dt>Prompt</dt>
      <dd class="clip">{job.prompt}</dd>
    </dl>
  );
}

export function JobView({ api, id, onAuthError }: { api: Api; id: string; onAuthError: () => void }) {
  const t = useMemo(() => new Timeline(), [id]);
  const [version, setVersion] = useState(0);
  const [job, setJob] = useState<Job>();
  const [error, setError] = useState<unknown>();
  const [live, setLive] = useState<"connecting" | "live" | "reconnecting" | "complete">("connecting");
  const [selected, setSelected] = useState(-1);
  const [notice, setNotice] = useState("");
  const fail = (e: unknown) => (isUnauthenticated(e) ? onAuthError() : setError(e));
  const refresh = () => api.jobs.getJob({ jobId: id }).then((r) => setJob(r.job), fail);
  const replay = useMemo(() => new Replay(api, id, t), [api, id, t]);
  useEffect(() => {
    const stop = new AbortController();
    let frame = 0;
    let shown = false;
    let painted: () => void = () => {};
    const firstPaint = new Promise<void>((res) => (painted = res));
    const onEvents = (batch: JobEvent[]) => {
      if (t.count === batch.length) mark("first-batch");
      setLive("live");
      // The job's row changes when it starts and when it ends.
      if (batch.some((e) => e.kind.case === "started" || e.kind.case === "finished")) refresh();
      // One render per frame however many batches arrive in it.
      if (!frame)
        frame = requestAnimationFrame(() => {
          frame = 0;
          setVersion((v) => v + 1);
          // The frame after the first render is the first screen.
          if (!shown) {
            shown = true;
            requestAnimationFrame(() => (mark("first-events"), painted()));
          }
        });
    };
    const hooks = { job: setJob, events: onEvents, retry: () => setLive("reconnecting") };
    replay.run(hooks, firstPaint, stop.signal).then(
      () => {
        if (stop.signal.aborted) return;
        mark("replay-complete");
        setLive("complete");
        refresh();
      },
      (e) => stop.signal.aborted || fail(e),
    );
    return () => stop.abort();
  }, [api, id]);
  const cancel = () =>
    api.jobs.cancelJob({ jobId: id }).then((r) => setJob(r.job), setError);
  return (
    <section class="job">
      <h2>
        Job <span class="mono">{id}</span>{" "}
        {job && !FINAL.has(job.state) && (
          <button class="danger" onClick={cancel}>
            Cancel
          </button>
        )}
      </h2>
      <ErrorLine error={error} />
      {job && <Facts job={job} />}
      <div class="status" aria-live="polite">
        <span data-testid="stream-state">{live}</span> · <span data-testid="event-count">{t.count}</span> events · last seq{" "}
        <span data-testid="last-seq">{String(t.lastSeq)}</span>
        {t.gaps > 0 && <span class="error"> · {t.gaps} missing</span>}
      </div>
      <Rows t={t} version={version} selected={selected} onSelect={setSelected} onView={(a, b) => replay.want(a, b)} />
      <Detail t={t} index={selected} />
      {/* Below the timeline, so a request appearing never moves the rows being read. */}
      {job && !FINAL.has(job.state) && <Controls api={api} jobId={id} asks={[...t.asks.values()]} />}
      {job && FINAL.has(job.state) && <Changes api={api} jobId={id} sessionId={job.sessionId} />}
      {job && FINAL.has(job.state) && (
        <section class="card" aria-label="History">
          <h3>Rewind or fork from this job</h3>
          <HistoryActions api={api} job={job} onRewound={(r, p) => (setNotice(rewoundText(job, p, r)), refresh())} />
          {notice && (
            <p class="notice" role="status">
              {notice}
            </p>
          )}
        </section>
      )}
    </section>
  );
}
