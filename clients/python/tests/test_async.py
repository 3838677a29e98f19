"""The asyncio client against the real server, and the example program."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

import agentd
from agentd.v1 import file_pb2, job_pb2
from conftest import KEY_A, Proxy, Server
from test_sync import MAKE_MANY, MANY


def run_async(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_async_outputs_gathers_every_page(server: Server) -> None:
    async def main() -> None:
        async with agentd.AsyncClient(f"http://{server.address}", api_key=KEY_A) as c:
            session = await c.create_session({})
            run = c.run(session.session_id, MAKE_MANY)
            _ = [e async for e in run]
            assert run.job is not None and run.job.state == job_pb2.JOB_STATE_SUCCEEDED
            outputs = await c.outputs(session.session_id, run.job.job_id)
            assert outputs.next_page_token == ""
            assert [ch.path for ch in outputs.changes] == [f"many/f{i:05d}" for i in range(1, MANY + 1)]

    run_async(main())


def test_async_seed_flow(server: Server, tmp_path: Path) -> None:
    async def main() -> None:
        async with agentd.AsyncClient(f"http://{server.address}", api_key=KEY_A) as c:
            src = tmp_path / "src"
            src.mkdir()
            (src / "a.txt").write_text("a")
            big = os.urandom(2 * agentd.CHUNK_SIZE + 7)
            (src / "big.bin").write_bytes(big)
            info = await c.server_info()
            assert info.version and info.default_agent == "claude"
            session = await c.create_session(src, labels={"t": "async"})
            assert session.file_count == 2

            run = c.run(session.session_id, "write gen/out.txt async hello")
            events = [e async for e in run]
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            assert events[-1].WhichOneof("kind") == "finished"
            assert run.job is not None and run.job.state == job_pb2.JOB_STATE_SUCCEEDED

            outputs = await c.outputs(session.session_id, run.job.job_id)
            assert [(ch.path, ch.kind) for ch in outputs.changes] == [
                ("gen/out.txt", file_pb2.CHANGE_KIND_ADDED)
            ]
            written = await c.download_outputs(session.session_id, tmp_path / "out")
            assert [p.read_text() for p in written] == ["async hello"]

            await c.upload(session.session_id, {"b.txt": b"b"})
            await c.upload_dir(session.session_id, src, prefix="copy")
            paths = [f.path async for f in c.list_files(session.session_id)]
            assert {"a.txt", "b.txt", "big.bin", "copy/a.txt", "copy/big.bin", "gen/out.txt"} <= set(paths)
            dest = tmp_path / "big.bin"
            info = await c.download(session.session_id, "copy/big.bin", dest, include_sha256=True)
            assert dest.read_bytes() == big and info.size == len(big)
            assert await c.read_file(session.session_id, "b.txt") == b"b"

            assert (await c.get_session(session.session_id)).job_count == 1
            ids = [s.session_id async for s in c.list_sessions({"t": "async"})]
            assert session.session_id in ids
            assert [j.job_id async for j in c.list_jobs(session.session_id)] == [run.job.job_id]
            assert (await c.get_job(run.job.job_id)).state == job_pb2.JOB_STATE_SUCCEEDED
            job2 = await c.submit(session.session_id, "lines 3")
            assert (await c.wait(job2.job_id)).state == job_pb2.JOB_STATE_SUCCEEDED
            tail = [e.seq async for e in c.stream(job2.job_id, after_seq=2)]
            assert tail[0] == 3 and tail == list(range(3, 3 + len(tail)))
            assert await c.delete_file(session.session_id, "b.txt") == 1
            assert await c.delete_session(session.session_id) == 0

    run_async(main())


def test_async_reattach_after_disconnect(server: Server, proxy: Proxy) -> None:
    async def main() -> None:
        async with agentd.AsyncClient(proxy.address, api_key=KEY_A) as c:
            session = await c.create_session()
            run = c.run(session.session_id, "lines 15 ; sleep 1.5 ; lines 15")
            events: list[agentd.JobEvent] = []
            async for ev in run:
                events.append(ev)
                if ev.WhichOneof("kind") == "text" and ev.text.text == "sleeping 1.5s":
                    proxy.drop_all()
            assert proxy.connections >= 2
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            assert run.job is not None and run.job.state == job_pb2.JOB_STATE_SUCCEEDED
            assert len(events) == run.job.last_seq

            job = await c.submit(session.session_id, "lines 5 ; sleep 1.5 ; lines 5")
            seen: list[int] = []
            async for ev in c.stream(job.job_id):
                seen.append(ev.seq)
                if len(seen) == 2:
                    proxy.drop_all()
            assert seen == list(range(1, (await c.get_job(job.job_id)).last_seq + 1))

    run_async(main())


def test_async_cancel_and_errors(server: Server) -> None:
    async def main() -> None:
        async with agentd.AsyncClient(server.address, api_key=KEY_A) as c:
            session = await c.create_session({"x.txt": "x"})
            run = c.run(session.session_id, "sleep 30")
            async for ev in run:
                if ev.WhichOneof("kind") == "text" and ev.text.text.startswith("sleeping"):
                    await run.cancel()
            assert run.job is not None and run.job.state == job_pb2.JOB_STATE_CANCELLED

            with pytest.raises(agentd.InvalidArgumentError) as e1:
                await c.submit(session.session_id, "")
            assert e1.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert e1.value.reason == "MISSING_FIELD"
            with pytest.raises(agentd.InvalidArgumentError) as e2:
                await c.upload(session.session_id, {"/abs.txt": b"x"})
            assert e2.value.reason == "INVALID_PATH"
            with pytest.raises(agentd.NotFoundError) as e3:
                await c.get_job("job_00000000000000000000000000")
            assert e3.value.code == grpc.StatusCode.NOT_FOUND
            with pytest.raises(agentd.NotFoundError) as e4:
                async for _ in c.stream("job_00000000000000000000000000"):
                    pass
            assert e4.value.code == grpc.StatusCode.NOT_FOUND

        async with agentd.AsyncClient(server.address, api_key="nope") as bad:
            with pytest.raises(agentd.UnauthenticatedError) as e5:
                await bad.get_session(session.session_id)
            assert e5.value.reason == "INVALID_CREDENTIALS"

    run_async(main())


def test_example_writes_five_stories(keyless_server: Server, tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "stories.py"
    env = dict(os.environ, AGENTD_URL=keyless_server.address)
    env.pop("AGENTD_API_KEY", None)
    proc = subprocess.run(
        [sys.executable, str(example)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    stories = sorted((tmp_path / "out").glob("story-*/story.txt"))
    assert len(stories) == 5
    for s in stories:
        assert s.read_text().startswith("Once upon a time")
    assert proc.stdout.count("finished: JOB_STATE_SUCCEEDED") == 5
