// agentd-bench's TypeScript consumer: reads one job's events through the SDK's `client.stream`
// (the way an application would) and prints {"events": N, "seconds": S} as one JSON line.
//
//   node bench/consume.mjs --url http://127.0.0.1:50051 --job job_...
//
// Run by `agentd-bench --only sdk` against agentd and against the bare baseline server; needs the
// built SDK (`npm run build`).
import { parseArgs } from "node:util";
import { createAgentdClient } from "../dist/index.js";

const { values } = parseArgs({
  options: { url: { type: "string" }, job: { type: "string" } },
});
if (!values.url || !values.job) {
  console.error("usage: consume.mjs --url URL --job JOB");
  process.exit(2);
}
const client = createAgentdClient({ baseUrl: values.url });
let events = 0;
const t0 = performance.now();
for await (const _ of client.stream(values.job)) events++;
const seconds = (performance.now() - t0) / 1000;
client.close();
console.log(JSON.stringify({ events, seconds }));
