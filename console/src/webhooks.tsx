// The tenant's webhooks, read-only: where job notifications go and which events they receive.
// (Creating one shows its secret once; that stays with the CLI and the SDKs.)
import type { Api } from "./api";
import { fmtTime } from "./api";
import { useLoad } from "./hooks";
import { ErrorLine } from "./sessions";

export function WebhooksView({ api, onAuthError }: { api: Api; onAuthError: () => void }) {
  const { value, error } = useLoad(() => api.webhooks.listWebhooks({}), [api], onAuthError);
  return (
    <section>
      <h2>Webhooks</h2>
      <ErrorLine error={error} />
      {value && value.webhooks.length === 0 && <p class="empty">No webhooks.</p>}
      {value && value.webhooks.length > 0 && (
        <table class="list" aria-label="Webhooks">
          <thead>
            <tr>
              <th>Id</th>
              <th>URL</th>
              <th>Events</th>
              <th>Created</th>
              <th>Previous secret</th>
            </tr>
          </thead>
          <tbody>
            {value.webhooks.map((w) => (
              <tr key={w.id}>
                <td class="mono">{w.id}</td>
                <td class="mono clip">{w.url}</td>
                <td>{w.events.join(", ") || "—"}</td>
                <td>{fmtTime(w.created)}</td>
                <td>{w.previousSecretExpires ? `signs until ${fmtTime(w.previousSecretExpires)}` : "—"}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
