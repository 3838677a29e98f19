"""agentd-bench's Python consumer: reads one job's events through the SDK's ``Client.stream`` (the
way an application would) and prints ``{"events": N, "seconds": S}`` as one JSON line.

    python bench/consume.py --target 127.0.0.1:50051 --job job_...

Run by ``agentd-bench --only sdk`` against agentd and against the bare baseline server.
"""

from __future__ import annotations

import argparse
import json
import time

import agentd


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--target", required=True, help="host:port of the server")
    p.add_argument("--job", required=True, help="the job whose events to read")
    a = p.parse_args()
    with agentd.Client(a.target) as client:
        n = 0
        t0 = time.perf_counter()
        for _ in client.stream(a.job):
            n += 1
        seconds = time.perf_counter() - t0
    print(json.dumps({"events": n, "seconds": seconds}))


if __name__ == "__main__":
    main()
