"""uvicorn's HTTP/1.1 connection handling, answering the service's :class:`App` without ASGI.

uvicorn keeps everything it does for a server: the sockets, worker processes, signals and graceful
shutdown, HTTP parsing (httptools), keep-alive, pipelining, ``Expect: 100-continue``, the request
body's flow control and the 400 for a malformed request. What :class:`DirectProtocol` replaces is
the per-request ASGI layer between the parsed request and the bytes of the answer: a proxy-headers
middleware, the app called with ``scope``/``receive``/``send``, and two ``send`` messages each
checked and written on their own, so an answer went out in two socket writes. Here the handler's
:class:`~object2vec.serving.asgi.Answer` is written in one, status line and headers included.
``GET /ping`` under 16 connections: 18,400-29,000 requests/s this way against 13,300-17,500 through
ASGI on the same 2-core machine (README, "Serving performance").

An application that is not an :class:`App`, or an App behind any middleware other than uvicorn's
own proxy-headers and message-logger wrappers, is served through ASGI as uvicorn would. With the
direct path the access log shows the connection's peer address (uvicorn's proxy-headers middleware,
which would put an ``X-Forwarded-For`` client in its place, is not run).
"""

from __future__ import annotations

import asyncio
import http
import logging

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


class DirectProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol; requests to an :class:`App` are answered by its handlers
    directly, each answer written in one call.

    A request whose route has a :data:`~object2vec.serving.asgi.DirectHandler` and whose body
    arrives within the read that brought its headers (a small request: nearly always) is handed
    to it from the parser's callback, and its answer written from the handler's ``reply``: no task,
    no coroutines. Any other request, or one whose body is still on its way when the read has
    been parsed, is answered by a task running the route's handler, as uvicorn would run the app.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.service = served_app(self.app)
        self.heads = ResponseHeads()
        #: A request waiting for the rest of its body to go to its direct handler.
        self.awaiting_body: tuple[RequestResponseCycle, DirectHandler] | None = None

    def _start_asgi_task(self, cycle: RequestResponseCycle, app) -> None:
        if self.service is None or app is not self.app:  # not the service (e.g. uvicorn's 503 app)
            super()._start_asgi_task(cycle, app)
            return
        direct = self.service.direct_handler(cycle.scope)
        if direct is None:
            self._start_task(cycle)
        elif cycle.more_body:  # the usual case: called as the headers end, the body comes next
            self.awaiting_body = (cycle, direct)
        else:  # a pipelined request, started after the one before it was answered
            self._answer_directly(cycle, direct)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        waiting = self.awaiting_body
        if waiting is not None and not waiting[0].more_body:
            self.awaiting_body = None
            self._answer_directly(*waiting)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        waiting = self.awaiting_body
        if waiting is not None:  # this read ended within the body: the rest comes later
            self.awaiting_body = None
            if not self.transport.is_closing():
                self._start_task(waiting[0])

    def _start_task(self, cycle: RequestResponseCycle) -> None:
        task = self.loop.create_task(self._respond(cycle))
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
            task = self.loop.create_task(self._write_and_finish(cycle, answer))
            task.add_done_callback(self.tasks.discard)
            self.tasks.add(task)
            return
        try:
            self._send(cycle, answer)
        except Exception:  # as uvicorn does when an application fails mid-answer: close
            logger.exception("writing the answer failed")
            cycle.transport.close()
        finally:
            cycle.on_response = _nothing

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
        try:
            if not cycle.disconnected:
                await self._write(cycle, answer)
        except Exception:  # as uvicorn does when an application fails mid-answer: close
            logger.exception("writing the answer failed")
            cycle.transport.close()
        finally:
            cycle.on_response = _nothing  # as uvicorn does: no reference back to the connection

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

    async def _write(self, cycle: RequestResponseCycle, answer: Answer) -> None:
        """What uvicorn's two ``send`` calls do, in one write (once the client has read enough of
        what it was sent)."""
        if cycle.flow.write_paused:
            await cycle.flow.drain()
            if cycle.disconnected:
                return
        self._send(cycle, answer)

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
        cycle.message_event.set()
        if not cycle.keep_alive:
            cycle.transport.close()
        cycle.on_response()


def _nothing() -> None:
    pass


def http_protocol() -> type[asyncio.Protocol] | str:
    """What ``uvicorn.Config(http=...)`` gets: :class:`DirectProtocol` as an import string (worker
    processes import it themselves)."""
    return f"{__name__}:DirectProtocol"
