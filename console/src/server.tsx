// Server info: version, agents (availability, version, sandbox), limits and the host's sandbox.
import type { Api } from "./api";
import { useLoad } from "./hooks";
import { ErrorLine } from "./sessions";

export function ServerView({ api, onAuthError }: { api: Api; onAuthError: () => void }) {
  const { value: info, error } = useLoad(() => api.info.getServerInfo({}), [api], onAuthError);
  const sb = info?.sandbox;
  return (
    <section>
      <h2>Server</h2>
      <ErrorLine error={error} />
      {info && (
        <>
          <dl class="facts">
            <dt>Version</dt>
            <dd data-testid="server-version">{info.version}</dd>
            <dt>Default agent</dt>
            <dd>{info.defaultAgent}</dd>
            {sb && (
              <>
                <dt>Sandbox</dt>
                <dd>
                  namespaces: user {yes(sb.userNamespaces)}, mount {yes(sb.mountNamespaces)}, pid {yes(sb.pidNamespaces)}, network{" "}
                  {yes(sb.networkNamespaces)} · seccomp {yes(sb.seccomp)} · Landlock ABI {sb.landlockAbi || "none"} · cgroup{" "}
                  {sb.cgroupVersion || "none"} ({sb.cgroupControllers.join(", ")})
                </dd>
              </>
            )}
          </dl>
          <h3>Agents</h3>
          <table class="list" aria-label="Agents">
            <thead>
              <tr>
                <th>Name</th>
                <th>Kind</th>
                <th>Command</th>
                <th>Version</th>
                <th>Sandbox</th>
                <th>Controls</th>
              </tr>
            </thead>
            <tbody>
              {info.agents.map((a) => (
                <tr key={a.name}>
                  <td>{a.name}</td>
                  <td>{a.kind}</td>
                  <td class="mono clip">{a.command}</td>
                  <td>{a.available ? a.version || "—" : <span class="error">unavailable: {a.problem}</span>}</td>
                  <td>
                    {a.sandbox?.enabled
                      ? `on · network ${a.sandbox.network} · ${a.sandbox.memoryMb} MB · ${a.sandbox.maxPids} pids`
                      : "off"}
                  </td>
                  <td>{a.controls.join(", ") || "—"}</td>
                </tr>
              ))}
            </tbody>
          </table>
          {info.limits && (
            <>
              <h3>Limits</h3>
              <dl class="facts">
                {Object.entries(info.limits)
                  .filter(([k]) => !k.startsWith("$"))
                  .map(([k, v]) => (
                    <>
                      <dt>{k.replace(/([A-Z])/g, " $1").toLowerCase()}</dt>
                      <dd>{String(v)}</dd>
                    </>
                  ))}
              </dl>
            </>
          )}
        </>
      )}
    </section>
  );
}

const yes = (b: boolean) => (b ? "yes" : "no");
