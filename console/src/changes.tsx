// What a finished job changed in its session's workspace: the exact list of changed files
// (GetJobOutputs, a page at a time: added, modified, deleted, renamed, with sizes) and the unified diff
// (GetJobDiff, streamed; cut at MAX_DIFF bytes so a huge rewrite cannot stall the tab).
import { useEffect, useState } from "preact/hooks";
import { download, fmtBytes, type Api } from "./api";
import { ErrorLine } from "./sessions";
import { ChangeKind, type FileChange } from "../../clients/typescript/src/gen/agentd/v1/file_pb.js";

const MAX_DIFF = 2 * 1024 * 1024;

const kindName = (k: ChangeKind) => (ChangeKind[k] ?? String(k)).toLowerCase();

async function readDiff(api: Api, jobId: string, signal: AbortSignal): Promise<{ text: string; truncated: boolean }> {
  const parts: Uint8Array[] = [];
  let truncated = false;
  for await (const r of api.files.getJobDiff({ jobId, maxBytes: BigInt(MAX_DIFF) }, { signal })) {
    parts.push(r.chunk);
    truncated ||= r.truncated;
  }
  return { text: new TextDecoder().decode(await new Blob(parts as BlobPart[]).arrayBuffer()), truncated };
}

function lineClass(l: string): string {
  if (l.startsWith("+++") || l.startsWith("---") || l.startsWith("diff ")) return "d-file";
  if (l.startsWith("@@")) return "d-hunk";
  if (l.startsWith("+")) return "d-add";
  if (l.startsWith("-")) return "d-del";
  return "";
}

function Diff({ text }: { text: string }) {
  if (!text) return <p class="empty">No textual changes.</p>;
  return (
    <pre class="diff" aria-label="Diff">
      {text.split("\n").map((l, i) => (
        <div key={i} class={lineClass(l)}>
          {l || " "}
        </div>
      ))}
    </pre>
  );
}

function ChangeRow({ api, sessionId, c }: { api: Api; sessionId: string; c: FileChange }) {
  const [error, setError] = useState<unknown>();
  return (
    <tr>
      <td class={`change c-${kindName(c.kind)}`}>{kindName(c.kind)}</td>
      <td class="mono">
        {c.fromPath ? `${c.fromPath} → ` : ""}
        {c.path}
      </td>
      <td>
        {c.before ? fmtBytes(c.before.size) : "—"} → {c.file ? fmtBytes(c.file.size) : "—"}
      </td>
      <td>
        {c.file && (
          <button class="quiet" aria-label={`Download ${c.path}`} onClick={() => download(api, sessionId, c.path).catch(setError)}>
            Download
          </button>
        )}
        <ErrorLine error={error} />
      </td>
    </tr>
  );
}

/** Changed files shown at first, and added by each "Show more": a job may change tens of thousands. */
const CHANGES_PAGE = 500;

export function Changes({ api, jobId, sessionId }: { api: Api; jobId: string; sessionId: string }) {
  const [changes, setChanges] = useState<FileChange[]>();
  const [next, setNext] = useState("");
  const [diff, setDiff] = useState<{ text: string; truncated: boolean }>();
  const [error, setError] = useState<unknown>();
  useEffect(() => {
    const stop = new AbortController();
    api.files.getJobOutputs({ sessionId, jobId, pageSize: CHANGES_PAGE }, { signal: stop.signal }).then((r) => {
      setChanges(r.changes);
      setNext(r.nextPageToken);
    }, setError);
    readDiff(api, jobId, stop.signal).then(setDiff, (e) => stop.signal.aborted || setError(e));
    return () => stop.abort();
  }, [api, jobId, sessionId]);
  const more = () =>
    api.files.getJobOutputs({ sessionId, jobId, pageSize: CHANGES_PAGE, pageToken: next }).then((r) => {
      setChanges((shown) => [...(shown ?? []), ...r.changes]);
      setNext(r.nextPageToken);
    }, setError);
  return (
    <section class="card" aria-label="Changes">
      <h3>Changes</h3>
      <ErrorLine error={error} />
      {changes && changes.length === 0 && <p class="empty">The job changed no files.</p>}
      {changes && changes.length > 0 && (
        <table class="list" aria-label="Changed files">
          <tbody>
            {changes.map((c) => (
              <ChangeRow key={c.path} api={api} sessionId={sessionId} c={c} />
            ))}
          </tbody>
        </table>
      )}
      {next && (
        <button class="quiet" onClick={more}>
          Show more changes
        </button>
      )}
      {diff && <Diff text={diff.text} />}
      {diff?.truncated && <p class="muted">The diff is longer than {fmtBytes(MAX_DIFF)}: cut here.</p>}
    </section>
  );
}
