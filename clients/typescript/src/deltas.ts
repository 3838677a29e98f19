// Iterating the text of a job as the model produces it (SubmitJobRequest.streamDeltas).
import type { JobEvent } from "./gen/agentd/v1/job_pb.js";

/**
 * Yields each `textDelta` piece (`thinkingDelta` with `thinking: true`) of a job's events, e.g.
 * of `client.runJob(...)`; the pieces of a block concatenate to its `text` event.
 */
export async function* textDeltas(
  events: AsyncIterable<JobEvent>,
  options: { thinking?: boolean } = {},
): AsyncGenerator<string> {
  const want = options.thinking ? "thinkingDelta" : "textDelta";
  for await (const event of events) {
    if (event.kind.case === want) {
      yield event.kind.value.text;
    }
  }
}
