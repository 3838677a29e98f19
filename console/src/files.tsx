// A session's file browser: one directory at a time (ListFiles lists recursively; the entries
// below the current directory are folded into their first path segment), download of regular
// files, and upload into the current directory.
import { useState } from "preact/hooks";
import { download, fmtBytes, fmtTime, upload, type Api } from "./api";
import { useLoad } from "./hooks";
import { ErrorLine } from "./sessions";
import { FileType, type FileInfo } from "../../clients/typescript/src/gen/agentd/v1/file_pb.js";

interface Entry {
  name: string;
  path: string;
  dir: boolean;
  info?: FileInfo;
}

function children(files: FileInfo[], dir: string): Entry[] {
  const prefix = dir ? `${dir}/` : "";
  const out = new Map<string, Entry>();
  for (const f of files) {
    if (!f.path.startsWith(prefix)) continue;
    const rest = f.path.slice(prefix.length);
    const [name, ...deeper] = rest.split("/");
    if (!name) continue;
    const isDir = deeper.length > 0 || f.type === FileType.DIRECTORY;
    if (!out.has(name) || !isDir) out.set(name, { name, path: prefix + name, dir: isDir, info: deeper.length ? undefined : f });
  }
  return [...out.values()].sort((a, b) => Number(b.dir) - Number(a.dir) || a.name.localeCompare(b.name));
}

/** `version` changes when something else changed the workspace (a rewind): the list reloads. */
export function Files({ api, sessionId, version = 0 }: { api: Api; sessionId: string; version?: number }) {
  const [dir, setDir] = useState("");
  const [error, setError] = useState<unknown>();
  const [progress, setProgress] = useState("");
  const list = useLoad(() => api.files.listFiles({ sessionId, path: dir, pageSize: 1000 }), [api, sessionId, dir, version], () => {});
  const up = dir.includes("/") ? dir.slice(0, dir.lastIndexOf("/")) : "";
  const entries = list.value ? children(list.value.files, dir) : [];
  const onUpload = async (files: FileList | null) => {
    setError(undefined);
    for (const f of Array.from(files ?? [])) {
      const path = dir ? `${dir}/${f.name}` : f.name;
      try {
        await upload(api, sessionId, path, f, (n) => setProgress(`${path}: ${fmtBytes(n)} of ${fmtBytes(f.size)}`));
      } catch (err) {
        setError(err);
        break;
      }
    }
    setProgress("");
    list.reload();
  };
  return (
    <section class="card" aria-label="Files">
      <h3>
        Files <span class="mono">/{dir}</span>
      </h3>
      <ErrorLine error={list.error ?? error} />
      <table class="list" aria-label={`Files in /${dir}`}>
        <tbody>
          {dir && (
            <tr>
              <td colSpan={4}>
                <button class="link" onClick={() => setDir(up)}>
                  ..
                </button>
              </td>
            </tr>
          )}
          {entries.map((e) => (
            <tr key={e.path}>
              <td>
                {e.dir ? (
                  <button class="link" onClick={() => setDir(e.path)}>
                    {e.name}/
                  </button>
                ) : (
                  <span class="mono">{e.name}</span>
                )}
              </td>
              <td>{e.info?.type === FileType.REGULAR ? fmtBytes(e.info.size) : e.info?.type === FileType.SYMLINK ? `→ ${e.info.symlinkTarget}` : ""}</td>
              <td>{e.info ? fmtTime(e.info.modifyTime) : ""}</td>
              <td>
                {e.info?.type === FileType.REGULAR && (
                  <button class="quiet" aria-label={`Download ${e.path}`} onClick={() => download(api, sessionId, e.path).catch(setError)}>
                    Download
                  </button>
                )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      {list.value && entries.length === 0 && <p class="empty">Empty.</p>}
      <div class="row-form">
        <label>
          Upload here <input type="file" name="upload" multiple onChange={(e) => onUpload(e.currentTarget.files)} />
        </label>
        <span class="muted" aria-live="polite">
          {progress}
        </span>
        <button class="quiet" onClick={list.reload}>
          Refresh
        </button>
      </div>
    </section>
  );
}
