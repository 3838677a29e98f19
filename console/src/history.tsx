// Rewind and fork from a finished job (SessionService.RewindSession / ForkSession): the two
// buttons a job offers in its session's job list and on its own page, and the confirm dialog each
// opens — which side of the job, what will happen, and the server's refusal in words with its
// stable reason. The native <dialog> opened with showModal() traps focus, closes on Esc and
// restores focus to the button that opened it, so the whole flow works from the keyboard.
import { useEffect, useRef, useState } from "preact/hooks";
import { describe, parseLabels, type Api } from "./api";
import { isAgentdError } from "../../clients/typescript/src/errors.js";
import { SnapshotPoint, type ForkSessionResponse, type RewindSessionResponse } from "../../clients/typescript/src/gen/agentd/v1/session_pb.js";
import type { Job } from "../../clients/typescript/src/gen/agentd/v1/job_pb.js";

/** What the user can do about a refusal; the server's message says what happened. */
const HINTS: Record<string, string> = {
  SESSION_BUSY: "A job of this session is queued or running. Wait for it to finish, or cancel it, then try again.",
  UNSUPPORTED_OPTION: "This job's agent cannot go back in its conversation, so the session cannot return to this point.",
  JOB_NOT_FINISHED: "Rewind and fork start from a finished job: wait for this one to end.",
  SNAPSHOT_NOT_FOUND: "The workspace snapshot for this point is no longer kept (history pruned or disabled).",
};

function Refusal({ error }: { error: unknown }) {
  if (!error) return null;
  const hint = isAgentdError(error) ? HINTS[error.reason] : undefined;
  return (
    <div class="error" role="alert">
      <p>{describe(error)}</p>
      {hint && <p class="hint-err">{hint}</p>}
    </div>
  );
}

function PointChoice({ point, onChange, action }: { point: SnapshotPoint; onChange: (p: SnapshotPoint) => void; action: "rewind" | "fork" }) {
  const after = action === "rewind" ? "this job and the ones before it stay the session's; later jobs are marked rewound past" : "the job's files and conversation";
  const before = action === "rewind" ? "this job and every later one are marked rewound past" : "the files and conversation the job started from";
  return (
    <fieldset class="points">
      <legend>Point</legend>
      <label class="choice">
        <input type="radio" name="point" checked={point === SnapshotPoint.BEFORE} onChange={() => onChange(SnapshotPoint.BEFORE)} />
        <span>
          <strong>Before this job</strong> — {before}
        </span>
      </label>
      <label class="choice">
        <input type="radio" name="point" checked={point === SnapshotPoint.AFTER} onChange={() => onChange(SnapshotPoint.AFTER)} />
        <span>
          <strong>After this job</strong> — {after}
        </span>
      </label>
    </fieldset>
  );
}

/** A modal dialog shown as soon as it mounts; Esc or Cancel calls `onClose`. */
function Modal({ label, onClose, children }: { label: string; onClose: () => void; children: preact.ComponentChildren }) {
  const ref = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    const d = ref.current;
    if (d && !d.open) d.showModal();
    return () => d?.close();
  }, []);
  return (
    <dialog ref={ref} aria-label={label} onClose={onClose}>
      {children}
    </dialog>
  );
}

function RewindDialog({ api, job, onClose, onRewound }: { api: Api; job: Job; onClose: () => void; onRewound: (r: RewindSessionResponse, point: SnapshotPoint) => void }) {
  const [point, setPoint] = useState(SnapshotPoint.AFTER);
  const [error, setError] = useState<unknown>();
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(undefined);
    try {
      const r = await api.sessions.rewindSession({ sessionId: job.sessionId, jobId: job.jobId, point });
      onRewound(r, point);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <Modal label="Rewind session" onClose={onClose}>
      <form onSubmit={submit}>
        <h3>Rewind the session</h3>
        <p>
          Puts session <span class="mono">{job.sessionId}</span>'s files and the agent's conversation back to job <span class="mono">{job.jobId}</span>. Jobs
          rewound past stay listed.
        </p>
        <PointChoice point={point} onChange={setPoint} action="rewind" />
        <Refusal error={error} />
        <div class="row-form">
          <button type="submit" class="danger" disabled={busy}>
            Rewind
          </button>
          <button type="button" class="quiet" onClick={onClose}>
            Cancel
          </button>
        </div>
      </form>
    </Modal>
  );
}

function ForkDialog({ api, job, onClose, onForked }: { api: Api; job: Job; onClose: () => void; onForked: (r: ForkSessionResponse) => void }) {
  const [point, setPoint] = useState(SnapshotPoint.AFTER);
  const [labels, setLabels] = useState("");
  const [ttl, setTtl] = useState("");
  const [error, setError] = useState<unknown>();
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(undefined);
    try {
      onForked(await api.sessions.forkSession({ jobId: job.jobId, point, labels: parseLabels(labels), ttlSeconds: Number(ttl) || 0 }));
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <Modal label="Fork session" onClose={onClose}>
      <form onSubmit={submit}>
        <h3>Fork a new session</h3>
        <p>
          A new session starts from job <span class="mono">{job.jobId}</span>; session <span class="mono">{job.sessionId}</span> is left as it is.
        </p>
        <PointChoice point={point} onChange={setPoint} action="fork" />
        <div class="row-form">
          <label>
            Labels (optional) <input name="fork-labels" placeholder="team=a, ticket=42" value={labels} onInput={(e) => setLabels(e.currentTarget.value)} />
          </label>
          <label>
            TTL (s, optional) <input name="fork-ttl" inputMode="numeric" size={7} value={ttl} onInput={(e) => setTtl(e.currentTarget.value)} />
          </label>
        </div>
        <Refusal error={error} />
        <div class="row-form">
          <button type="submit" disabled={busy}>
            Fork
          </button>
          <button type="button" class="quiet" onClick={onClose}>
            Cancel
          </button>
        </div>
      </form>
    </Modal>
  );
}

/**
 * "Rewind…" and "Fork…" for one finished job. A rewind reports to `onRewound` (the caller reloads
 * what it shows); a fork opens the new session.
 */
export function HistoryActions({ api, job, onRewound }: { api: Api; job: Job; onRewound: (r: RewindSessionResponse, point: SnapshotPoint) => void }) {
  const [open, setOpen] = useState<"rewind" | "fork" | null>(null);
  const close = () => setOpen(null);
  return (
    <span class="history-actions">
      <button class="quiet" aria-label={`Rewind to job ${job.jobId}`} onClick={() => setOpen("rewind")}>
        Rewind…
      </button>
      <button class="quiet" aria-label={`Fork from job ${job.jobId}`} onClick={() => setOpen("fork")}>
        Fork…
      </button>
      {open === "rewind" && <RewindDialog api={api} job={job} onClose={close} onRewound={(r, p) => (close(), onRewound(r, p))} />}
      {open === "fork" && (
        <ForkDialog
          api={api}
          job={job}
          onClose={close}
          onForked={(r) => {
            close();
            location.hash = `#/sessions/${encodeURIComponent(r.session!.sessionId)}`;
          }}
        />
      )}
    </span>
  );
}

/** The sentence a rewind leaves on the page. */
export function rewoundText(job: Job, point: SnapshotPoint, r: RewindSessionResponse): string {
  const n = r.rewoundJobIds.length;
  const side = point === SnapshotPoint.BEFORE ? "before" : "after";
  return `Rewound to ${side} job ${job.jobId}: ${n} job${n === 1 ? "" : "s"} marked rewound past${n ? ` (${r.rewoundJobIds.join(", ")})` : ""}.`;
}

/** The mark of a job whose changes and conversation a rewind took back. */
export function RewoundMark({ job }: { job: Job }) {
  return job.rewoundPast ? (
    <span class="badge rewound" title="A rewind put the session back to before this job ended: its changes and conversation are no longer the session's">
      rewound past
    </span>
  ) : null;
}
