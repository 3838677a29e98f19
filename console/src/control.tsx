// Two-way control of a running job: the agent's open permission requests with Allow / Deny
// (RespondToPermission), a message to the agent (SendInput) and Interrupt (InterruptJob). What
// the server decided shows up in the timeline (permission_resolved, input): nothing here
// guesses the outcome, so two tabs answering the same request both see the one decision.
import { useState } from "preact/hooks";
import { pretty, type Api } from "./api";
import { ErrorLine } from "./sessions";
import type { PermissionRequest } from "../../clients/typescript/src/gen/agentd/v1/job_pb.js";

function Ask({ api, jobId, ask }: { api: Api; jobId: string; ask: PermissionRequest }) {
  const [message, setMessage] = useState("");
  const [error, setError] = useState<unknown>();
  const [sent, setSent] = useState(false);
  const answer = (allow: boolean) => {
    setSent(true);
    api.jobs.respondToPermission({ jobId, requestId: ask.requestId, allow, message: allow ? "" : message }).catch((e) => {
      setSent(false);
      setError(e);
    });
  };
  return (
    <div class="ask" role="group" aria-label={`Permission request ${ask.tool}`}>
      <div>
        <strong>{ask.tool}</strong> asks to run
        {ask.timeoutSeconds ? <span class="muted"> · denied after {ask.timeoutSeconds} s unanswered</span> : null}
      </div>
      <pre>{pretty(ask.inputJson)}</pre>
      <div class="row-form">
        <button onClick={() => answer(true)} disabled={sent}>
          Allow
        </button>
        <label>
          Reason for a denial
          <input name="deny-message" value={message} onInput={(e) => setMessage(e.currentTarget.value)} />
        </label>
        <button class="danger" onClick={() => answer(false)} disabled={sent}>
          Deny
        </button>
      </div>
      <ErrorLine error={error} />
    </div>
  );
}

export function Controls({ api, jobId, asks }: { api: Api; jobId: string; asks: PermissionRequest[] }) {
  const [text, setText] = useState("");
  const [error, setError] = useState<unknown>();
  const send = (e: Event) => {
    e.preventDefault();
    if (!text.trim()) return;
    api.jobs.sendInput({ jobId, text }).then(() => setText(""), setError);
  };
  const interrupt = () => api.jobs.interruptJob({ jobId }).catch(setError);
  return (
    <section class="card controls" aria-label="Control">
      {asks.map((a) => (
        <Ask key={a.requestId} api={api} jobId={jobId} ask={a} />
      ))}
      <form class="row-form" onSubmit={send}>
        <label class="grow">
          Message to the agent
          <input name="input" value={text} onInput={(e) => setText(e.currentTarget.value)} />
        </label>
        <button type="submit">Send</button>
        <button type="button" class="quiet" onClick={interrupt} title="Stop the current turn; the conversation is kept">
          Interrupt
        </button>
      </form>
      <ErrorLine error={error} />
    </section>
  );
}
