// Five agents write five short stories at once, then every story is downloaded into ./out/.
//
// Start a server (see the README), then:
//   node examples/stories.mjs   # AGENTD_URL (default http://127.0.0.1:50051), AGENTD_API_KEY if the server has keys
import path from "node:path";
import { JobState, createAgentdClient } from "@agentd/client";

const topics = ["a lighthouse keeper", "a lost robot", "a tiny dragon", "the last train", "a talking cat"];
const client = createAgentdClient(); // AGENTD_URL / AGENTD_API_KEY

async function writeStory(i, topic) {
  const session = await client.createSession({ files: { "BRIEF.md": `Write a short story about ${topic}.\n` } });
  const run = client.run(session.sessionId, `write story.txt Once upon a time there was ${topic}. The end.`);
  for await (const event of run) { // live events; a dropped connection resumes where it left off
    if (event.kind.case === "toolCall") console.log(`[${i}] ${event.kind.value.name} ${event.kind.value.inputJson.slice(0, 60)}`);
    if (event.kind.case === "finished") console.log(`[${i}] finished: ${JobState[event.kind.value.state]}`);
  }
  if (run.job.state !== JobState.SUCCEEDED) throw new Error(`[${i}] job ${run.job.jobId} failed: ${run.job.errorMessage}`);
  const files = await client.downloadOutputs(session.sessionId, path.join("out", `story-${i}`));
  await client.deleteSession(session.sessionId);
  return files;
}

try {
  const results = await Promise.all(topics.map((t, i) => writeStory(i, t)));
  for (const f of results.flat()) console.log(f);
} finally {
  client.close();
}
