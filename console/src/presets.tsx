// Presets: the tenant's and the operator's (read-only) job presets, and the helpers the submit
// form uses to offer them (a preset's `{{variables}}` become inputs).
import type { Api } from "./api";
import { fmtTime } from "./api";
import { useLoad } from "./hooks";
import { ErrorLine } from "./sessions";
import type { Preset } from "../../clients/typescript/src/gen/agentd/v1/preset_pb.js";

/** The `{{name}}` placeholders of a prompt template (spaces inside the braces allowed), in
 * order, each once; `\{{` is a literal `{{`. */
export function templateVariables(template: string): string[] {
  const names = new Set<string>();
  for (const m of template.matchAll(/(\\?)\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}/g)) {
    if (!m[1]) names.add(m[2]);
  }
  return [...names];
}

const facts = (p: Preset) =>
  [p.agent && `agent ${p.agent}`, p.model && `model ${p.model}`, p.permissionMode && `permissions ${p.permissionMode}`, p.maxTurns && `${p.maxTurns} turns`]
    .filter(Boolean)
    .join(" · ");

export function PresetsView({ api, onAuthError }: { api: Api; onAuthError: () => void }) {
  const { value, error } = useLoad(() => api.presets.listPresets({}), [api], onAuthError);
  return (
    <section>
      <h2>Presets</h2>
      <p class="muted">Pick one in a session's “Submit a job” form.</p>
      <ErrorLine error={error} />
      {value && value.presets.length === 0 && <p class="empty">No presets.</p>}
      {value && value.presets.length > 0 && (
        <table class="list" aria-label="Presets">
          <thead>
            <tr>
              <th>Name</th>
              <th>Description</th>
              <th>Job</th>
              <th>Prompt template</th>
              <th>Overridable</th>
              <th>Updated</th>
            </tr>
          </thead>
          <tbody>
            {value.presets.map((p) => (
              <tr key={p.name}>
                <td class="mono">
                  {p.name}
                  {p.readOnly ? " (operator)" : ""}
                </td>
                <td>{p.description}</td>
                <td>{facts(p) || "—"}</td>
                <td class="clip mono">{p.promptTemplate || "—"}</td>
                <td>{p.overridable.join(", ") || "—"}</td>
                <td>{fmtTime(p.updateTime)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
