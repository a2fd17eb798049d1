"""Loopback load generation shared by ``serve.py`` and ``soak.py``: wrk when installed, else client
processes; and the JSON floor (what orjson alone costs for the same bodies and answers).

wrk is a C load generator (Debian/Ubuntu: ``apt-get install wrk``; macOS: ``brew install wrk``):
one event-loop thread per core, a few microseconds of CPU per request, so on a machine the
client shares with the server it measures the server, not itself. Without it, ``--clients``
Python processes with raw keep-alive sockets stand in (about 50 us of CPU per request each).
"""

from __future__ import annotations

import json
import multiprocessing
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import orjson

#: wrk script: POST the bodies in turn (each line of the file named by the first argument is
#: ``content type<TAB>body``) and print the latency percentiles and error counts as one JSON line.
#: No response() callback: wrk then skips handing each answer to Lua, which for multi-megabyte
#: answers would be most of its cost. (wrk cannot pair an answer with its request when the server
#: closes a connection, so checks of each answer's status use the client processes below.)
WRK_SCRIPT = r"""
local bodies = {}
function init(args)
  local i = 0
  for line in io.lines(args[1]) do
    i = i + 1
    local ctype, body = line:match("^([^\t]*)\t(.*)$")
    bodies[i] = wrk.format("POST", "/invocations", {["Content-Type"] = ctype}, body)
  end
  next_index = math.random(#bodies)
end
function request()
  next_index = next_index % #bodies + 1
  return bodies[next_index]
end
function done(summary, latency, requests)
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "seconds": %.6f, "p50_ms": %.3f, "p99_ms": %.3f, "p999_ms": %.3f, '
      .. '"max_ms": %.3f, "connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, '
      .. '"status_errors": %d, "counts": {}}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3,
    latency:percentile(99.9) / 1e3, latency.max / 1e3, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout, summary.errors.status))
end
"""


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(
    url: str, bodies: list[tuple[str, bytes]], connections: int, seconds: float, timeout_s: float = 30
) -> dict:
    """wrk for ``seconds`` on ``connections`` connections (two threads); its JSON summary."""
    with tempfile.TemporaryDirectory() as tmp:
        script, body_file = Path(tmp) / "script.lua", Path(tmp) / "bodies.tsv"
        script.write_text(WRK_SCRIPT)
        body_file.write_bytes(b"".join(ct.encode() + b"\t" + body + b"\n" for ct, body in bodies))
        command = ["wrk", f"-t{min(connections, 2)}", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
        command += [f"--timeout={timeout_s}s", "-s", str(script), url, "--", str(body_file)]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    match = re.search(r"^WRK_RESULT (.*)$", output, re.M)
    if match is None:
        raise RuntimeError(f"wrk printed no result:\n{output}")
    result = json.loads(match.group(1))
    result["requests/s"] = result["requests"] / result["seconds"]
    return result


# --- Python client processes (when wrk is not installed) -------------------------------------


def _post(sock: socket.socket, reader, host: str, content_type: str, body: bytes) -> tuple[int, bool]:
    """(status, whether the server closes the connection after it)."""
    request = b"POST /invocations HTTP/1.1\r\nHost: %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
    try:
        sock.sendall(request % (host.encode(), content_type.encode(), len(body)) + body)
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused before it was all read (over the payload limit): the answer is still there
    status_line = reader.readline()
    if not status_line:
        raise ConnectionError("the server closed the connection without an answer")
    length, close = 0, False
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
        elif name.lower() == b"connection" and value.strip().lower() == b"close":
            close = True
    reader.read(length)
    return int(status_line.split()[1]), close


def _connect(url: str):
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock, sock.makefile("rb"), parts.hostname


def _client(url: str, bodies, kinds, count: int, seconds: float, queue) -> None:
    """Send ``bodies`` in turn on one keep-alive connection (a new one whenever the server closes
    it); answers' statuses counted per kind, and connection failures as status 0."""
    sock, reader, host = _connect(url)
    times, counts, deadline, i = [], {}, time.monotonic() + seconds, 0
    while (not count or i < count) and time.monotonic() < deadline:
        start = time.perf_counter()
        try:
            status, close = _post(sock, reader, host, *bodies[i % len(bodies)])
        except OSError:
            status, close = 0, True
        times.append(time.perf_counter() - start)
        key = f"{kinds[i % len(kinds)] if kinds else 'any'} {status}"
        counts[key] = counts.get(key, 0) + 1
        i += 1
        if close:
            sock.close()
            sock, reader, host = _connect(url)
    sock.close()
    queue.put((times, counts))


def run_clients(
    url: str,
    bodies: list[tuple[str, bytes]],
    connections: int,
    seconds: float,
    kinds: list[str] | None = None,
    limit_per_client: int = 0,
    split: bool = False,
) -> dict:
    """The same measurement as :func:`run_wrk` from ``connections`` Python client processes;
    ``split``: each client sends its own share of ``bodies``, each body once."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    if split:
        shares = np.array_split(np.arange(len(bodies)), connections)
        work = [([bodies[i] for i in s], [kinds[i] for i in s] if kinds else None, len(s)) for s in shares]
    else:
        offsets = np.random.default_rng(0).integers(0, len(bodies), connections)
        rotate = lambda items, o: items[o:] + items[:o]  # noqa: E731
        work = [(rotate(bodies, o), rotate(kinds, o) if kinds else None, limit_per_client) for o in offsets]
    processes = [
        context.Process(target=_client, args=(url, share, share_kinds, count, seconds, queue))
        for share, share_kinds, count in work
    ]
    start = time.perf_counter()
    for process in processes:
        process.start()
    results = [queue.get() for _ in processes]
    elapsed = time.perf_counter() - start
    for process in processes:
        process.join()
    times = np.concatenate([np.array(t) for t, _ in results]) * 1000
    counts: dict[str, int] = {}
    for _, c in results:
        for key, value in c.items():
            counts[key] = counts.get(key, 0) + value
    return {
        "requests": len(times),
        "seconds": elapsed,
        "requests/s": len(times) / elapsed,
        "p50_ms": float(np.percentile(times, 50)),
        "p99_ms": float(np.percentile(times, 99)),
        "p999_ms": float(np.percentile(times, 99.9)),
        "max_ms": float(times.max()),
        "connect_errors": sum(v for k, v in counts.items() if k.endswith(" 0")),  # no answer
        "read_errors": 0,
        "write_errors": 0,
        "timeouts": 0,
        "counts": counts,
    }


def load(url: str, bodies, connections: int, seconds: float, kinds=None, limit: int = 0) -> dict:
    """Load for ``seconds`` from wrk when installed, else from client processes. ``kinds`` (a
    label per body, to count each answer's status against the kind of body it answered) or
    ``limit`` (total answers to stop at) need the client processes."""
    if have_wrk() and kinds is None and not limit:
        return run_wrk(url, bodies, connections, seconds)
    return run_clients(url, bodies, connections, seconds, kinds, -(-limit // connections) if limit else 0)


# --- the JSON floor ----------------------------------------------------------------------------


def json_floor(bodies: list[bytes], answer_width: int, repeat: int = 5) -> dict:
    """What JSON alone costs on one core for these request bodies and answers of ``answer_width``
    float32 values per instance: orjson parsing the bodies, and orjson writing the answers as one
    2-D array (``OPT_SERIALIZE_NUMPY``). Instances/s of each and of both together (the floor a
    server of this protocol cannot beat on one core). Best of ``repeat`` (a floor, not a typical run)."""
    rng = np.random.default_rng(0)
    sizes = [len(orjson.loads(body)["instances"]) for body in bodies]
    answers = [rng.standard_normal((n, answer_width)).astype(np.float32) for n in sizes]
    parse, write = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        for body in bodies:
            orjson.loads(body)
        parse.append(time.perf_counter() - start)
        start = time.perf_counter()
        for answer in answers:
            orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
        write.append(time.perf_counter() - start)
    instances = sum(sizes)
    parse_s, write_s = min(parse) / instances, min(write) / instances
    return {
        "parse instances/s": 1 / parse_s,
        "write rows/s": 1 / write_s,
        "floor instances/s": 1 / (parse_s + write_s),
    }
