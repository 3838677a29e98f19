"""Five agents write five short stories at once, then every story is downloaded into ./out/.

Start a server (see the README), then:
    python examples/stories.py   # AGENTD_URL (default 127.0.0.1:50051), AGENTD_API_KEY if the server has keys
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import agentd

TOPICS = ["a lighthouse keeper", "a lost robot", "a tiny dragon", "the last train", "a talking cat"]


async def write_story(client: agentd.AsyncClient, i: int, topic: str) -> list[Path]:
    session = await client.create_session({"BRIEF.md": f"Write a short story about {topic}.\n"})
    prompt = f"write story.txt Once upon a time there was {topic}. The end."
    run = client.run(session.session_id, prompt)
    async for event in run:  # events arrive live; a dropped connection resumes where it left off
        kind = event.WhichOneof("kind")
        if kind == "tool_call":
            print(f"[{i}] {event.tool_call.name} {event.tool_call.input_json[:60]}")
        elif kind == "finished":
            print(f"[{i}] finished: {agentd.JobState.Name(event.finished.state)}")
    assert run.job is not None
    if run.job.state != agentd.JobState.JOB_STATE_SUCCEEDED:
        raise SystemExit(f"[{i}] job {run.job.job_id} failed: {run.job.error_message}")
    files = await client.download_outputs(session.session_id, Path("out") / f"story-{i}")
    await client.delete_session(session.session_id)
    return files


async def main() -> None:
    async with agentd.AsyncClient() as client:  # AGENTD_URL / AGENTD_API_KEY
        results = await asyncio.gather(*(write_story(client, i, t) for i, t in enumerate(TOPICS)))
    for files in results:
        for f in files:
            print(f"{f}: {f.read_text()[:60]!r}")


if __name__ == "__main__":
    asyncio.run(main())
