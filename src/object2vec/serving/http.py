"""uvicorn's HTTP/1.1 connection handling, answering the service's :class:`App` without ASGI.

uvicorn keeps everything it does for a server: the sockets, worker processes, signals and graceful
shutdown, HTTP parsing (httptools), keep-alive, pipelining, ``Expect: 100-continue``, the request
body's flow control and the 400 for a malformed request. What :class:`DirectProtocol` replaces is
the per-request ASGI layer between the parsed request and the bytes of the answer: a proxy-headers
middleware, the app called with ``scope``/``receive``/``send``, and two ``send`` messages each
checked and written on their own, so an answer went out in two socket writes. Here the handler's
:class:`~object2vec.serving.asgi.Answer` is written in one, status line and headers included.
``GET /ping`` under 16 connections: 18,400-29,000 requests/s this way against 13,300-17,500 through
ASGI on the same 2-core machine (README, "Serving performance"). A request whose body has arrived
goes further: its route's direct handler answers it from the parser's callback, with no task at
all, and for the service uvicorn's per-request steps are made with less, doing the same
(:class:`DirectProtocol`, :class:`Exchange`).

An application that is not an :class:`App`, or an App behind any middleware other than uvicorn's
own proxy-headers and message-logger wrappers, is served through ASGI as uvicorn would. With the
direct path the access log shows the connection's peer address (uvicorn's proxy-headers middleware,
which would put an ``X-Forwarded-For`` client in its place, is not run).
"""

from __future__ import annotations

import asyncio
import http
import logging
import urllib.parse

import httptools
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from .asgi import Answer, App, DirectHandler, HttpRequest, answer_headers, error_answer

logger = logging.getLogger("object2vec.server")

#: Bodies up to this size are joined to the head and written as one bytes object; larger ones
#: go out as two buffers of one ``writelines`` call (uvloop sends them without joining them).
JOIN_LIMIT = 64 * 1024


def status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")


STATUS_LINES = {status.value: status_line(status.value) for status in http.HTTPStatus}


def served_app(app) -> App | None:
    """The :class:`App` that uvicorn's loaded application is, or wraps in uvicorn's own proxy-headers
    or message-logger middleware; None for anything else (another middleware must run)."""
    from uvicorn.middleware.message_logger import MessageLoggerMiddleware
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    while isinstance(app, (ProxyHeadersMiddleware, MessageLoggerMiddleware)):
        app = app.app
    return app if isinstance(app, App) else None


def response_head(answer: Answer, default_headers, keep_alive: bool) -> bytes:
    """Status line and headers: uvicorn's default ones (``date``, ``server``), the media type, the
    length, the answer's own, and ``connection: close`` when the connection ends after it."""
    head = [STATUS_LINES.get(answer.status) or status_line(answer.status)]
    for name, value in (*default_headers, *answer_headers(answer)):
        head += [name, b": ", value, b"\r\n"]
    if not keep_alive:
        head.append(b"connection: close\r\n")
    head.append(b"\r\n")
    return b"".join(head)


class ResponseHeads:
    """:func:`response_head`'s bytes; for an answer with no headers of its own (the common case)
    from the status line, default headers and media type joined once, for as long as the default
    headers stay the same list (uvicorn makes a new one when its date header changes, once a
    second). One per connection: nothing shared between the event loops of a process."""

    __slots__ = ("made_with", "starts")

    def __init__(self) -> None:
        self.made_with: list | None = None
        self.starts: dict[tuple[int, str], bytes] = {}

    def head(self, answer: Answer, default_headers: list, keep_alive: bool) -> bytes:
        if answer.headers:
            return response_head(answer, default_headers, keep_alive)
        if self.made_with is not default_headers:
            self.made_with, self.starts = default_headers, {}
        key = (answer.status, answer.media_type)
        start = self.starts.get(key)
        if start is None:
            whole = response_head(Answer(b"", answer.media_type, answer.status), default_headers, True)
            start = self.starts[key] = whole[: whole.rindex(b"content-length: ")]
        end = b"\r\n\r\n" if keep_alive else b"\r\nconnection: close\r\n\r\n"
        return b"".join((start, b"content-length: ", str(len(answer.body)).encode(), end))


class Exchange(RequestResponseCycle):
    """uvicorn's request-response cycle (its ``receive`` and ``send`` work unchanged), made with
    less: the same attributes set without keyword arguments, and the event that wakes a waiting
    ``receive`` made only when something waits for it. A request answered directly never waits,
    so it never needs one; making it and setting it twice for every body cost about 2 us."""

    # what every request starts with (set on the instance when it changes)
    disconnected = False
    more_body = True
    response_started = False
    response_complete = False
    chunked_encoding: bool | None = None
    expected_content_length = 0
    _event: asyncio.Event | None = None

    def __init__(self, protocol: DirectProtocol, scope: dict, keep_alive: bool, expect_100_continue: bool):
        self.scope = scope
        self.body = bytearray()
        self.keep_alive = keep_alive
        self.waiting_for_100_continue = expect_100_continue
        self.default_headers = protocol.server_state.default_headers  # a new list each second
        # the connection's own
        self.transport, self.flow, self.logger, self.access_logger, self.access_log, self.on_response = (
            protocol.exchange_start
        )

    @property
    def message_event(self) -> asyncio.Event:
        """uvicorn's event, made on first use: set at once when what it would have been set for
        has happened (body received, the body's end, the client gone), as it would then be."""
        if self._event is None:
            self._event = asyncio.Event()
            if self.body or not self.more_body or self.disconnected:
                self._event.set()
        return self._event

    @message_event.setter
    def message_event(self, event: asyncio.Event) -> None:
        self._event = event

    def wake(self) -> None:
        """Set the event, if anything made it (a ``receive`` waiting for the body)."""
        if self._event is not None:
            self._event.set()


class DirectProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol; requests to an :class:`App` are answered by its handlers
    directly, each answer written in one call.

    A request whose route has a :data:`~object2vec.serving.asgi.DirectHandler` and whose body
    arrives within the read that brought its headers (a small request: nearly always) is handed
    to it from the parser's callback, and its answer written from the handler's ``reply``: no task,
    no coroutines. Any other request, or one whose body is still on its way when the read has
    been parsed, is answered by a task running the route's handler, as uvicorn would run the app.

    For the service, uvicorn's per-request steps are also made with less (what they do is
    unchanged): the scope is copied from one made per connection, the cycle is an
    :class:`Exchange`, and the keep-alive timer is armed once and moved on lazily instead of being
    made and cancelled for every request (see :meth:`timeout_keep_alive_handler`). Requests to any
    other application, and upgrades, go through uvicorn's own steps.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.service = served_app(self.app)
        self.heads = ResponseHeads()
        #: A request waiting for the rest of its body to go to its direct handler.
        self.awaiting_body: tuple[RequestResponseCycle, DirectHandler] | None = None
        #: Since when the connection has waited for a request (loop time); None while one is read
        #: or answered.
        self.idle_since: float | None = None
        self.scope_start: dict = {}
        self.exchange_start: tuple = ()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.scope_start = {
            "type": "http",
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "root_path": self.root_path,
        }
        self.exchange_start = (
            self.transport,
            self.flow,
            self.logger,
            self.access_logger,
            self.access_log,
            self.on_response_complete,
        )

    # --- uvicorn's per-request steps, for the service --------------------------------------------

    def on_message_begin(self) -> None:
        if self.service is None:
            super().on_message_begin()
            return
        self.idle_since = None  # a request under way (it may have come in the read of the one before)
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self.scope = {
            **self.scope_start,
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "headers": self.headers,
            "state": self.app_state.copy(),
        }

    def on_headers_complete(self) -> None:
        parser = self.parser
        if self.service is None or self.limit_concurrency is not None or parser.should_upgrade():
            super().on_headers_complete()
            return
        scope, http_version = self.scope, parser.get_http_version()
        scope["method"] = parser.get_method().decode("ascii")
        if http_version != "1.1":
            scope["http_version"] = http_version
        raw_path, query = _path_and_query(self.url)
        path = raw_path.decode("ascii")
        scope["path"] = self.root_path + (urllib.parse.unquote(path) if "%" in path else path)
        scope["raw_path"] = self.root_path.encode("ascii") + raw_path
        scope["query_string"] = query
        keep_alive = http_version != "1.0" and parser.should_keep_alive()
        existing, self.cycle = self.cycle, Exchange(self, scope, keep_alive, self.expect_100_continue)
        if existing is None or existing.response_complete:
            self._start_asgi_task(self.cycle, self.app)
        else:  # pipelined: started once the one before it is answered
            self.flow.pause_reading()
            self.pipeline.appendleft((self.cycle, self.app))

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if type(cycle) is not Exchange:
            super().on_body(body)
            return
        if cycle.response_complete:  # (an Exchange is never an upgrade: on_headers_complete)
            return
        cycle.body += body
        if len(cycle.body) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.wake()

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if type(cycle) is not Exchange:
            super().on_message_complete()
        elif not cycle.response_complete:
            cycle.more_body = False
            cycle.wake()
        waiting = self.awaiting_body
        if waiting is not None and not waiting[0].more_body:
            self.awaiting_body = None
            self._answer_directly(*waiting)

    def on_response_complete(self) -> None:
        if self.service is None:
            super().on_response_complete()
            return
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        if self.flow.read_paused:
            self.flow.resume_reading()
        if self.pipeline:
            # from the loop: started here, a request answered at once would answer the next one
            # from inside this call, and a long pipeline would run out of stack
            cycle, app = self.pipeline.pop()
            self.loop.call_soon(self._start_asgi_task, cycle, app)
            return
        self.idle_since = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def _unset_keepalive_if_required(self) -> None:
        """uvicorn cancels the keep-alive timer whenever data arrives (and makes a new one after
        each answer); for the service the timer stays and the connection is marked busy."""
        if self.service is None or self.transport.is_closing():
            super()._unset_keepalive_if_required()
        else:
            self.idle_since = None

    def timeout_keep_alive_handler(self) -> None:
        """Close the connection once it has waited ``timeout_keep_alive`` seconds for a request
        since its last answer, as uvicorn's timer does: a timer armed earlier moves on to that
        time; one that finds a request under way ends, and the answer arms the next."""
        if self.service is None:
            super().timeout_keep_alive_handler()
            return
        self.timeout_keep_alive_task = None
        if self.idle_since is None or self.transport.is_closing():
            return
        remaining = self.idle_since + self.timeout_keep_alive - self.loop.time()
        if remaining > 0:
            self.timeout_keep_alive_task = self.loop.call_later(remaining, self.timeout_keep_alive_handler)
        else:
            self.transport.close()

    # --- answering the service ---------------------------------------------------------------

    def _start_asgi_task(self, cycle: RequestResponseCycle, app) -> None:
        if self.service is None or app is not self.app:  # not the service (e.g. uvicorn's 503 app)
            super()._start_asgi_task(cycle, app)
            return
        direct = None if self.limit_concurrency is not None else self.service.direct_handler(cycle.scope)
        if direct is None:  # (uvicorn's concurrency limit counts tasks: with one, every request is one)
            self._start_task(cycle)
        elif cycle.more_body:  # the usual case: called as the headers end, the body comes next
            self.awaiting_body = (cycle, direct)
        else:  # a pipelined request, started after the one before it was answered
            self._answer_directly(cycle, direct)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        waiting = self.awaiting_body
        if waiting is not None:  # this read ended within the body: the rest comes later
            self.awaiting_body = None
            if not self.transport.is_closing():
                self._start_task(waiting[0])

    def _start_task(self, cycle: RequestResponseCycle) -> None:
        self._track(self._respond(cycle))

    def _track(self, coroutine) -> None:
        """A task among the server's (its graceful shutdown waits for them), as uvicorn's are."""
        task = self.loop.create_task(coroutine)
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def _answer_directly(self, cycle: RequestResponseCycle, direct: DirectHandler) -> None:
        request = HttpRequest(cycle.scope, cycle.receive, self._whole_body(cycle))
        try:
            direct(request, lambda answer: self._reply(cycle, answer))
        except Exception:  # direct handlers answer their own failures: this is a bug here
            logger.exception("request failed")
            self._reply(cycle, error_answer(500, "internal error"))

    def _reply(self, cycle: RequestResponseCycle, answer: Answer) -> None:
        """A direct handler's answer, written now (or once the client reads what it was sent)."""
        if cycle.response_started or cycle.disconnected:
            return
        if cycle.flow.write_paused:
            cycle.response_started = True  # answered: a second reply is dropped
            self._track(self._write_and_finish(cycle, answer))
            return
        self._finish(cycle, answer)

    async def _respond(self, cycle: RequestResponseCycle) -> None:
        body = None if cycle.more_body or cycle.disconnected else self._whole_body(cycle)
        try:
            answer = await self.service.respond(cycle.scope, cycle.receive, body)
        except Exception:  # handlers answer their own failures (json_errors): this is a bug here
            logger.exception("request failed")
            answer = error_answer(500, "internal error")
        if answer is None:
            cycle.on_response = _nothing
        else:
            await self._write_and_finish(cycle, answer)

    async def _write_and_finish(self, cycle: RequestResponseCycle, answer: Answer) -> None:
        """What uvicorn's two ``send`` calls do, in one write, once the client has read enough of
        what it was sent."""
        if cycle.flow.write_paused:
            await cycle.flow.drain()
        self._finish(cycle, answer)

    def _finish(self, cycle: RequestResponseCycle, answer: Answer) -> None:
        """The answer written unless the client has gone; as uvicorn ends a cycle, a failure
        closes the connection, and the cycle keeps no reference back to it."""
        try:
            if not cycle.disconnected:
                self._send(cycle, answer)
        except Exception:  # as uvicorn does when an application fails mid-answer: close
            logger.exception("writing the answer failed")
            cycle.transport.close()
        finally:
            cycle.on_response = _nothing

    @staticmethod
    def _whole_body(cycle: RequestResponseCycle) -> bytes:
        """A body that has all arrived (the usual case: one read holds a small request whole),
        taken as uvicorn's ``receive`` takes it, without its messages: the buffer emptied, and
        reading resumed if a large body paused it (so a client that leaves during the pass is
        still noticed)."""
        body = bytes(cycle.body)
        cycle.body = bytearray()
        cycle.flow.resume_reading()
        return body

    def _send(self, cycle: RequestResponseCycle, answer: Answer) -> None:
        scope = cycle.scope
        if cycle.access_log:
            cycle.access_logger.info(
                '%s - "%s %s HTTP/%s" %d',
                get_client_addr(scope),
                scope["method"],
                get_path_with_query_string(scope),
                scope["http_version"],
                answer.status,
            )
        cycle.response_started = True
        cycle.waiting_for_100_continue = False
        head = self.heads.head(answer, cycle.default_headers, cycle.keep_alive)
        body = b"" if scope["method"] == "HEAD" else answer.body
        if len(body) <= JOIN_LIMIT:
            cycle.transport.write(head + body)
        else:
            cycle.transport.writelines((head, body))
        cycle.response_complete = True
        if type(cycle) is Exchange:
            cycle.wake()
        else:
            cycle.message_event.set()
        if not cycle.keep_alive:
            cycle.transport.close()
        cycle.on_response()


def _nothing() -> None:
    pass


#: Bytes of a target that is a plain path: letters, digits, ``/ - . _ ~``.
PLAIN_PATH_BYTES = bytes(range(48, 58)) + bytes(range(65, 91)) + bytes(range(97, 123)) + b"/-._~"


def _path_and_query(url: bytes) -> tuple[bytes, bytes]:
    """The path and query of a request's target, as ``httptools.parse_url`` gives them; a plain
    path (the usual ``/invocations``) is its own path, without the parser."""
    if url[:1] == b"/" and not url.translate(None, PLAIN_PATH_BYTES):
        return url, b""
    parsed = httptools.parse_url(url)
    return parsed.path, parsed.query or b""


def http_protocol() -> type[asyncio.Protocol] | str:
    """What ``uvicorn.Config(http=...)`` gets: :class:`DirectProtocol` as an import string (worker
    processes import it themselves)."""
    return f"{__name__}:DirectProtocol"
