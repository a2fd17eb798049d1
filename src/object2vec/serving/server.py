"""The inference service: the SageMaker container contract over HTTP, served by uvicorn (with the
connection handling of :mod:`object2vec.serving.http`).

Routes: ``GET /ping``, ``POST /invocations``, ``POST /endpoints/{name}/invocations`` (what
``boto3.client("sagemaker-runtime").invoke_endpoint`` sends, so clients of a hosted endpoint work
unchanged; its signing headers are ignored), ``GET /execution-parameters`` (what batch
transform asks a container) and, when an index is served, ``POST /neighbors``
(:mod:`object2vec.serving.neighbors`). Bodies are decoded by :mod:`object2vec.serving.protocol`
and answered by the :class:`~object2vec.serving.predictor.Predictor`; this module only routes,
limits and batches.

Concurrent small requests are micro-batched: while one forward pass runs, newly arrived requests
queue up and are answered together by the next pass; a pass also waits a short, bounded time
(``batch_wait_ms``) for requests that are already being read. A request that waits in that queue
longer than ``max_queue_ms`` gets 503 (the queue never grows without bound). A client mistake is
always a 4xx with ``{"error": "..."}``; an unexpected failure is a 500 for that request only.

Shutdown (SIGTERM, as SageMaker stops endpoints and transform jobs): uvicorn stops accepting
connections, every request already read is answered (queued ones included), then the process
exits with status 0.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..artifact import resolve_model_dir
from ..columns import Instances
from ..index import NeighborIndex
from . import protocol
from .asgi import Answer, App, ClientGone, DirectHandler, Handler, HttpRequest, Routes, error_answer
from .http import http_protocol
from .neighbors import NeighborSearch, open_served_index
from .predictor import InputError, Predictor, inference_threads
from .settings import (
    DEFAULT_BATCH_WAIT_MS,
    DEFAULT_HOST,
    DEFAULT_MAX_BATCH_INSTANCES,
    DEFAULT_MAX_QUEUE_MS,
    MB,
    SAGEMAKER_MAX_PAYLOAD_MB,
    STRATEGIES,
    Platform,
    ServeSettings,
    default_model_dir,
    serve_port,
    serve_settings,
)

logger = logging.getLogger("object2vec.server")
#: On SIGTERM, requests still queued may wait up to the queue limit and then their pass: the
#: graceful shutdown waits that long plus this margin before cancelling what is left.
GRACEFUL_EXTRA_S = 20.0


class Overloaded(Exception):
    """A request waited longer than the queue limit for a forward pass: answered 503."""


@dataclass(slots=True)
class _Job:
    instances: Instances
    future: asyncio.Future
    deadline: float  # loop time after which the job, if still queued, is answered 503

    @property
    def size(self) -> int:
        return self.instances.size


class MicroBatcher:
    """Answers many small requests with one call of ``run(list of Instances) -> list of arrays``.

    One worker coroutine per event loop takes every queued job (up to ``max_instances``
    instances), waits at most ``max_wait_s`` for requests that are still being read, runs the
    gathered instances in one pass (on the event loop when cheap, else on an inference thread, so
    the event loop keeps reading and writing other requests meanwhile) and hands each request its
    rows. A job still queued after ``max_queue_s`` leaves the queue with :class:`Overloaded` (only a
    pass on the thread lets jobs queue meanwhile; a pass on the loop is bounded by its cost).

    Passes that ``inline(parts)`` calls cheap run on the event loop itself; the others (all of
    them without ``inline``) run on the inference thread. A pass on the thread pays for the
    GIL at every torch call: each call releases it, and getting it back waits until the event
    loop's thread lets go, which under load (orjson writing an answer holds it for milliseconds)
    is one switch interval (5 ms) per call. A 1,000-instance pooled pass took 72 ms beside a
    thread writing JSON against 2.2 ms alone (README, "Serving performance"). So a pass that is
    cheap anyway (the pooled encoder on a CPU: about 2 ms for 1,000 instances) is faster run
    where the GIL already is; a long one (hcnn, bilstm: hundreds of ms) goes to the thread, whose
    torch calls are long enough for the waits not to matter, so the loop keeps serving meanwhile.
    """

    def __init__(
        self,
        run: Callable[[list[Instances]], list[np.ndarray]],
        max_instances: int = DEFAULT_MAX_BATCH_INSTANCES,
        max_wait_s: float = DEFAULT_BATCH_WAIT_MS / 1000,
        max_queue_s: float = DEFAULT_MAX_QUEUE_MS / 1000,
        inline: Callable[[list[Instances]], bool] | None = None,
    ):
        self.run = run
        self.inline = inline
        self.max_instances = max_instances
        self.max_wait_s = max_wait_s
        self.max_queue_s = max_queue_s
        self.arriving = 0  # requests being read or decoded, not yet submitted
        self._jobs: collections.deque[_Job] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None  # the thread running _loop
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="object2vec-inference")
        self._on_thread = False  # a pass runs on the inference thread: jobs may queue meanwhile
        self._expiry: asyncio.TimerHandle | None = None  # at the oldest queued job's deadline
        self._arriving = _Arriving(self)

    def reading(self) -> _Arriving:
        """Mark a request as on its way (``with batcher.reading(): ...``), so a gathering pass
        may wait for it."""
        return self._arriving

    def enqueue(self, instances: Instances) -> asyncio.Future:
        """Queue ``instances`` for a pass: the future of their answer rows, or of
        :class:`Overloaded` if no pass took them in time.

        The queue limit is kept by one timer, for the oldest queued job, and only while a pass
        runs on the inference thread: the only time jobs can wait (a pass on the loop holds the
        loop, and the worker takes what is queued as soon as it ends). A timer per job cost a
        libuv timer made and closed for every request. A job whose future is cancelled while it
        waits (e.g. its :meth:`submit` at the graceful shutdown's timeout) is passed over by the
        passes and the timer."""
        self._ensure_worker()
        loop = self._loop
        job = _Job(instances, loop.create_future(), loop.time() + self.max_queue_s)
        self._jobs.append(job)
        if self._on_thread:
            self._arm_expiry()
        self._wakeup.set()
        return job.future

    async def submit(self, instances: Instances) -> np.ndarray:
        """:meth:`enqueue`, awaited (cancelling the wait cancels the job)."""
        return await self.enqueue(instances)

    def _arm_expiry(self) -> None:
        if self._expiry is None and self._jobs:
            self._expiry = self._loop.call_at(self._jobs[0].deadline, self._expire_due)

    def _expire_due(self) -> None:
        """Queued jobs past their deadline leave the queue with :class:`Overloaded` (jobs queue
        in the order of their deadlines)."""
        self._expiry = None
        now = self._loop.time()
        while self._jobs and self._jobs[0].deadline <= now:
            job = self._jobs.popleft()
            if not job.future.done():
                job.future.set_exception(
                    Overloaded(
                        f"the server is busy: the request waited {self.max_queue_s * 1000:.0f} ms for a "
                        "forward pass; retry later"
                    )
                )
        if self._on_thread:
            self._arm_expiry()

    def _ensure_worker(self) -> None:
        """A worker on the running loop. Asked on every request, so the usual answer (the worker
        is there, on the loop this thread runs) is read without ``asyncio.get_running_loop()``,
        which in Python 3.11 makes a ``getpid`` system call."""
        loop, worker = self._loop, self._worker
        if (
            worker is not None
            and not worker.done()
            and self._thread == threading.get_ident()
            and loop.is_running()  # a thread runs one loop at a time: this one
        ):
            return
        loop = asyncio.get_running_loop()
        self._loop, self._wakeup, self._thread = loop, asyncio.Event(), threading.get_ident()
        self._worker = loop.create_task(self._work())

    async def _work(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._jobs:
                batch = await self._gather()
                if batch:
                    await self._answer(batch)

    def _take(self, budget: int) -> list[_Job]:
        taken, size = [], 0
        while self._jobs and (not taken or size + self._jobs[0].size <= budget):
            job = self._jobs.popleft()
            if job.future.done():  # its submit was cancelled: no one waits for the answer
                continue
            taken.append(job)
            size += job.size
        return taken

    async def _gather(self) -> list[_Job]:
        batch = self._take(self.max_instances)
        deadline = time.monotonic() + self.max_wait_s
        while self.arriving and (room := self.max_instances - sum(j.size for j in batch)) > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:  # TimeoutError from 3.11 on
                break
            if self._jobs and self._jobs[0].size > room:
                break  # the next request does not fit: it starts the next pass
            batch += self._take(room)
        return batch

    async def _answer(self, batch: list[_Job]) -> None:
        parts = [job.instances for job in batch]
        try:
            if self.inline is not None and self.inline(parts):
                answers = self.run(parts)
            else:
                answers = await self._run_on_thread(parts)
        except Exception as exc:  # a bug must fail these requests, never the worker
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        for job, rows in zip(batch, answers):
            if not job.future.done():  # the client may have gone away
                job.future.set_result(rows)

    async def _run_on_thread(self, parts: list[Instances]) -> list[np.ndarray]:
        """A pass on the inference thread, with the queue limit kept meanwhile."""
        self._on_thread = True
        self._arm_expiry()
        try:
            return await self._loop.run_in_executor(self._executor, self.run, parts)
        finally:
            self._on_thread = False
            if self._expiry is not None:
                self._expiry.cancel()
                self._expiry = None


class _Arriving:
    """``with batcher.reading():`` counts a request on its way (a class: a generator-based
    context manager cost about 2 us a request)."""

    __slots__ = ("batcher",)

    def __init__(self, batcher: MicroBatcher):
        self.batcher = batcher

    def __enter__(self) -> None:
        self.batcher.arriving += 1

    def __exit__(self, *exc_info) -> None:
        self.batcher.arriving -= 1


def error_for(exc: Exception) -> Answer:
    """The answer to a request that failed with ``exc``: a client mistake gets its 4xx, a full
    queue 503 with ``Retry-After``, anything else a 500 for this request (logged)."""
    if isinstance(exc, protocol.RequestError):
        return error_answer(exc.status, str(exc))
    if isinstance(exc, InputError):
        return error_answer(400, str(exc))
    if isinstance(exc, Overloaded):
        answer = error_answer(503, str(exc))
        answer.headers.append(("retry-after", "1"))
        return answer
    logger.error("request failed", exc_info=exc)
    return error_answer(500, f"internal error: {type(exc).__name__}")


def json_errors(handler: Handler) -> Handler:
    """The handler's failures answered by :func:`error_for` (a client that left gets nothing)."""

    async def guarded(request: HttpRequest) -> Answer:
        try:
            return await handler(request)
        except ClientGone:  # no one to answer: the app sends nothing
            raise
        except Exception as exc:
            return error_for(exc)

    return guarded


def json_errors_direct(handler: DirectHandler) -> DirectHandler:
    """:func:`json_errors` for a :data:`DirectHandler`: what it raises is answered."""

    def guarded(request: HttpRequest, reply: Callable[[Answer], None]) -> None:
        try:
            handler(request, reply)
        except Exception as exc:
            reply(error_for(exc))

    return guarded


def awaiting(direct: DirectHandler) -> Handler:
    """The :data:`Handler` answering as ``direct`` does (for a route whose requests need no body)."""

    async def handler(request: HttpRequest) -> Answer:
        answered = asyncio.get_running_loop().create_future()
        direct(request, answered.set_result)
        return await answered

    return handler


def body_within(body: bytes, limit: int) -> bytes:
    """``body``, refused with a 413 when it exceeds ``limit`` bytes."""
    if len(body) > limit:
        raise protocol.RequestError(too_large(limit), status=413)
    return body


def too_large(limit: int) -> str:
    return f"the request body is larger than the payload limit of {limit / MB:.3g} MB"


async def read_body(request: HttpRequest, limit: int) -> bytes:
    """The body, refused with a 413 as soon as it is known to exceed ``limit`` bytes."""
    if request.body is not None:
        return body_within(request.body, limit)
    declared = request.header("content-length") or ""
    if declared.isdigit() and int(declared) > limit:
        raise protocol.RequestError(too_large(limit), status=413)
    chunks, size = [], 0
    async for chunk in request.chunks():
        size += len(chunk)
        if size > limit:
            raise protocol.RequestError(too_large(limit), status=413)
        chunks.append(chunk)
    return b"".join(chunks)  # a body of one chunk: that very object, no copy


def execution_parameters_of(settings: ServeSettings) -> dict:
    """What ``GET /execution-parameters`` tells a batch transform job that set none: the requests
    answered at once (one per server process; more wait and share a pass), the batch strategy,
    and the payload limit in whole MB (at most SageMaker's 100; a limit under 1 MB, possible only
    with ``--max-payload-mb``, reads 1, the least SageMaker accepts but 0, "no limit")."""
    return {
        "MaxConcurrentTransforms": settings.workers,
        "BatchStrategy": STRATEGIES[0],
        "MaxPayloadInMB": min(SAGEMAKER_MAX_PAYLOAD_MB, max(1, int(settings.max_payload_mb))),
    }


def create_app(
    predictor: Predictor, settings: ServeSettings, index: NeighborIndex | None = None, threads: int = 1
) -> App:
    """The ASGI application answering with ``predictor`` (and with ``index``, on ``POST /neighbors``);
    ``threads``: how many threads may write one answer's JSON (the process's torch threads)."""
    vocab_sizes = (predictor.hp.enc0_vocab_size, predictor.hp.enc1_vocab_size)
    batcher = MicroBatcher(
        predictor.answer,
        settings.max_batch_instances,
        settings.batch_wait_ms / 1000,
        settings.max_queue_ms / 1000,
        inline=predictor.cheap_pass,
    )
    parameters = protocol.encode_object(execution_parameters_of(settings))

    def ping_direct(request: HttpRequest, reply: Callable[[Answer], None]) -> None:
        reply(Answer(b'{"status":"ok"}'))

    def execution_parameters_direct(request: HttpRequest, reply: Callable[[Answer], None]) -> None:
        reply(Answer(parameters))

    ping, execution_parameters = awaiting(ping_direct), awaiting(execution_parameters_direct)

    def formats(request: HttpRequest) -> tuple[protocol.BodyFormat, str]:
        """The body's format and the answer's media type: the same rules for every POST route."""
        content_type, accept = request.header("content-type"), request.header("accept")
        return protocol.parse_formats(content_type, accept, settings.default_accept)

    async def read_request(request: HttpRequest) -> tuple[protocol.BodyFormat, str, bytes]:
        """:func:`formats` and the body (within the payload limit)."""
        body_format, accept = formats(request)
        return body_format, accept, await read_body(request, settings.max_payload_bytes)

    def answered(rows: np.ndarray, parsed: protocol.Request, accept: str) -> Answer:
        return Answer(protocol.encode_rows(rows, parsed.mode, accept, threads), accept)

    @json_errors
    async def invocations(request: HttpRequest) -> Answer:
        """A request whose body is still on its way (else :func:`invocations_direct`)."""
        with batcher.reading():
            body_format, accept, body = await read_request(request)
            parsed = protocol.decode_request(body, body_format, vocab_sizes)
        return answered(await batcher.submit(parsed), parsed, accept)

    @json_errors_direct
    def invocations_direct(request: HttpRequest, reply: Callable[[Answer], None]) -> None:
        """:func:`invocations` for a body that has arrived, answered from the pass's callback."""
        body_format, accept = formats(request)  # refused before the body is looked at, as above
        body = body_within(request.body, settings.max_payload_bytes)
        parsed = protocol.decode_request(body, body_format, vocab_sizes)

        def on_rows(future: asyncio.Future) -> None:
            try:
                answer = answered(future.result(), parsed, accept)
            except asyncio.CancelledError:  # nothing withdraws a direct job; still, always answer
                answer = error_answer(503, "the server is shutting down")
            except Exception as exc:
                answer = error_for(exc)
            reply(answer)

        batcher.enqueue(parsed).add_done_callback(on_rows)

    search = NeighborSearch(index, vocab_sizes) if index is not None else None

    @json_errors
    async def neighbors(request: HttpRequest) -> Answer:
        with batcher.reading():
            body_format, accept, body = await read_request(request)
            parsed = search.decode(body, body_format, request.query("k"))
        inputs = parsed.instances()
        embeddings = await batcher.submit(inputs) if inputs is not None else None
        loop = asyncio.get_running_loop()
        return Answer(await loop.run_in_executor(None, search.answer, parsed, embeddings, accept), accept)

    routes = Routes()
    routes.add("/ping", "GET", ping, ping_direct)
    routes.add("/execution-parameters", "GET", execution_parameters, execution_parameters_direct)
    routes.add("/invocations", "POST", invocations, invocations_direct)
    routes.add("/endpoints/{name}/invocations", "POST", invocations, invocations_direct)
    if search is not None:
        routes.add("/neighbors", "POST", neighbors)
    return App(routes, predictor=predictor, settings=settings, batcher=batcher)


def load_app(settings: ServeSettings) -> App:
    """Load the model named by ``settings`` and build its app (one call per serving process)."""
    predictor = Predictor.load(
        settings.model_dir, device=settings.device or None, preferred_mode=settings.preferred_mode or None
    )
    threads = inference_threads(settings.workers, settings.threads or None)
    predictor.prepare()
    index = (
        open_served_index(settings.index, settings.model_dir, predictor.embedding_dim)
        if settings.index
        else None
    )
    app = create_app(predictor, settings, index, threads)
    settle_memory()
    return app


#: glibc ``mallopt`` parameters: the size from which a block gets its own mapping, and the free
#: space at the top of the heap above which it is given back to the system.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def settle_memory(keep_bytes: int = 256 * 1024 * 1024, mmap_from: int = 32 * 1024 * 1024) -> None:
    """Tune this serving process's memory for steady request traffic.

    - ``gc.freeze()``: the model and libraries loaded so far (hundreds of thousands of objects)
      leave the garbage collector's view, so a full collection during a request does not walk them.
    - glibc malloc keeps freed memory for reuse instead of unmapping it: a 1,000-instance answer
      is a few MB, and by default each such buffer is a fresh mapping whose pages fault in one by
      one (measured: 2,000 page faults and 20 ms per answer on a busy VM, 0.6 ms with this).
      The process keeps its peak heap (bounded by the payload limit times the requests in
      flight) instead of returning it between requests.
    """
    gc.collect()
    gc.freeze()
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, mmap_from)
        libc.mallopt(M_TRIM_THRESHOLD, keep_bytes)
    except (OSError, AttributeError):  # not glibc (musl): its defaults stay
        logger.debug("mallopt not available; malloc defaults kept")


def app_from_env() -> App:
    """uvicorn's app factory for ``--workers N``: each worker process loads the model itself."""
    return load_app(ServeSettings.from_env())


class AnnounceAddress(logging.Filter):
    """Prints ``listening on http://HOST:PORT`` on stdout when uvicorn reports the socket it
    bound, with the port it really got: ``--port 0`` lets the system pick a free one, and a
    script (or a test) reads the address back from this line instead of guessing a free port
    that another process may take first. uvicorn reports the bound socket once, from the process
    that binds it (the supervisor with ``--workers N``)."""

    PREFIX = "Uvicorn running on"

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if isinstance(record.msg, str) and record.msg.startswith(self.PREFIX) and len(args) == 3:
            scheme, host, port = args
            host = f"[{host}]" if ":" in str(host) else host
            print(f"listening on {scheme}://{host}:{port}", flush=True)
        return True


def serve(
    model_dir: str | os.PathLike | None = None,
    host: str = DEFAULT_HOST,
    port: int | None = None,
    workers: int | None = None,
    max_payload_mb: float | None = None,
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS,
    max_queue_ms: float = DEFAULT_MAX_QUEUE_MS,
    threads: int | None = None,
    device: str | None = None,
    preferred_mode: str | None = None,
    access_log: bool = False,
    log_level: str = "info",
    index: str | os.PathLike | None = None,
) -> None:
    """Serve a model directory (or model.tar.gz; default: ``default_model_dir()``) until stopped.

    ``port``, ``workers``, ``max_payload_mb`` and ``preferred_mode`` left as ``None`` come from
    the SageMaker platform's variables when set, else the defaults (:mod:`.settings`). ``index``
    (an index directory of this model) adds ``POST /neighbors``."""
    import uvicorn

    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    platform = Platform.read()
    root = resolve_model_dir(model_dir if model_dir is not None else default_model_dir())
    settings = serve_settings(
        str(root),
        workers=workers,
        max_payload_mb=max_payload_mb,
        batch_wait_ms=batch_wait_ms,
        max_queue_ms=max_queue_ms,
        threads=threads,
        device=device,
        preferred_mode=preferred_mode,
        platform=platform,
        index=index,
    )
    if settings.index:  # an index of another model is a clean error before any worker starts
        open_served_index(settings.index, root)
    port = serve_port(port, platform)
    options = dict(
        http=http_protocol(),
        host=host,
        port=port,
        access_log=access_log,
        log_level=log_level,
        timeout_graceful_shutdown=settings.max_queue_ms / 1000 + GRACEFUL_EXTRA_S,
    )
    # uvicorn answers SIGTERM gracefully, then raises it again for the handler that was there
    # before; this one lets serve() return, so a stopped server exits 0 instead of dying by signal
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    parameters = protocol.encode_object(execution_parameters_of(settings)).decode()
    print(f"serving {root} on port {port}: {parameters}", file=sys.stderr, flush=True)
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, AnnounceAddress) for f in uvicorn_log.filters):
        uvicorn_log.addFilter(AnnounceAddress())
    if settings.workers == 1:  # load here, so a broken model is a clean error before anything listens
        uvicorn.run(load_app(settings), **options)
        return
    os.environ.update(settings.to_env())
    uvicorn.run(f"{__name__}:app_from_env", factory=True, workers=settings.workers, **options)


@contextlib.contextmanager
def running(app: App, host: str = DEFAULT_HOST, port: int = 0, **config) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a background thread (``port=0``: a free port); yields the
    base URL and stops the server on exit. The quickstart, tests and benchmarks use it. ``config``:
    more ``uvicorn.Config`` options, or other values for its quiet defaults (no access log, warnings
    only)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = {"access_log": False, "log_level": "warning", **config}
    server = uvicorn.Server(uvicorn.Config(app, http=http_protocol(), **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the server thread stopped before it started")
            time.sleep(0.01)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
