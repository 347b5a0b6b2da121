"""Load generation: sequential latencies, and N concurrent callers for a fixed time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Result:
    count: int
    seconds: float
    latencies: list[float]

    @property
    def throughput(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        """The q-th percentile latency in milliseconds (99.9 too), interpolated."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        at = (len(ordered) - 1) * q / 100
        low = int(at)
        high = min(low + 1, len(ordered) - 1)
        return (ordered[low] + (ordered[high] - ordered[low]) * (at - low)) * 1000

    @property
    def slowest(self) -> float:
        """The slowest request, in milliseconds."""
        return max(self.latencies, default=float("nan")) * 1000


def sequential(call: Callable[[], object], n: int, warmup: int = 3) -> Result:
    for _ in range(warmup):
        call()
    lat: list[float] = []
    started = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        call()
        lat.append(time.perf_counter() - t)
    return Result(n, time.perf_counter() - started, lat)


def concurrent(call: Callable[[], object], callers: int, seconds: float) -> Result:
    """``callers`` threads call in a loop until ``seconds`` pass; errors are re-raised."""
    lat: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(callers + 1)
    deadline = 0.0

    def run() -> None:
        start.wait()
        mine: list[float] = []
        try:
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                call()
                mine.append(time.perf_counter() - t)
        except BaseException as exc:
            errors.append(exc)
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(callers)]
    for th in threads:
        th.start()
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    start.wait()
    for th in threads:
        th.join(seconds + 120)
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return Result(len(lat), elapsed, lat)


# --- HTTP load from a process of its own ------------------------------------------------
# Keep-alive connections over asyncio streams, one per caller: a few microseconds of
# client work per request, so that the figures are the server's, not the client's.


def http_load(
    url: str, body: bytes, callers: int, *, seconds: float = 0, requests: int = 0
) -> Result:
    """POST ``body`` to ``url`` from ``callers`` connections, for ``seconds`` or until
    ``requests`` answers (per caller), in a child process; every answer must be 200."""
    import json
    import subprocess
    import sys
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        f.write(body)
        f.flush()
        argv = [sys.executable, "-m", "ops.bench.load", url, f.name, str(callers),
                str(seconds), str(requests)]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, check=False, timeout=seconds + 600)
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed: {done.stderr.decode()[-2000:]}")
    out = json.loads(done.stdout)
    return Result(out["count"], out["seconds"], out["latencies"])


def _request(url: str, body: bytes | None) -> tuple[str, int, bytes]:
    """The host, port and bytes of one request: a POST of ``body`` as JSON, or a GET."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    if body is None:
        return host, port, f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return host, port, head.encode() + body


async def _exchange(reader: Any, writer: Any, request: bytes) -> tuple[int, bytes]:
    """One request on a keep-alive connection: its status and body."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return int(head[9:12]), await reader.readexactly(length)


async def _caller(
    host: str, port: int, request: bytes, until: Callable[[int, float], bool], lat: list[float]
) -> None:
    import asyncio

    reader, writer = await asyncio.open_connection(host, port)
    try:
        while not until(len(lat), time.perf_counter()):
            started = time.perf_counter()
            status, answer = await _exchange(reader, writer, request)
            if status != 200:
                raise RuntimeError(f"{status}: {answer[:300]!r}")
            lat.append(time.perf_counter() - started)
    finally:
        writer.close()


async def _load(url: str, body: bytes, callers: int, seconds: float, requests: int) -> Result:
    import asyncio

    host, port, request = _request(url, body)
    warm: list[float] = []
    await _caller(host, port, request, lambda n, _: n >= 3, warm)
    deadline = time.perf_counter() + seconds

    def until(n: int, at: float) -> bool:
        return n >= requests if requests else at >= deadline

    per_caller: list[list[float]] = [[] for _ in range(callers)]
    started = time.perf_counter()
    await asyncio.gather(*(_caller(host, port, request, until, lat) for lat in per_caller))
    elapsed = time.perf_counter() - started
    latencies = [x for lat in per_caller for x in lat]
    return Result(len(latencies), elapsed, latencies)


def main() -> None:
    import asyncio
    import json
    import sys
    from pathlib import Path

    url, body_file, callers, seconds, requests = sys.argv[1:6]
    body = Path(body_file).read_bytes()
    run: Any = asyncio.run
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        pass
    result = run(_load(url, body, int(callers), float(seconds), int(requests)))
    json.dump({"count": result.count, "seconds": result.seconds,
               "latencies": result.latencies}, sys.stdout)  # fmt: skip


if __name__ == "__main__":
    main()


# --- a burst of requests that answer with a body to keep -------------------------------
# Submissions answer 201 with the job; the bench keeps every answer to check what ran.


def burst(
    url: str,
    callers: int,
    per_caller: int,
    *,
    body: bytes | None = None,
    expect: tuple[int, ...] = (200,),
) -> tuple[Result, list[bytes]]:
    """``callers`` connections each send ``per_caller`` requests (a POST of ``body``, or a
    GET without one) in a child process; every answer's status must be in ``expect``.
    Returns the latencies and every answer's body."""
    import base64
    import json
    import subprocess
    import sys
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        f.write(json.dumps({"url": url, "callers": callers, "per_caller": per_caller,
                            "body": None if body is None else body.decode(),
                            "expect": list(expect)}).encode())  # fmt: skip
        f.flush()
        argv = [sys.executable, "-c", "from ops.bench.load import burst_main; burst_main()",
                f.name]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, check=False, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed: {done.stderr.decode()[-2000:]}")
    out = json.loads(done.stdout)
    answers = [base64.b64decode(a) for a in out["answers"]]
    return Result(out["count"], out["seconds"], out["latencies"]), answers


async def _burst_caller(
    host: str,
    port: int,
    request: bytes,
    count: int,
    expect: tuple[int, ...],
    lat: list[float],
    answers: list[bytes],
) -> None:
    import asyncio

    reader, writer = await asyncio.open_connection(host, port)
    try:
        for _ in range(count):
            started = time.perf_counter()
            status, answer = await _exchange(reader, writer, request)
            lat.append(time.perf_counter() - started)
            if status not in expect:
                raise RuntimeError(f"{status}: {answer[:300]!r}")
            answers.append(answer)
    finally:
        writer.close()


async def _burst(
    url: str, body: bytes | None, callers: int, per_caller: int, expect: tuple[int, ...]
) -> tuple[Result, list[bytes]]:
    import asyncio

    host, port, request = _request(url, body)
    per: list[list[float]] = [[] for _ in range(callers)]
    answers: list[list[bytes]] = [[] for _ in range(callers)]
    started = time.perf_counter()
    await asyncio.gather(
        *(
            _burst_caller(host, port, request, per_caller, expect, lat, got)
            for lat, got in zip(per, answers, strict=True)
        )
    )
    elapsed = time.perf_counter() - started
    latencies = [x for lat in per for x in lat]
    return Result(len(latencies), elapsed, latencies), [a for got in answers for a in got]


def burst_main() -> None:
    """The child process of ``burst``: its one argument is the file of its parameters."""
    import asyncio
    import base64
    import json
    import sys
    from pathlib import Path

    plan = json.loads(Path(sys.argv[1]).read_text())
    body = None if plan["body"] is None else plan["body"].encode()
    run: Any = asyncio.run
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        pass
    result, answers = run(
        _burst(plan["url"], body, plan["callers"], plan["per_caller"], tuple(plan["expect"]))
    )
    json.dump({"count": result.count, "seconds": result.seconds, "latencies": result.latencies,
               "answers": [base64.b64encode(a).decode() for a in answers]},
              sys.stdout)  # fmt: skip
