// The tenant's model usage over time (UsageService.GetUsage, grouped by UTC day, from the
// gateway's ledger): a bar chart drawn as plain SVG (no chart library: a few dozen rects cost
// nothing to ship), tokens or cost per day, every day of the range present so gaps read as zero;
// and the same range's totals by agent and by model.
import { useState } from "preact/hooks";
import type { Api } from "./api";
import { useLoad } from "./hooks";
import { ErrorLine } from "./sessions";
import { UsageGroupBy, type UsageBucket } from "../../clients/typescript/src/gen/agentd/v1/usage_pb.js";

const DAY_MS = 86_400_000;
const W = 720;
const H = 180;
const PAD = 28;

type Metric = "tokens" | "cost" | "calls";

const value = (b: UsageBucket | undefined, m: Metric): number => {
  if (!b) return 0;
  if (m === "cost") return b.costUsd;
  if (m === "calls") return Number(b.calls);
  return Number(b.inputTokens + b.outputTokens);
};

const fmt = (v: number, m: Metric) => (m === "cost" ? `$${v.toFixed(v < 1 ? 4 : 2)}` : v.toLocaleString());

/** The UTC dates `YYYY-MM-DD` of the last `days` days, oldest first, today last. */
function lastDays(days: number, now = Date.now()): string[] {
  const today = Math.floor(now / DAY_MS) * DAY_MS;
  return Array.from({ length: days }, (_, i) => new Date(today - (days - 1 - i) * DAY_MS).toISOString().slice(0, 10));
}

function Chart({ days, byDay, metric }: { days: string[]; byDay: Map<string, UsageBucket>; metric: Metric }) {
  const values = days.map((d) => value(byDay.get(d), metric));
  const max = Math.max(...values) || 1;
  const slot = (W - PAD) / days.length;
  return (
    <svg class="chart" viewBox={`0 0 ${W} ${H}`} role="img" aria-label={`${metric} per day`} data-testid="usage-chart">
      <line x1={PAD} y1={H - PAD} x2={W} y2={H - PAD} class="axis" />
      <text x={PAD - 4} y={12} class="tick" text-anchor="end">
        {fmt(max, metric)}
      </text>
      <text x={PAD - 4} y={H - PAD} class="tick" text-anchor="end">
        0
      </text>
      {days.map((d, i) => {
        const h = ((H - PAD - 16) * values[i]) / max;
        return (
          <g key={d}>
            <rect class="bar" data-day={d} data-value={values[i]} x={PAD + i * slot + 1} y={H - PAD - h} width={Math.max(1, slot - 2)} height={h}>
              <title>{`${d}: ${fmt(values[i], metric)}`}</title>
            </rect>
            {(i % 7 === days.length % 7 || i === days.length - 1) && (
              <text x={PAD + i * slot + slot / 2} y={H - PAD + 14} class="tick" text-anchor="middle">
                {d.slice(5)}
              </text>
            )}
          </g>
        );
      })}
    </svg>
  );
}

function Totals({ label, buckets }: { label: string; buckets: UsageBucket[] }) {
  if (buckets.length === 0) return null;
  return (
    <table class="list" aria-label={`Usage by ${label}`}>
      <thead>
        <tr>
          <th>{label}</th>
          <th>Calls</th>
          <th>Input</th>
          <th>Output</th>
          <th>Cache read</th>
          <th>Cost</th>
        </tr>
      </thead>
      <tbody>
        {buckets.map((b) => (
          <tr key={b.key}>
            <td class="mono">{b.key || "—"}</td>
            <td>{String(b.calls)}</td>
            <td>{b.inputTokens.toLocaleString()}</td>
            <td>{b.outputTokens.toLocaleString()}</td>
            <td>{b.cacheReadTokens.toLocaleString()}</td>
            <td>
              ${b.costUsd.toFixed(4)}
              {b.unpricedCalls > 0n ? ` (+${b.unpricedCalls} unpriced)` : ""}
            </td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

export function UsageView({ api, onAuthError }: { api: Api; onAuthError: () => void }) {
  const [span, setSpan] = useState(30);
  const [metric, setMetric] = useState<Metric>("tokens");
  const days = lastDays(span);
  const startTime = { seconds: BigInt(Date.parse(days[0]) / 1000), nanos: 0 };
  const load = (groupBy: UsageGroupBy) => () => api.usage.getUsage({ startTime, groupBy });
  const byDay = useLoad(load(UsageGroupBy.DAY), [api, span], onAuthError);
  const byAgent = useLoad(load(UsageGroupBy.AGENT), [api, span], onAuthError);
  const byModel = useLoad(load(UsageGroupBy.MODEL), [api, span], onAuthError);
  const map = new Map((byDay.value?.buckets ?? []).map((b) => [b.key, b]));
  return (
    <section>
      <h2>Usage</h2>
      <div class="row-form">
        <label>
          Range
          <select name="range" value={span} onChange={(e) => setSpan(Number(e.currentTarget.value))}>
            <option value={7}>7 days</option>
            <option value={30}>30 days</option>
            <option value={90}>90 days</option>
          </select>
        </label>
        <label>
          Show
          <select name="metric" value={metric} onChange={(e) => setMetric(e.currentTarget.value as Metric)}>
            <option value="tokens">tokens</option>
            <option value="cost">cost</option>
            <option value="calls">calls</option>
          </select>
        </label>
      </div>
      <ErrorLine error={byDay.error ?? byAgent.error ?? byModel.error} />
      {byDay.value && (
        <div class="card">
          <Chart days={days} byDay={map} metric={metric} />
          {map.size === 0 && <p class="empty">No model calls in this range.</p>}
        </div>
      )}
      <Totals label="Agent" buckets={byAgent.value?.buckets ?? []} />
      <Totals label="Model" buckets={byModel.value?.buckets ?? []} />
    </section>
  );
}
