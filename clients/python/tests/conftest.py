"""Test harness: starts the real `agentd` binary on port 0 with a temp data dir and the scripted
stand-in Claude (tests/fixtures/fake-claude), and a TCP proxy that can cut every connection to
simulate a dropped network."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
KEY_A = "sdk-test-key-a"
KEY_B = "sdk-test-key-b"


def agentd_binary() -> Path:
    path = Path(os.environ.get("AGENTD_BIN", REPO / "target" / "debug" / "agentd"))
    if not path.is_file():
        pytest.fail(f"agentd binary not found at {path}: run `cargo build` (or set AGENTD_BIN)")
    return path


class Server:
    def __init__(self, data_dir: Path, *, keys: bool = True, config: str | None = None) -> None:
        env = dict(os.environ)
        env.pop("AGENTD_API_KEYS", None)
        if keys:
            env["AGENTD_API_KEYS"] = f"a:{KEY_A},b:{KEY_B}"
        env.update(
            AGENTD_CLAUDE_BIN=str(REPO / "tests" / "fixtures" / "fake-claude"),
            AGENTD_KILL_GRACE_SECONDS="2",
            AGENTD_SHUTDOWN_GRACE_SECONDS="2",
            AGENTD_LOG=os.environ.get("AGENTD_LOG", "warn"),
        )
        env.pop("AGENTD_URL", None)
        env.pop("AGENTD_API_KEY", None)
        argv = [str(agentd_binary()), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)]
        if config is not None:
            data_dir.mkdir(parents=True, exist_ok=True)
            path = data_dir.parent / "agentd.toml"
            path.write_text(config)
            argv += ["--config", str(path)]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=sys.stderr,
            env=env,
            text=True,
        )
        assert self.proc.stdout is not None
        self.address = ""
        for line in self.proc.stdout:
            if line.startswith("agentd listening on "):
                self.address = line.removeprefix("agentd listening on ").strip()
                break
        if not self.address:
            code = self.proc.wait()
            pytest.fail(f"agentd exited with {code} before listening")
        # Keep draining stdout so the server never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for _ in self.proc.stdout:
            pass

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Proxy:
    """A TCP proxy in front of the server; `drop_all()` cuts every open connection at once (the
    client sees the connection reset, as on a network failure), while new ones still work."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self.connections = 0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks += [client, upstream]
                self.connections += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def drop_all(self) -> None:
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self._listener.close()
        self.drop_all()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("agentd") / "data")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def keyless_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server started like the README's start command: loopback, no API keys."""
    s = Server(tmp_path_factory.mktemp("agentd-nokeys") / "data", keys=False)
    yield s
    s.stop()


@pytest.fixture
def proxy(server: Server) -> Iterator[Proxy]:
    p = Proxy(server.address)
    yield p
    p.close()
