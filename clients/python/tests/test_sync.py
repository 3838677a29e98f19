"""The blocking client against the real server: every helper and every RPC."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import grpc
import pytest

import agentd
from agentd.v1 import file_pb2, job_pb2, session_pb2
from conftest import KEY_A, KEY_B, Proxy, Server


@pytest.fixture
def client(server: Server) -> agentd.Client:
    with agentd.Client(server.address, api_key=KEY_A) as c:
        yield c


def kinds(events: list[agentd.JobEvent]) -> list[str]:
    return [str(e.WhichOneof("kind")) for e in events]


def assert_contiguous(events: list[agentd.JobEvent], first: int = 1) -> None:
    assert [e.seq for e in events] == list(range(first, first + len(events)))


# More changes than one page of GetJobOutputs holds (10,000).
MANY = 10_050
MAKE_MANY = f"bash mkdir many && seq -f 'many/f%05g' 1 {MANY} | xargs touch"


def test_outputs_gathers_every_page(client: agentd.Client) -> None:
    session = client.create_session({})
    run = client.run(session.session_id, MAKE_MANY)
    list(run)
    assert run.job is not None and run.job.state == job_pb2.JOB_STATE_SUCCEEDED
    outputs = client.outputs(session.session_id)
    assert outputs.job_id == run.job.job_id and outputs.next_page_token == ""
    assert [c.path for c in outputs.changes] == [f"many/f{i:05d}" for i in range(1, MANY + 1)]


def test_seed_flow(client: agentd.Client, tmp_path: Path) -> None:
    session = client.create_session({"README.md": "hello\n", "data/in.bin": b"\x00\x01"}, labels={"t": "seed"})
    assert session.session_id.startswith("ses_")
    assert session.file_count == 2

    run = client.run(session.session_id, "write out.txt hello world")
    events = list(run)
    assert_contiguous(events)
    assert kinds(events)[0] == "started"
    assert kinds(events)[-1] == "finished"
    calls = [e.tool_call for e in events if e.WhichOneof("kind") == "tool_call"]
    assert [c.name for c in calls] == ["Write"]
    assert run.job is not None
    assert run.job.state == job_pb2.JOB_STATE_SUCCEEDED
    assert run.job.last_seq == events[-1].seq
    assert events[-1].finished.state == job_pb2.JOB_STATE_SUCCEEDED

    outputs = client.outputs(session.session_id)
    assert outputs.job_id == run.job.job_id
    assert [(c.path, c.kind) for c in outputs.changes] == [("out.txt", file_pb2.CHANGE_KIND_ADDED)]
    written = client.download_outputs(session.session_id, tmp_path / "out")
    assert written == [tmp_path / "out" / "out.txt"]
    assert (tmp_path / "out" / "out.txt").read_text() == "hello world"

    paths = [f.path for f in client.list_files(session.session_id, include_sha256=True)]
    assert {"README.md", "data/in.bin", "out.txt"} <= set(paths)
    assert client.read_file(session.session_id, "README.md") == b"hello\n"

    assert client.get_session(session.session_id).job_count == 1
    assert session.session_id in [s.session_id for s in client.list_sessions({"t": "seed"})]
    assert [j.job_id for j in client.list_jobs(session.session_id)] == [run.job.job_id]
    assert client.get_job(run.job.job_id).result == run.job.result

    assert client.delete_file(session.session_id, "data", recursive=True) == 1
    assert "data/in.bin" not in [f.path for f in client.list_files(session.session_id)]
    assert client.delete_session(session.session_id) == 0
    with pytest.raises(agentd.NotFoundError) as e:
        client.get_session(session.session_id)
    assert e.value.reason == "SESSION_NOT_FOUND"


def test_directory_session_and_streamed_transfer(client: agentd.Client, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "main.py").write_text("print('hi')\n")
    script = src / "run.sh"
    script.write_text("#!/bin/sh\necho ok\n")
    script.chmod(0o755)
    big = os.urandom(3 * agentd.CHUNK_SIZE + 12345)  # several chunks each way
    (src / "big.bin").write_bytes(big)

    session = client.create_session(src)
    assert session.file_count == 3
    infos = {f.path: f for f in client.list_files(session.session_id, include_sha256=True)}
    assert infos["run.sh"].mode & 0o777 == 0o755
    assert infos["big.bin"].size == len(big)
    assert infos["big.bin"].sha256 == hashlib.sha256(big).hexdigest()

    uploaded = client.upload(session.session_id, {"copy/big2.bin": src / "big.bin", "note.txt": b"n"})
    assert [u.path for u in uploaded] == ["copy/big2.bin", "note.txt"]
    assert uploaded[0].sha256 == hashlib.sha256(big).hexdigest()

    dest = tmp_path / "dl" / "big.bin"
    info = client.download(session.session_id, "copy/big2.bin", dest, include_sha256=True)
    assert info.size == len(big) and info.sha256 == hashlib.sha256(big).hexdigest()
    assert dest.read_bytes() == big
    # Resume from an offset: only the tail is sent.
    tail = tmp_path / "tail.bin"
    client.download(session.session_id, "copy/big2.bin", tail, offset=len(big) - 100)
    assert tail.read_bytes() == big[-100:]
    client.delete_session(session.session_id)


def test_stream_after_seq_and_wait(client: agentd.Client) -> None:
    session = client.create_session()
    job = client.submit(session.session_id, "lines 5")
    assert job.state in (job_pb2.JOB_STATE_QUEUED, job_pb2.JOB_STATE_RUNNING)
    final = client.wait(job.job_id)
    assert final.state == job_pb2.JOB_STATE_SUCCEEDED
    everything = list(client.stream(job.job_id))
    assert_contiguous(everything)
    assert len(everything) == final.last_seq
    tail = list(client.stream(job.job_id, after_seq=3))
    assert [e.seq for e in tail] == [e.seq for e in everything[3:]]
    texts = [e.text.text for e in everything if e.WhichOneof("kind") == "text"]
    assert texts[:5] == [f"line {i}" for i in range(1, 6)]
    # wait() on a finished job returns at once.
    assert client.wait(job.job_id).state == job_pb2.JOB_STATE_SUCCEEDED
    client.delete_session(session.session_id)


def test_run_reattaches_after_disconnect(server: Server, proxy: Proxy) -> None:
    with agentd.Client(proxy.address, api_key=KEY_A) as c:
        session = c.create_session()
        run = c.run(session.session_id, "lines 20 ; sleep 1.5 ; lines 20")
        events: list[agentd.JobEvent] = []
        dropped = False
        for ev in run:
            events.append(ev)
            if not dropped and ev.WhichOneof("kind") == "text" and ev.text.text == "sleeping 1.5s":
                proxy.drop_all()  # the job goes on on the server; the stream must resume
                dropped = True
        assert dropped
        assert proxy.connections >= 2
        assert_contiguous(events)
        assert kinds(events)[-1] == "finished"
        assert run.job is not None and run.job.state == job_pb2.JOB_STATE_SUCCEEDED
        texts = [e.text.text for e in events if e.WhichOneof("kind") == "text"]
        assert texts.count("line 20") == 2 and texts.count("line 1") == 2


def test_stream_reattaches_after_disconnect(server: Server, proxy: Proxy) -> None:
    with agentd.Client(proxy.address, api_key=KEY_A) as c:
        session = c.create_session()
        job = c.submit(session.session_id, "lines 10 ; sleep 1.5 ; lines 10")
        events: list[agentd.JobEvent] = []
        for ev in c.stream(job.job_id):
            events.append(ev)
            if len(events) == 3:
                proxy.drop_all()
        assert_contiguous(events)
        assert events[-1].finished.state == job_pb2.JOB_STATE_SUCCEEDED
        assert len(events) == c.get_job(job.job_id).last_seq


def test_cancel(client: agentd.Client) -> None:
    session = client.create_session()
    run = client.run(session.session_id, "sleep 30")
    events: list[agentd.JobEvent] = []
    for ev in run:
        events.append(ev)
        if ev.WhichOneof("kind") == "text" and ev.text.text.startswith("sleeping"):
            cancelled = run.cancel()
            assert cancelled.job_id == run.job_id
    assert events[-1].finished.state == job_pb2.JOB_STATE_CANCELLED
    assert run.job is not None and run.job.state == job_pb2.JOB_STATE_CANCELLED
    # Cancelling a finished job is idempotent: it returns the job as it ended.
    assert client.cancel(run.job_id).state == job_pb2.JOB_STATE_CANCELLED
    assert client.wait(run.job_id).state == job_pb2.JOB_STATE_CANCELLED


def test_failed_job_is_a_result_not_an_error(client: agentd.Client) -> None:
    session = client.create_session()
    job = client.run(session.session_id, "fail 500 Internal Server Error").wait()
    assert job.state == job_pb2.JOB_STATE_FAILED
    assert "Internal Server Error" in job.error_message
    with pytest.raises(agentd.NotFoundError) as e:
        client.outputs(session.session_id)
    assert e.value.reason == "NO_SUCCEEDED_JOB"


def test_bad_input_raises_the_right_error(client: agentd.Client) -> None:
    session = client.create_session()
    with pytest.raises(agentd.InvalidArgumentError) as e1:
        client.submit(session.session_id, "")
    assert e1.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e1.value.reason == "MISSING_FIELD"
    assert e1.value.domain == agentd.ERROR_DOMAIN
    assert isinstance(e1.value, agentd.AgentdError)

    with pytest.raises(agentd.InvalidArgumentError) as e2:
        client.upload(session.session_id, {"../escape.txt": b"x"})
    assert e2.value.reason == "INVALID_PATH"

    with pytest.raises(agentd.NotFoundError) as e3:
        client.read_file(session.session_id, "missing.txt")
    assert e3.value.code == grpc.StatusCode.NOT_FOUND
    assert e3.value.reason == "FILE_NOT_FOUND"

    with pytest.raises(agentd.InvalidArgumentError) as e4:
        client.submit(session.session_id, "hi", env={"PATH": "/evil"})
    assert e4.value.reason == "FORBIDDEN_ENV"

    with pytest.raises(agentd.NotFoundError) as e5:
        client.submit("ses_00000000000000000000000000", "hi")
    assert e5.value.reason in ("SESSION_NOT_FOUND", "")
    # A client-side check, before anything is sent.
    with pytest.raises(agentd.InvalidArgumentError):
        client.create_session(Path("/nonexistent/dir"))


def test_tenants_are_isolated(server: Server, client: agentd.Client) -> None:
    session = client.create_session()
    with agentd.Client(server.address, api_key=KEY_B) as other:
        with pytest.raises(agentd.NotFoundError) as e:
            other.get_session(session.session_id)
        assert e.value.reason == "SESSION_NOT_FOUND"


def test_auth_failure(server: Server) -> None:
    with agentd.Client(server.address, api_key="wrong-key") as c:
        with pytest.raises(agentd.UnauthenticatedError) as e:
            c.create_session()
        assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert e.value.reason == "INVALID_CREDENTIALS"


def test_env_configuration(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTD_URL", f"http://{server.address}")
    monkeypatch.setenv("AGENTD_API_KEY", KEY_A)
    with agentd.Client() as c:
        s = c.create_session()
        assert c.get_session(s.session_id).session_id == s.session_id
    monkeypatch.delenv("AGENTD_API_KEY")
    with agentd.Client() as c:  # no key: none is sent, and this server requires one
        with pytest.raises(agentd.UnauthenticatedError) as e:
            c.create_session()
        assert e.value.reason == "MISSING_CREDENTIALS"


def test_raw_stubs_are_authenticated(client: agentd.Client) -> None:
    resp = client.sessions.CreateSession(session_pb2.CreateSessionRequest(ttl_seconds=60))
    assert resp.session.ttl_seconds == 60
    got = client.jobs.ListJobs(job_pb2.ListJobsRequest(session_id=resp.session.session_id))
    assert list(got.jobs) == []


def test_unreachable_server_is_unavailable() -> None:
    with socket_port() as port:
        pass  # the port is free now: nothing listens there
    with agentd.Client(f"127.0.0.1:{port}", api_key=KEY_A) as c:
        with pytest.raises(agentd.UnavailableError):
            c.get_session("ses_x")


class socket_port:
    def __enter__(self) -> int:
        import socket

        self._s = socket.create_server(("127.0.0.1", 0))
        return int(self._s.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self._s.close()


def test_concurrent_runs_from_threads(client: agentd.Client) -> None:
    results: dict[int, int] = {}

    def work(i: int) -> None:
        s = client.create_session()
        results[i] = client.run(s.session_id, f"lines {i + 1}").wait().state

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: job_pb2.JOB_STATE_SUCCEEDED for i in range(3)}


def test_server_info(client: agentd.Client) -> None:
    info = client.server_info()
    assert info.version
    assert info.default_agent == "claude"
    claude = [a for a in info.agents if a.name == "claude"]
    assert claude and claude[0].available
    assert info.limits.max_upload_chunk_bytes in (0, agentd.CHUNK_SIZE) or info.limits.max_upload_chunk_bytes >= agentd.CHUNK_SIZE


def test_archives_round_trip_and_refuse_traversal(client: agentd.Client, tmp_path: Path) -> None:
    import io as _io
    import tarfile
    import zipfile

    session = client.create_session({"a.txt": "alpha", "lib/b.py": "print(1)\n"})
    for fmt, name in (("tar.gz", "ws.tar.gz"), ("zip", "ws.zip"), ("tar", "ws.tar")):
        size = client.download_archive(session.session_id, tmp_path / name, format=fmt)
        assert size == (tmp_path / name).stat().st_size > 0
        copy = client.create_session()
        done = client.upload_archive(copy.session_id, tmp_path / name, format=fmt, dest="in")
        assert done.files == 2
        assert client.read_file(copy.session_id, "in/lib/b.py") == b"print(1)\n"
    with zipfile.ZipFile(tmp_path / "ws.zip") as z:
        assert sorted(n.rstrip("/") for n in z.namelist()) == ["a.txt", "lib", "lib/b.py"]

    bad = _io.BytesIO()
    with tarfile.open(fileobj=bad, mode="w") as t:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        t.addfile(info, _io.BytesIO(b"x"))
    bad.seek(0)
    with pytest.raises(agentd.InvalidArgumentError) as err:
        client.upload_archive(session.session_id, bad, format="tar")
    assert err.value.reason == "INVALID_PATH"
    with pytest.raises(ValueError):
        client.download_archive(session.session_id, tmp_path / "x", format="rar")


def test_watch_files_sees_a_jobs_writes(client: agentd.Client) -> None:
    session = client.create_session()
    seen: list[tuple[int, str]] = []
    ready = threading.Event()

    def watch() -> None:
        events = client.watch_files(session.session_id)
        ready.set()
        for e in events:
            seen.append((e.kind, e.path))
            if e.path == "b.txt":
                return

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    ready.wait(5)
    import time as _time

    _time.sleep(0.5)  # the generator's call starts on its first next()
    client.run(session.session_id, "write a.txt 1 ; sleep 0.2 ; write b.txt 2").wait()
    t.join(20)
    assert seen == [(file_pb2.FILE_EVENT_KIND_CREATED, "a.txt"), (file_pb2.FILE_EVENT_KIND_CREATED, "b.txt")]


def test_presets_render_and_stay_per_tenant(client: agentd.Client, server: Server) -> None:
    client.create_preset(
        "py-greet", prompt_template="say hi to {{who}}", overridable=["model"], timeout_seconds=60
    )
    names = [p.name for p in client.list_presets()]
    assert "py-greet" in names
    s = client.create_session()
    job = client.run(s.session_id, "", preset="py-greet", variables={"who": "python"}).wait()
    assert job.prompt == "say hi to python"
    assert job.result == "turn 1: say hi to python"
    with pytest.raises(agentd.InvalidArgumentError) as e:
        client.submit(s.session_id, "", preset="py-greet")
    assert e.value.reason == "MISSING_VARIABLE"
    with pytest.raises(agentd.InvalidArgumentError) as e:
        client.submit(s.session_id, "", preset="py-greet", variables={"who": "x"}, agent="claude")
    assert e.value.reason == "PRESET_OVERRIDE_DENIED"
    with agentd.Client(server.address, api_key=KEY_B) as other:
        with pytest.raises(agentd.NotFoundError):
            other.get_preset("py-greet")
    updated = client.update_preset("py-greet", prompt_template="bye {{who}}")
    assert updated.prompt_template == "bye {{who}}"
    client.delete_preset("py-greet")
    with pytest.raises(agentd.NotFoundError):
        client.get_preset("py-greet")


def test_diff_fork_rewind_and_snapshot_archives(client: agentd.Client, tmp_path: Path) -> None:
    import tarfile

    session = client.create_session({"a.txt": "zero\n"})
    sid = session.session_id
    run1 = client.run(sid, "bash echo one > a.txt ; first")
    j1 = run1.wait()
    assert run1.diff() == "diff --git a/a.txt b/a.txt\n--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-zero\n+one\n"
    j2 = client.run(sid, "bash echo two > a.txt ; second").wait()
    assert j2.result == "turn 2: second"

    # The archive of job 1 is its snapshot, whatever the workspace holds now.
    client.download_archive(sid, tmp_path / "j1.tar", format="tar", job_id=j1.job_id)
    with tarfile.open(tmp_path / "j1.tar") as t:
        member = t.extractfile("a.txt")
        assert member is not None and member.read() == b"one\n"

    fork = client.fork_session(j1.job_id, labels={"kind": "fork"})
    assert fork.session_id != sid and fork.labels["kind"] == "fork"
    assert client.read_file(fork.session_id, "a.txt") == b"one\n"
    assert client.run(fork.session_id, "in fork").wait().result == "turn 2: in fork"
    assert client.read_file(sid, "a.txt") == b"two\n"

    rewound = client.rewind_session(sid, j2.job_id, before=True)
    assert list(rewound.rewound_job_ids) == [j2.job_id]
    assert client.read_file(sid, "a.txt") == b"one\n"
    assert client.get_job(j2.job_id).rewound_past
    assert client.run(sid, "again").wait().result == "turn 2: again"
    with pytest.raises(agentd.NotFoundError):
        client.fork_session("job_nope")
