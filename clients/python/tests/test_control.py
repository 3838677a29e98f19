"""Two-way control from the SDK against the real server and the stand-in Claude's stream-json
control protocol: on_permission (sync and async callbacks), send and interrupt."""

from __future__ import annotations

import asyncio

import pytest

import agentd
from agentd.v1 import job_pb2
from conftest import KEY_A, Server


@pytest.fixture
def client(server: Server) -> agentd.Client:
    with agentd.Client(server.address, api_key=KEY_A) as c:
        yield c


def decide(req: job_pb2.PermissionRequest) -> agentd.PermissionAnswer:
    """Allows writing allowed*.txt, denies everything else with a reason."""
    return True if '"allowed' in req.input_json else "not that file: use allowed*.txt"


def test_on_permission_allows_and_denies(client: agentd.Client) -> None:
    s = client.create_session()
    asked: list[job_pb2.PermissionRequest] = []

    def callback(req: job_pb2.PermissionRequest) -> agentd.PermissionAnswer:
        asked.append(req)
        return decide(req)

    run = client.run(
        s.session_id, "write allowed.txt yes ; write other.txt no", permission_mode="ask"
    ).on_permission(callback)
    events = list(run)
    job = run.job
    assert job is not None and job.state == job_pb2.JOB_STATE_SUCCEEDED, job
    assert [r.tool for r in asked] == ["Write", "Write"]
    assert client.read_file(s.session_id, "allowed.txt") == b"yes"
    with pytest.raises(agentd.NotFoundError):
        client.read_file(s.session_id, "other.txt")
    resolved = [e.permission_resolved for e in events if e.HasField("permission_resolved")]
    assert [(r.who, r.allow) for r in resolved] == [("caller", True), ("caller", False)]
    assert resolved[1].message == "not that file: use allowed*.txt"
    denied = [e for e in events if e.HasField("tool_result") and e.tool_result.is_error]
    assert denied and "not that file" in denied[0].tool_result.content


def test_unanswered_requests_fall_to_the_timeout(client: agentd.Client) -> None:
    s = client.create_session()
    run = client.run(
        s.session_id,
        "write left.txt never",
        permission_mode="ask",
        permission_timeout_seconds=1,
    ).on_permission(lambda _req: None)
    job = run.wait()
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job
    with pytest.raises(agentd.NotFoundError):
        client.read_file(s.session_id, "left.txt")


def test_send_reaches_the_agents_next_turn(client: agentd.Client) -> None:
    s = client.create_session()
    run = client.run(s.session_id, "sleep 3", permission_mode="ask")
    for ev in run:
        if ev.HasField("text") and ev.text.text.startswith("sleeping"):
            run.send("remember mango")
    job = run.job
    assert job is not None and job.state == job_pb2.JOB_STATE_SUCCEEDED, job
    assert job.result == "turn 2: remember mango"


def test_interrupt_keeps_the_conversation(client: agentd.Client) -> None:
    s = client.create_session()
    run = client.run(s.session_id, "sleep 60", permission_mode="ask")
    for ev in run:
        if ev.HasField("text") and ev.text.text.startswith("sleeping"):
            run.interrupt()
    job = run.job
    assert job is not None and job.state == job_pb2.JOB_STATE_CANCELLED, job
    assert job.reason == "INTERRUPTED"
    nxt = client.run(s.session_id, "hello again").wait()
    assert nxt.result == "turn 2: hello again", nxt


def test_control_of_a_finished_job_is_refused(client: agentd.Client) -> None:
    s = client.create_session()
    run = client.run(s.session_id, "hello", permission_mode="ask")
    run.wait()
    with pytest.raises(agentd.FailedPreconditionError) as e:
        run.send("too late")
    assert e.value.reason == "JOB_FINISHED"
    with pytest.raises(agentd.FailedPreconditionError):
        run.interrupt()


def test_async_on_permission_takes_sync_and_async_callbacks(server: Server) -> None:
    async def main() -> None:
        async with agentd.AsyncClient(f"http://{server.address}", api_key=KEY_A) as c:
            s = await c.create_session()

            async def slow_decide(req: job_pb2.PermissionRequest) -> agentd.PermissionAnswer:
                await asyncio.sleep(0.01)
                return decide(req)

            for callback in (slow_decide, decide):
                run = c.run(
                    s.session_id,
                    "write allowed-async.txt ok ; write nope.txt no",
                    permission_mode="ask",
                ).on_permission(callback)
                job = await run.wait()
                assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job
                assert await c.read_file(s.session_id, "allowed-async.txt") == b"ok"
                with pytest.raises(agentd.NotFoundError):
                    await c.read_file(s.session_id, "nope.txt")

            run = c.run(s.session_id, "sleep 60", permission_mode="ask")
            async for ev in run:
                if ev.HasField("text") and ev.text.text.startswith("sleeping"):
                    await run.interrupt()
            assert run.job is not None and run.job.reason == "INTERRUPTED", run.job

    asyncio.run(main())
