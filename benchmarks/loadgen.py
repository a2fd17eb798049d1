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

#: wrk script: POST bodies in turn (each line of the file named by the first argument is one body),
#: and print the latency percentiles and status counts as one JSON line when done. With one
#: connection per thread, requests and responses alternate, so ``kinds`` (the second file, one
#: label per body) lets the status of each answer be counted against the kind of body it answered.
WRK_SCRIPT = r"""
local bodies, kinds, sent, queue, threads, limit = {}, {}, 0, {}, {}, 0
counts = {}  -- a global, so done() can read each thread's with thread:get
function setup(thread) table.insert(threads, thread) end
function init(args)
  local i = 0
  for line in io.lines(args[1]) do
    i = i + 1
    local ctype, body = line:match("^([^\t]*)\t(.*)$")
    bodies[i] = wrk.format("POST", "/invocations", {["Content-Type"] = ctype}, body)
  end
  if args[2] ~= "-" then local j = 0; for k in io.lines(args[2]) do j = j + 1; kinds[j] = k end end
  limit = tonumber(args[3]) or 0
  next_index = math.random(#bodies)
end
function request()
  next_index = next_index % #bodies + 1
  table.insert(queue, kinds[next_index] or "any")
  return bodies[next_index]
end
function response(status, headers, body)
  local kind = table.remove(queue, 1) or "any"
  local key = kind .. " " .. status
  counts[key] = (counts[key] or 0) + 1
  sent = sent + 1
  if limit > 0 and sent >= limit then wrk.thread:stop() end
end
function done(summary, latency, requests)
  local totals = {}
  for _, thread in ipairs(threads) do
    local c = thread:get("counts")
    for k, v in pairs(c) do totals[k] = (totals[k] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(totals) do table.insert(parts, string.format('"%s": %d', k, v)) end
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "seconds": %.6f, "p50_ms": %.3f, "p99_ms": %.3f, "p999_ms": %.3f, '
      .. '"max_ms": %.3f, "connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, '
      .. '"status_errors": %d, "counts": {%s}}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3,
    latency:percentile(99.9) / 1e3, latency.max / 1e3, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout, summary.errors.status, table.concat(parts, ", ")))
end
"""
#: the script without a response() callback: wrk then skips handing each body to Lua, which for
#: multi-megabyte answers is most of its cost (status counts then come from wrk's own error count)
WRK_FAST_SCRIPT = re.sub(r"function response\(.*?\nend\n", "", WRK_SCRIPT, flags=re.S)


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def write_bodies(directory: Path, bodies: list[tuple[str, bytes]], kinds: list[str] | None = None) -> tuple:
    """Bodies (content type, body without newlines) as wrk's input files."""
    body_file = directory / f"bodies-{time.monotonic_ns()}.tsv"
    body_file.write_bytes(b"".join(ct.encode() + b"\t" + body + b"\n" for ct, body in bodies))
    kind_file = "-"
    if kinds is not None:
        kind_file = directory / f"kinds-{time.monotonic_ns()}.txt"
        kind_file.write_text("".join(k + "\n" for k in kinds))
    return body_file, kind_file


def run_wrk(
    url: str,
    bodies: list[tuple[str, bytes]],
    connections: int,
    seconds: float,
    kinds: list[str] | None = None,
    limit_per_thread: int = 0,
    threads: int | None = None,
    timeout_s: float = 30,
) -> dict:
    """wrk for ``seconds`` (or until each thread has ``limit_per_thread`` answers); its JSON summary."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        script = directory / "script.lua"
        counting = kinds is not None or limit_per_thread > 0
        script.write_text(WRK_SCRIPT if counting else WRK_FAST_SCRIPT)
        body_file, kind_file = write_bodies(directory, bodies, kinds)
        threads = threads or (connections if counting else min(connections, 2))
        command = [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            f"--timeout={timeout_s}s",
            "-s",
            str(script),
            url,
            "--",
            str(body_file),
            str(kind_file),
            str(limit_per_thread),
        ]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    match = re.search(r"^WRK_RESULT (.*)$", output, re.M)
    if match is None:
        raise RuntimeError(f"wrk printed no result:\n{output}")
    result = json.loads(match.group(1))
    result["requests/s"] = result["requests"] / result["seconds"]
    return result


# --- Python client processes (when wrk is not installed) -------------------------------------


def _post(sock: socket.socket, reader, host: str, content_type: str, body: bytes) -> int:
    sock.sendall(
        b"POST /invocations HTTP/1.1\r\nHost: %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
        % (host.encode(), content_type.encode(), len(body), body)
    )
    status = int(reader.readline().split()[1])
    length = 0
    while (line := reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    reader.read(length)
    return status


def _client(url: str, bodies, kinds, count: int, seconds: float, queue) -> None:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = sock.makefile("rb")
    times, counts, deadline, i = [], {}, time.monotonic() + seconds, 0
    while (count and i < count) or (not count and time.monotonic() < deadline):
        start = time.perf_counter()
        status = _post(sock, reader, parts.hostname, *bodies[i % len(bodies)])
        times.append(time.perf_counter() - start)
        key = f"{kinds[i % len(kinds)] if kinds else 'any'} {status}"
        counts[key] = counts.get(key, 0) + 1
        i += 1
    sock.close()
    queue.put((times, counts))


def run_clients(
    url: str,
    bodies: list[tuple[str, bytes]],
    connections: int,
    seconds: float,
    kinds: list[str] | None = None,
    limit_per_client: int = 0,
) -> dict:
    """The same measurement as :func:`run_wrk` from ``connections`` Python client processes."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    offsets = np.random.default_rng(0).integers(0, len(bodies), connections)
    processes = [
        context.Process(
            target=_client,
            args=(
                url,
                bodies[o:] + bodies[:o],
                (kinds[o:] + kinds[:o]) if kinds else None,
                limit_per_client,
                seconds,
                queue,
            ),
        )
        for o in offsets
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
        "connect_errors": 0,
        "read_errors": 0,
        "write_errors": 0,
        "timeouts": 0,
        "counts": counts,
    }


def load(url: str, bodies, connections: int, seconds: float, kinds=None, limit: int = 0) -> dict:
    """Load from wrk when installed, else from client processes; ``limit``: total answers to stop at."""
    if have_wrk():
        return run_wrk(url, bodies, connections, seconds, kinds, -(-limit // connections) if limit else 0)
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
