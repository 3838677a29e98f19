// Sessions: the tenant's list and a form to create one (labels, TTL, files sent inline), and one
// session's page: its facts, its jobs (each finished one with rewind and fork, `history`), a form
// to submit a job, and its file browser.
import { useState } from "preact/hooks";
import { describe, FINAL, fmtBytes, fmtTime, parseLabels, stateName, type Api } from "./api";
import { useLoad } from "./hooks";
import { Files } from "./files";
import { templateVariables } from "./presets";
import { HistoryActions, RewoundMark, rewoundText } from "./history";
import type { Job } from "../../clients/typescript/src/gen/agentd/v1/job_pb.js";
import type { RewindSessionResponse, Session, SnapshotPoint } from "../../clients/typescript/src/gen/agentd/v1/session_pb.js";

interface Props {
  api: Api;
  onAuthError: () => void;
}

export function ErrorLine({ error }: { error: unknown }) {
  return error ? (
    <p class="error" role="alert">
      {describe(error)}
    </p>
  ) : null;
}

const labelsText = (s: Session) =>
  Object.entries(s.labels)
    .map(([k, v]) => `${k}=${v}`)
    .join(", ");

function CreateSession({ api, onCreated }: { api: Api; onCreated: (id: string) => void }) {
  const [labels, setLabels] = useState("");
  const [ttl, setTtl] = useState("");
  const [files, setFiles] = useState<FileList | null>(null);
  const [error, setError] = useState<unknown>();
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    try {
      const contents = await Promise.all(
        Array.from(files ?? []).map(async (f) => ({ path: f.name, content: new Uint8Array(await f.arrayBuffer()) })),
      );
      const r = await api.sessions.createSession({
        labels: parseLabels(labels),
        ttlSeconds: Number(ttl) || 0,
        files: contents,
        requestId: crypto.randomUUID(),
      });
      onCreated(r.session!.sessionId);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <form class="card row-form" onSubmit={submit} aria-label="New session">
      <label>
        Labels <input name="labels" placeholder="team=a, ticket=42" value={labels} onInput={(e) => setLabels(e.currentTarget.value)} />
      </label>
      <label>
        TTL (s) <input name="ttl" inputMode="numeric" size={7} value={ttl} onInput={(e) => setTtl(e.currentTarget.value)} />
      </label>
      <label>
        Files <input name="files" type="file" multiple onChange={(e) => setFiles(e.currentTarget.files)} />
      </label>
      <button type="submit" disabled={busy}>
        Create session
      </button>
      <ErrorLine error={error} />
    </form>
  );
}

export function Sessions({ api, onAuthError }: Props) {
  const { value, error } = useLoad(() => api.sessions.listSessions({ pageSize: 200 }), [api], onAuthError);
  return (
    <section>
      <h2>Sessions</h2>
      <CreateSession api={api} onCreated={(id) => (location.hash = `#/sessions/${encodeURIComponent(id)}`)} />
      <ErrorLine error={error} />
      {value && value.sessions.length === 0 && <p class="empty">No sessions yet.</p>}
      {value && value.sessions.length > 0 && (
        <table class="list" aria-label="Sessions">
          <thead>
            <tr>
              <th>Session</th>
              <th>Labels</th>
              <th>Files</th>
              <th>Jobs</th>
              <th>Running</th>
              <th>Expires</th>
            </tr>
          </thead>
          <tbody>
            {value.sessions.map((s) => (
              <tr key={s.sessionId}>
                <td>
                  <a href={`#/sessions/${encodeURIComponent(s.sessionId)}`} class="mono">
                    {s.sessionId}
                  </a>
                </td>
                <td>{labelsText(s)}</td>
                <td>
                  {String(s.fileCount)} · {fmtBytes(s.totalBytes)}
                </td>
                <td>{String(s.jobCount)}</td>
                <td class="mono">{s.runningJobId || "—"}</td>
                <td>{fmtTime(s.expireTime)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

const PERMISSION_MODES = ["ask", "default", "acceptEdits", "plan", "bypassPermissions", "interactive"];

function SubmitJob({ api, sessionId }: { api: Api; sessionId: string }) {
  const info = useLoad(() => api.info.getServerInfo({}), [api], () => {});
  const presets = useLoad(() => api.presets.listPresets({}), [api], () => {});
  const [agent, setAgent] = useState("");
  const [model, setModel] = useState("");
  const [prompt, setPrompt] = useState("");
  const [timeout, setTimeoutS] = useState("");
  const [permissionMode, setPermissionMode] = useState("");
  const [preset, setPreset] = useState("");
  const [variables, setVariables] = useState<Record<string, string>>({});
  const [error, setError] = useState<unknown>();
  const chosen = presets.value?.presets.find((p) => p.name === preset);
  const names = chosen ? templateVariables(chosen.promptTemplate) : [];
  const submit = async (e: Event) => {
    e.preventDefault();
    try {
      const r = await api.jobs.submitJob({
        sessionId,
        agent,
        model,
        prompt,
        timeoutSeconds: Number(timeout) || 0,
        permissionMode,
        preset,
        variables: Object.fromEntries(names.map((n) => [n, variables[n] ?? ""])),
        requestId: crypto.randomUUID(),
      });
      location.hash = `#/jobs/${encodeURIComponent(r.job!.jobId)}`;
    } catch (err) {
      setError(err);
    }
  };
  return (
    <form class="card" onSubmit={submit} aria-label="Submit job">
      <h3>Submit a job</h3>
      <div class="row-form">
        <label>
          Preset
          <select name="preset" value={preset} onChange={(e) => setPreset(e.currentTarget.value)}>
            <option value="">none</option>
            {presets.value?.presets.map((p) => (
              <option key={p.name} value={p.name}>
                {p.name}
              </option>
            ))}
          </select>
        </label>
        <label>
          Agent
          <select name="agent" value={agent} onChange={(e) => setAgent(e.currentTarget.value)}>
            <option value="">{chosen?.agent ? `preset (${chosen.agent})` : `default${info.value ? ` (${info.value.defaultAgent})` : ""}`}</option>
            {info.value?.agents.map((a) => (
              <option key={a.name} value={a.name} disabled={!a.available}>
                {a.name}
              </option>
            ))}
          </select>
        </label>
        <label>
          Model <input name="model" placeholder={chosen?.model} value={model} onInput={(e) => setModel(e.currentTarget.value)} />
        </label>
        <label>
          Permissions
          <input name="permission-mode" list="permission-modes" size={12} placeholder={chosen?.permissionMode || "profile's"} value={permissionMode} onInput={(e) => setPermissionMode(e.currentTarget.value)} />
          <datalist id="permission-modes">
            {PERMISSION_MODES.map((m) => (
              <option key={m} value={m} />
            ))}
          </datalist>
        </label>
        <label>
          Timeout (s) <input name="timeout" inputMode="numeric" size={6} value={timeout} onInput={(e) => setTimeoutS(e.currentTarget.value)} />
        </label>
      </div>
      {chosen?.description && <p class="muted">{chosen.description}</p>}
      {names.length > 0 && (
        <div class="row-form" aria-label="Preset variables">
          {names.map((n) => (
            <label key={n}>
              {n}
              <input name={`var-${n}`} value={variables[n] ?? ""} onInput={(e) => setVariables({ ...variables, [n]: e.currentTarget.value })} />
            </label>
          ))}
        </div>
      )}
      <textarea
        name="prompt"
        rows={4}
        placeholder={chosen?.promptTemplate ? `Prompt (the preset's: ${chosen.promptTemplate})` : "Prompt"}
        value={prompt}
        onInput={(e) => setPrompt(e.currentTarget.value)}
      />
      <button type="submit">Submit</button>
      <ErrorLine error={error} />
    </form>
  );
}

export function SessionView({ api, id, onAuthError }: Props & { id: string }) {
  const session = useLoad(() => api.sessions.getSession({ sessionId: id }), [api, id], onAuthError);
  const jobs = useLoad(() => api.jobs.listJobs({ sessionId: id, pageSize: 100 }), [api, id], onAuthError);
  const [notice, setNotice] = useState("");
  const [filesVersion, setFilesVersion] = useState(0);
  const s = session.value?.session;
  // A rewind changes the session's files, its conversation and its jobs' marks: reload all three.
  const onRewound = (job: Job, r: RewindSessionResponse, point: SnapshotPoint) => {
    setNotice(rewoundText(job, point, r));
    session.reload();
    jobs.reload();
    setFilesVersion((v) => v + 1);
  };
  return (
    <section>
      <h2>
        Session <span class="mono">{id}</span>
      </h2>
      <ErrorLine error={session.error} />
      {s && (
        <dl class="facts">
          <dt>Labels</dt>
          <dd>{labelsText(s) || "—"}</dd>
          <dt>Created</dt>
          <dd>{fmtTime(s.createTime)}</dd>
          <dt>Expires</dt>
          <dd>
            {fmtTime(s.expireTime)} (TTL {s.ttlSeconds} s)
          </dd>
          <dt>Files</dt>
          <dd>
            {String(s.fileCount)} · {fmtBytes(s.totalBytes)}
          </dd>
          <dt>Conversation</dt>
          <dd class="mono" data-testid="conversation">
            {s.conversationId || "—"}
          </dd>
        </dl>
      )}
      {s && <SubmitJob api={api} sessionId={id} />}
      <h3>Jobs</h3>
      <ErrorLine error={jobs.error} />
      {notice && (
        <p class="notice" role="status">
          {notice}
        </p>
      )}
      {jobs.value && jobs.value.jobs.length === 0 && <p class="empty">No jobs yet.</p>}
      {jobs.value && jobs.value.jobs.length > 0 && (
        <table class="list" aria-label="Jobs">
          <thead>
            <tr>
              <th>Job</th>
              <th>State</th>
              <th>Agent</th>
              <th>Prompt</th>
              <th>Created</th>
              <th>History</th>
            </tr>
          </thead>
          <tbody>
            {jobs.value.jobs.map((j) => (
              <tr key={j.jobId} class={j.rewoundPast ? "rewound" : undefined} data-job={j.jobId}>
                <td>
                  <a class="mono" href={`#/jobs/${encodeURIComponent(j.jobId)}`}>
                    {j.jobId}
                  </a>
                </td>
                <td>
                  <span class={`state s${j.state}`}>{stateName(j.state)}</span> <RewoundMark job={j} />
                </td>
                <td>{j.agent}</td>
                <td class="clip">{j.prompt}</td>
                <td>{fmtTime(j.createTime)}</td>
                <td>{FINAL.has(j.state) && <HistoryActions api={api} job={j} onRewound={(r, p) => onRewound(j, r, p)} />}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {s && <Files api={api} sessionId={id} version={filesVersion} />}
    </section>
  );
}
