"""REST transport: TF-Serving's HTTP/REST API (reference/tfserving.md §3) over the core Service.

HTTP as TF-Serving's libevent server speaks it, with `server.routes` doing the API itself:
- a target matching `(?i)/v1/.*` goes to the API (query string included); the Prometheus path,
  when enabled, answers any method; anything else gets libevent's 404 HTML page;
- a request body, as received and after gzip inflation (when its Content-Encoding contains
  `gzip`), may hold at most `--rest_api_max_body_bytes`: past it the reply is 413 (refused
  before the body is read when Content-Length says so) and the connection is closed;
- a client that disconnects before its request is read is logged in one INFO line;
- `OPTIONS` is a CORS preflight (200 if Origin names an http(s) origin, else 400, empty body);
  with `--rest_api_enable_cors_support` every API reply carries the three CORS headers;
- every API request is counted in the request metrics, successful ones timed.

Threads: aiohttp's low-level server runs on its own event loop in one thread and only does
I/O; each request's blocking work (inflate, JSON, core call, JSON) runs on a pool of
`--rest_api_num_threads` workers. `--rest_api_timeout_in_ms` bounds that work from the moment
a worker picks it up: past it the client gets 504 DEADLINE_EXCEEDED at once (the worker
finishes in the background; Python cannot interrupt a TensorFlow run).
`start` and `stop` are called from the owning thread (main), one after the other.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import re
import socket
import threading
import time
import zlib
from collections.abc import Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from server import json_codec
from server.routes import Reply, Route, TooLarge, handle, parse_route
from server.threads import LifoThreadPool
from tfrec.base.affinity import name_os_thread
from tfrec.base.errors import Code, InvalidArgument, http_status
from tfrec.base.metrics import CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE
from tfrec.base.metrics import Metrics
from tfrec.base.settings import Settings
from tfrec.serving.service import Service

log = logging.getLogger(__name__)

API_TARGET = re.compile(r"/v1/.*", re.IGNORECASE | re.ASCII)
MAX_INFLATED_BYTES = 100 << 20  # net_http's ZLib::kMaxUncompressedBytes (the flag's default)
JSON_HEADERS = {"Content-Type": "application/json"}
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, GET",
    "Access-Control-Allow-Headers": "Content-Type",
}
_CORS_ORIGIN = re.compile(r"https?://")
# libevent's evhttp_send_error page.
_NOT_FOUND_PAGE = (
    b"<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n<H1>Not Found</H1>\n"
    b"</BODY></HTML>\n"
)
# aiohttp's request buffer (64 KiB by default): a 4 MB predict body then reaches the handler
# through ~60 pause/resume cycles; with 1 MiB, measured here, ~1.5 ms sooner.
READ_BUFSIZE = 1 << 20
# Seconds connections still busy after stop's grace get before they are cancelled.
_CLOSE_TIMEOUT_S = 1.0


def too_large(limit: int, what: str = "") -> TooLarge:
    return TooLarge(
        f"The request body{what} is larger than --rest_api_max_body_bytes={limit} bytes"
    )


def inflate(data: bytes, limit: int = MAX_INFLATED_BYTES) -> bytes:
    """A gzip body, decompressed; InvalidArgument if corrupt, TooLarge (413) if it inflates
    to more than `limit` bytes (0: no limit)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1 if limit else 0)
    except zlib.error as err:
        raise InvalidArgument(f"Failed to decompress the gzip request body: {err}") from None
    if limit and len(out) > limit:
        raise too_large(limit, " inflated")
    if not inflater.eof:
        raise InvalidArgument("Failed to decompress the gzip request body: it is truncated")
    return out


def _listen(port: int) -> socket.socket:
    """A listening socket on [::]:port (dual stack), else on 0.0.0.0:port (no IPv6)."""
    for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        except OSError:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(1024)
            return sock
        except OSError:
            sock.close()
            if family == socket.AF_INET:
                raise
    raise OSError(f"cannot bind port {port}")


class RestServer:
    """The REST API on `settings.rest_api_port`; see the module docstring for threads."""

    def __init__(
        self,
        service: Service,
        metrics: Metrics,
        settings: Settings,
        prometheus_path: str | None,
    ) -> None:
        self._service = service
        self._metrics = metrics
        self._settings = settings
        self._prometheus_path = prometheus_path
        self._timeout_s = settings.rest_api_timeout_in_ms / 1e3
        self._max_body = max(settings.rest_api_max_body_bytes, 0)
        self._queue_bound = settings.queue_bound(settings.rest_api_num_threads)
        ms = settings.rest_api_timeout_in_ms
        self._late_body = json_codec.error_body(
            f"Deadline exceeded: the request did not complete within {ms} ms "
            "(--rest_api_timeout_in_ms)"
        )
        self._api_headers = dict(JSON_HEADERS)
        self._preflight_headers: dict[str, str] = {}
        if settings.rest_api_enable_cors_support:
            self._api_headers.update(CORS_HEADERS)
            self._preflight_headers.update(CORS_HEADERS)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: LifoThreadPool | None = None
        self._runner: web.ServerRunner | None = None
        self._site: web.SockSite | None = None
        self._in_flight = 0
        self._idle: asyncio.Event | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> int:
        """Binds, starts serving, and returns the bound port once it is listening.

        Raises OSError when the port cannot be bound.
        """
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("RestServer already started")
            sock = _listen(self._settings.rest_api_port)
            port = sock.getsockname()[1]
            self._pool = LifoThreadPool(
                self._settings.rest_api_num_threads,
                thread_name_prefix="tfrec-rest",
                initializer=name_os_thread,
            )
            ready: concurrent.futures.Future[None] = concurrent.futures.Future()
            self._thread = threading.Thread(
                target=self._run_loop, args=(sock, ready), name="tfrec-rest-loop", daemon=True
            )
            self._thread.start()
            try:
                ready.result()
            except BaseException:
                self._thread.join()
                self._thread = None
                self._pool.shutdown(wait=False)
                sock.close()
                raise
            return port

    def stop(self, grace_s: float) -> None:
        """Stops accepting, waits up to grace_s for requests in flight, closes. Idempotent."""
        with self._lock:
            if self._thread is None or self._loop is None:
                return
            shutdown = asyncio.run_coroutine_threadsafe(self._shutdown(grace_s), self._loop)
            try:
                shutdown.result(grace_s + _CLOSE_TIMEOUT_S + 10)
            except Exception:
                log.exception("REST server shutdown failed")
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._thread = None
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)

    def _run_loop(self, sock: socket.socket, ready: concurrent.futures.Future[None]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._setup(sock))
        except BaseException as err:
            loop.close()
            ready.set_exception(err)
            return
        self._loop = loop
        ready.set_result(None)
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _setup(self, sock: socket.socket) -> None:
        self._idle = asyncio.Event()
        self._idle.set()
        server = web.Server(
            self._handle,
            access_log=None,
            auto_decompress=False,  # gzip is inflated here, with a size limit
            max_line_size=1 << 16,
            max_field_size=1 << 16,
            read_bufsize=READ_BUFSIZE,
        )
        self._runner = web.ServerRunner(
            server, handle_signals=False, shutdown_timeout=_CLOSE_TIMEOUT_S
        )
        await self._runner.setup()
        self._site = web.SockSite(self._runner, sock)
        await self._site.start()

    async def _shutdown(self, grace_s: float) -> None:
        assert self._site is not None and self._runner is not None and self._idle is not None
        await self._site.stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace_s)
        await self._runner.cleanup()

    # ------------------------------------------------------------------ requests

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        assert self._idle is not None
        self._in_flight += 1
        self._idle.clear()
        try:
            return await self._respond(request)
        except (ConnectionError, HttpProcessingError) as err:  # the client went away
            log.info("REST %r %r: client disconnected (%s)", request.method, request.path, err)
            response = web.Response(status=400)
            response.force_close()
            return response  # aiohttp drops it quietly: the transport is gone
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def _respond(self, request: web.BaseRequest) -> web.StreamResponse:
        start = time.perf_counter()
        target = request.raw_path
        path = target.partition("?")[0].partition("#")[0]  # evhttp_uri_get_path
        if self._prometheus_path is not None and path == self._prometheus_path:
            return await self._prometheus(target)
        if not API_TARGET.fullmatch(target):
            response = web.Response(status=404, body=_NOT_FOUND_PAGE)
            response.headers["Content-Type"] = "text/html; charset=ISO-8859-1"
            response.force_close()
            return response
        if request.method == "OPTIONS":
            origin = request.headers.get("Origin", "")
            code = Code.OK if _CORS_ORIGIN.search(origin) else Code.FAILED_PRECONDITION
            reply = Reply(code, b"")
            headers = self._preflight_headers
        else:
            route = parse_route(request.method, target)
            headers = self._api_headers
            try:
                raw = await self._body(request)
            except TooLarge as err:
                reply = Reply(err.code, json_codec.error_body(err.message), route.model,
                              route.method, TooLarge.HTTP_STATUS)  # fmt: skip
                elapsed = time.perf_counter() - start
                self._metrics.observe_request(reply.model, reply.api, "REST", reply.code, elapsed)
                response = web.Response(status=reply.http, body=reply.body, headers=headers)
                response.force_close()  # the rest of the body is not read
                return response
            gzipped = "gzip" in request.headers.get("Content-Encoding", "")
            body = functools.partial(inflate, raw, self._max_body) if gzipped else (lambda: raw)
            reply = await self._run(route, body)
        elapsed = time.perf_counter() - start
        self._metrics.observe_request(reply.model, reply.api, "REST", reply.code, elapsed)
        status = reply.http or http_status(reply.code)
        return web.Response(status=status, body=reply.body, headers=headers)

    async def _body(self, request: web.BaseRequest) -> bytes:
        """The raw body of a POST (other methods' bodies are never read); TooLarge past
        --rest_api_max_body_bytes, before reading any of it when Content-Length says so."""
        if request.method != "POST":
            return b""
        limit = self._max_body
        length = request.content_length
        if limit and length is not None and length > limit:
            raise too_large(limit, f" of {length} bytes")
        if request.version >= (1, 1) and request.headers.get("Expect", "").lower() == (
            "100-continue"
        ):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if not limit or length is not None:
            return await request.content.read()
        chunks = []  # chunked: counted as it arrives
        size = 0
        while chunk := await request.content.readany():
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            chunks.append(chunk)
        return b"".join(chunks)

    async def _run(self, route: Route, body: Callable[[], bytes]) -> Reply:
        """routes.handle on a worker, bounded by --rest_api_timeout_in_ms once it starts.

        `body()` gives the request body (inflating it, on the worker, when it is gzip).
        """
        assert self._pool is not None
        if 0 <= self._queue_bound <= self._pool.backlog():
            self._metrics.overload_rejections.labels("REST").inc()
            message = (
                f"{self._queue_bound} requests already wait for a worker "
                "(--max_queued_requests): the server is overloaded, retry later"
            )
            return Reply(Code.RESOURCE_EXHAUSTED, json_codec.error_body(message), route.model,
                         route.method)  # fmt: skip
        loop = asyncio.get_running_loop()
        job = functools.partial(handle, self._service, route, body)
        if self._timeout_s <= 0:
            return await loop.run_in_executor(self._pool, job, None)
        late = Reply(Code.DEADLINE_EXCEEDED, self._late_body, route.model, route.method)
        return await _with_deadline(loop, self._pool, job, self._timeout_s, late)

    async def _prometheus(self, target: str) -> web.StreamResponse:
        """TF-Serving's ProcessPrometheusRequest: any method; a query string is refused."""
        assert self._prometheus_path is not None
        if target != self._prometheus_path:
            status = 400
            page = f"Unexpected path: {target}. Should be {self._prometheus_path}".encode()
        else:
            status = 200
            loop = asyncio.get_running_loop()
            page = await loop.run_in_executor(self._pool, self._metrics.render)
        response = web.Response(status=status, body=page)
        response.headers["Content-Type"] = PROMETHEUS_CONTENT_TYPE
        return response


def _with_deadline(
    loop: asyncio.AbstractEventLoop,
    pool: concurrent.futures.Executor,
    job: Callable[[float | None], Reply],
    timeout_s: float,
    late: Reply,
) -> asyncio.Future[Reply]:
    """`job(deadline)` on `pool`; resolves to `late` once it has run for timeout_s on a worker
    (time queued for a free worker does not count), and its run is dropped if it has not
    started by then. A timer on the loop checks the start time the worker records: no extra
    wake-up of the loop per request."""
    started: list[float] = []

    def timed() -> Reply:
        now = time.monotonic()
        started.append(now)
        return job(now + timeout_s)

    done = loop.run_in_executor(pool, timed)
    reply: asyncio.Future[Reply] = loop.create_future()

    def check() -> None:
        if reply.done():
            return
        delay = (started[0] if started else time.monotonic()) + timeout_s - time.monotonic()
        if delay > 0:
            timer[0] = loop.call_later(delay, check)
        else:
            reply.set_result(late)

    timer = [loop.call_later(timeout_s, check)]

    def finished(future: asyncio.Future[Reply]) -> None:
        timer[0].cancel()
        if reply.done():
            return
        if future.cancelled():
            reply.cancel()
        elif future.exception() is not None:
            reply.set_exception(future.exception())  # type: ignore[arg-type]
        else:
            reply.set_result(future.result())

    done.add_done_callback(finished)
    return reply
