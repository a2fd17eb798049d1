"""The HTTP plumbing of the inference service: a plain ASGI application, no web framework.

The service has four fixed routes (five with an index) and answers every one with a body of bytes
it has already encoded, so a framework's routing, middleware stack and request/response objects
would only add work to each request: under 16 connections uvicorn answered ``GET /ping`` 1.3x
faster from this kind of app than through Starlette (README, "Serving performance"). What the
service had from Starlette and keeps: a JSON ``{"error": ...}`` body for an unknown path (404) or
method (405, now with ``Allow``), ``HEAD`` wherever ``GET`` is allowed, the first of a repeated
header, blank query values kept, and the lifespan protocol uvicorn speaks at start and stop. Not
kept: Starlette's redirect of a path with a trailing slash (``/ping/`` is a 404 here; SageMaker
and its clients never add one).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from urllib.parse import parse_qsl

from .protocol import JSON, error_body


class ClientGone(Exception):
    """The client closed the connection before its request body arrived: nothing to answer."""


@dataclass
class Answer:
    """A response: status, body bytes, media type and any extra headers."""

    body: bytes
    media_type: str = JSON
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)


def error_answer(status: int, message: str) -> Answer:
    return Answer(error_body(message), JSON, status)


class HttpRequest:
    """What a handler reads of a request: headers, query parameters and the body."""

    __slots__ = ("scope", "_receive", "body")

    def __init__(self, scope: dict, receive: Callable[[], Awaitable[dict]], body: bytes | None = None):
        self.scope = scope
        self._receive = receive
        #: The whole body when it had arrived before the handler started (uvicorn's
        #: ``DirectProtocol`` knows), else None: read it with :meth:`chunks`.
        self.body = body

    def header(self, name: str) -> str | None:
        """A header's value by lower-case name (the first one when repeated)."""
        key = name.encode("latin-1")
        for name_given, value in self.scope["headers"]:
            if name_given == key or name_given.lower() == key:
                return value.decode("latin-1")
        return None

    def query(self, name: str) -> str | None:
        """A query parameter's value (the first one; ``""`` for ``?name=`` or ``?name``)."""
        query = self.scope.get("query_string", b"").decode("latin-1")
        return next((value for key, value in parse_qsl(query, keep_blank_values=True) if key == name), None)

    async def chunks(self):
        """The body as it arrives; :class:`ClientGone` if the client leaves first."""
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            yield message.get("body", b"")
            if not message.get("more_body", False):
                return


Handler = Callable[[HttpRequest], Awaitable[Answer]]

#: A handler for a request whose body has all arrived (``request.body`` is set): it answers
#: through ``reply``, exactly once, at once or later from a callback on the event loop, and never
#: raises. Run by uvicorn's :class:`~object2vec.serving.http.DirectProtocol` straight from the
#: parser's callback, without the task, the coroutines and the awaits of a :data:`Handler`.
DirectHandler = Callable[[HttpRequest, Callable[[Answer], None]], None]


class Routes:
    """Exact paths, plus ``/endpoints/{name}/invocations`` style paths with one variable segment."""

    def __init__(self):
        #: Handlers by route (its path as added) and method; direct handlers the same way.
        self._handlers: dict[str, dict[str, Handler]] = {}
        self._direct: dict[str, dict[str, DirectHandler]] = {}
        self._patterns: list[tuple[str, str, str]] = []  # route, the text before and after {name}

    def add(self, path: str, method: str, handler: Handler, direct: DirectHandler | None = None) -> None:
        """``path`` may hold one ``{name}`` segment, matched by any non-empty segment. ``direct``:
        the same answers for a request whose body has arrived (:data:`DirectHandler`)."""
        methods = [method, "HEAD"] if method == "GET" else [method]
        if "{" in path and path not in self._handlers:
            prefix, rest = path.split("{", 1)
            self._patterns.append((path, prefix, rest.split("}", 1)[1]))
        self._handlers.setdefault(path, {}).update(dict.fromkeys(methods, handler))
        if direct is not None:
            self._direct.setdefault(path, {}).update(dict.fromkeys(methods, direct))

    def find(self, path: str) -> dict[str, Handler] | None:
        """The handlers of the route ``path`` matches, by method."""
        return self._handlers.get(self._route(path))

    def find_direct(self, path: str, method: str) -> DirectHandler | None:
        """The direct handler of ``method`` at ``path``, if its route has one."""
        return self._direct.get(self._route(path), {}).get(method)

    def _route(self, path: str) -> str:
        """The route ``path`` matches: an exact one, else the first pattern (else ``path``)."""
        if path in self._handlers:
            return path
        for route, prefix, suffix in self._patterns:
            middle = path[len(prefix) : len(path) - len(suffix)]
            if path.startswith(prefix) and path.endswith(suffix) and middle and "/" not in middle:
                return route
        return path


class App:
    """An ASGI application answering ``routes``; ``state`` holds what tests and callers inspect."""

    def __init__(self, routes: Routes, **state):
        self.routes = routes
        self.state = SimpleNamespace(**state)

    async def __call__(self, scope: dict, receive, send) -> None:
        kind = scope["type"]
        if kind == "http":
            answer = await self.respond(scope, receive)
            if answer is not None:
                await send_answer(send, answer)
        elif kind == "lifespan":
            await _lifespan(receive, send)

    async def respond(self, scope: dict, receive, body: bytes | None = None) -> Answer | None:
        """The answer to the request of ``scope`` (its body read through ``receive``, or ``body``
        when it is all there already), or None when the client left first. uvicorn's
        :class:`~object2vec.serving.http.DirectProtocol` calls this without the ASGI ``send`` step."""
        methods = self.routes.find(scope["path"])
        if methods is None:
            return error_answer(404, "Not Found")
        handler = methods.get(scope["method"])
        if handler is None:
            answer = error_answer(405, "Method Not Allowed")
            answer.headers.append(("allow", ", ".join(methods)))
            return answer
        try:
            return await handler(HttpRequest(scope, receive, body))
        except ClientGone:
            return None

    def direct_handler(self, scope: dict) -> DirectHandler | None:
        """The :data:`DirectHandler` for the request of ``scope``, if its route has one."""
        return self.routes.find_direct(scope["path"], scope["method"])


def answer_headers(answer: Answer) -> list[tuple[bytes, bytes]]:
    """The headers of ``answer``: its media type, its length and its own (both ways of sending)."""
    return [
        (b"content-type", answer.media_type.encode("latin-1")),
        (b"content-length", str(len(answer.body)).encode()),
        *((k.encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers),
    ]


async def send_answer(send, answer: Answer) -> None:
    await send({"type": "http.response.start", "status": answer.status, "headers": answer_headers(answer)})
    await send({"type": "http.response.body", "body": answer.body})


async def _lifespan(receive, send) -> None:
    """Nothing to set up or tear down: acknowledge start and stop."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
