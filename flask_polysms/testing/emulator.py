"""A local Twilio Messages API: the real ``twilio`` client talks to it over HTTP.

Nothing in this project mocks Twilio at the Python level. :class:`TwilioEmulator` is a small HTTP
server on 127.0.0.1 that answers ``POST/GET /2010-04-01/Accounts/{AccountSid}/Messages.json`` and
``GET .../Messages/{Sid}.json`` as Twilio does (Basic auth, the same validation codes, the same
error JSON), lets a test inject the failures Twilio produces (429, 5xx, permanent 4xx, a hang
longer than the client's timeout) and posts signed status callbacks (``sent`` then ``delivered``,
or ``undelivered``/``failed`` with an ``ErrorCode``), optionally twice or out of order.

The real client is pointed at it by ``client.api.base_url = emulator.base_url`` (every URL of the
``api`` domain, paging links included, is built from that attribute by
``twilio.base.domain.Domain.absolute_url``), with ``client.region`` and ``client.edge`` set to
None so ``TWILIO_REGION``/``TWILIO_EDGE`` cannot rewrite the host. :meth:`TwilioEmulator.client`
returns such a client. Run standalone with
``python -m flask_polysms.emulator --port 8999 --account ACxxx:token``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import email.utils
import hashlib
import io
import json
import random
import re
import secrets
import signal
import socket
import socketserver
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from flask_polysms.clock import utcnow
from flask_polysms.segments import count_segments

API_VERSION = "2010-04-01"
# Used with fullmatch ($ alone also matches before a trailing newline); ASCII digits only.
E164 = re.compile(r"^\+[1-9]\d{1,14}$", re.ASCII)
MESSAGING_SERVICE_SID = re.compile(r"^MG[0-9a-fA-F]{32}$")
MAX_BODY_CHARACTERS = 1600

CallbackMode = Literal["auto", "manual"]
Outcome = Literal["delivered", "undelivered", "failed", "sent"]

# HTTP status and message template for every error code the emulator can answer or inject.
# ``{to}`` is filled with the request's To. Texts follow Twilio's own error messages.
ERRORS: dict[int, tuple[int, str]] = {
    20003: (401, "Authenticate"),
    20004: (405, "Method not allowed"),
    20404: (404, "The requested resource {path} was not found"),
    20429: (429, "Too Many Requests"),
    20500: (500, "An internal server error has occurred"),
    20503: (503, "Service Unavailable"),
    21211: (400, "The 'To' number {to} is not a valid phone number."),
    21408: (
        400,
        "Permission to send an SMS has not been enabled for the region indicated by the 'To' "
        "number: {to}.",
    ),
    21602: (400, "Message body is required."),
    21603: (400, "A 'From' or 'MessagingServiceSid' parameter is required to send a message."),
    21604: (400, "A 'To' phone number is required."),
    21609: (400, "Invalid StatusCallback url: {status_callback}"),
    21610: (400, "Attempt to send to unsubscribed recipient"),
    21614: (400, "'To' number {to} is not a valid mobile number"),
    21617: (400, "The concatenated message body exceeds the 1600 character limit."),
    21701: (400, "The Messaging Service Sid {messaging_service_sid} is invalid."),
}
# ``fail_next`` takes these; 500 is accepted as a name for 20500 (HTTP 500).
INJECTABLE_CODES = frozenset({20429, 500, 20500, 20503, 21211, 21408, 21610, 21614})

# Default ErrorCode for a final status other than "delivered" (30003: unreachable handset,
# 30008: unknown error).
DEFAULT_OUTCOME_ERRORS = {"undelivered": 30003, "failed": 30008}
# A message's own status never goes back, whatever order its callbacks were posted in.
_STATUS_RANK = {
    "accepted": 0,
    "queued": 0,
    "sent": 1,
    "delivered": 2,
    "undelivered": 2,
    "failed": 2,
}


def error_body(code: int, status: int, message: str) -> dict[str, Any]:
    """Twilio's error JSON: ``code``, ``message``, ``more_info``, ``status``."""
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def _rfc2822(value: datetime | None) -> str | None:
    # Twilio's 2010 API dates look like "Thu, 24 Aug 2023 05:01:45 +0000".
    return email.utils.format_datetime(value) if value is not None else None


def _now() -> datetime:
    return utcnow().replace(microsecond=0)


def _new_sid(prefix: str = "SM") -> str:
    return prefix + secrets.token_hex(16)


@dataclass(frozen=True)
class _Fault:
    """One injected answer to a create call."""

    code: int = 20500
    status: int = 500
    message: str | None = None  # None: the code's usual text
    hang_seconds: float = 0.0
    then: Literal["drop", "create"] = "drop"


@dataclass
class _PendingCallback:
    """One status callback waiting to be posted (or, without a URL, a status change to apply)."""

    message_sid: str
    account_sid: str
    url: str | None
    status: str
    error_code: int | None
    idempotency_token: str


class _KeepAliveHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive in front of the emulator's WSGI app.

    Werkzeug's development server closes the connection after every answer (and starts a thread
    per connection), so each create call cost the client a TCP handshake and the emulator a new
    thread: about 1.9 ms of CPU per message, on the machine that runs the code under test, for
    work the real Twilio does elsewhere. Here one thread serves a client's connection request
    after request, as Twilio's API does. Bodies are read by ``Content-Length`` (the twilio client
    always sends one); a chunked request body is refused with 411 and the connection closed.
    """

    protocol_version = "HTTP/1.1"
    server_version = "TwilioEmulator/1.1"
    # An idle keep-alive connection is closed after this many seconds.
    timeout = 60
    # Answers leave at once, in one write: with Nagle's algorithm on, a second small write waits
    # for the client's delayed ACK (40 ms) on a kept-alive connection.
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        self.server.opened(self.connection)  # type: ignore[attr-defined]

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.closed(self.connection)  # type: ignore[attr-defined]

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass  # no line per request: tests and demos stay readable

    def _serve(self) -> None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            self.send_error(411, "Length Required")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            self.send_error(400, "Bad Content-Length")
            return
        body = self.rfile.read(length) if length else b""
        path, _, query = self.path.partition("?")
        if "://" in path:  # an absolute-form request target
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        host, port = self.server.server_address[:2]
        environ: dict[str, Any] = {
            "REQUEST_METHOD": self.command,
            "SCRIPT_NAME": "",
            "PATH_INFO": urllib.parse.unquote(path, "latin-1"),
            "QUERY_STRING": query,
            "SERVER_NAME": str(host),
            "SERVER_PORT": str(port),
            "SERVER_PROTOCOL": self.request_version,
            "REMOTE_ADDR": self.client_address[0],
            "REMOTE_PORT": self.client_address[1],
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "CONTENT_LENGTH": str(length) if length or self.command == "POST" else "",
        }
        for name, value in self.headers.items():
            key = name.upper().replace("-", "_")
            if key == "CONTENT_TYPE":
                environ["CONTENT_TYPE"] = value
            elif key != "CONTENT_LENGTH":
                environ.setdefault("HTTP_" + key, value)
        started: list[Any] = []

        def start_response(status: str, headers: list, exc_info: Any = None) -> Callable:
            started[:] = [status, headers]
            return lambda data: None  # the emulator never calls write()

        try:
            result = self.server.app(environ, start_response)  # type: ignore[attr-defined]
        except Exception:  # a bug of the emulator: answer 500 as a WSGI server would
            self.server.handle_error(self.request, self.client_address)
            self.close_connection = True
            self.send_error(500, "Internal Server Error")
            return
        try:
            payload = b"".join(result)
            status, headers = started
            code, _, reason = status.partition(" ")
            self.send_response(int(code), reason)
            for name, value in headers:
                if name.lower() not in ("content-length", "connection", "date", "server"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self._headers_buffer.append(b"\r\n")
            if self.command != "HEAD":
                self._headers_buffer.append(payload)
            self.flush_headers()  # status line, headers and body in one write
        finally:
            # Werkzeug's call_on_close hooks: a status callback never beats the answer.
            if hasattr(result, "close"):
                result.close()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve


class _KeepAliveServer(ThreadingHTTPServer):
    """A thread per connection (not per request); :meth:`close_connections` ends idle ones."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, host: str, port: int, app: Callable[..., Iterable[bytes]]) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.app = app
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__((host, port), _KeepAliveHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host's name up (getfqdn): nothing here needs it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def opened(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def closed(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        """Wake every connection's thread (idle keep-alive ones wait for a next request)."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away (its timeout during a hang, a test's teardown) is not an error.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class TwilioEmulator:
    """A Twilio Messages API server on 127.0.0.1 for the real ``twilio`` client.

    ``callbacks="auto"`` posts each message's status callbacks from a background thread, starting
    ``callback_delay`` seconds after the create response was sent and ``callback_delay`` apart;
    ``"manual"`` queues them until :meth:`deliver_callbacks`. ``duplicate_callbacks`` posts every
    callback twice; ``shuffle_callbacks`` posts them in a random order that is never the original
    one (when there are two or more). ``seed`` makes the shuffling reproducible. Callback POSTs
    time out after ``callback_timeout`` seconds; a target that is down is recorded, never raised.

    State (accounts, messages, faults, callbacks) is safe to read and change from any thread.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        callbacks: CallbackMode = "auto",
        duplicate_callbacks: bool = False,
        shuffle_callbacks: bool = False,
        callback_delay: float = 0.05,
        callback_timeout: float = 2.0,
        seed: int | None = None,
    ) -> None:
        if callbacks not in ("auto", "manual"):
            raise ValueError(f"callbacks must be 'auto' or 'manual', not {callbacks!r}")
        self.host = host
        self.port = port
        self.callbacks = callbacks
        self.duplicate_callbacks = duplicate_callbacks
        self.shuffle_callbacks = shuffle_callbacks
        self.callback_delay = callback_delay
        self.callback_timeout = callback_timeout
        self._random = random.Random(seed)
        self._lock = threading.RLock()
        self._posted_changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._server: _KeepAliveServer | None = None
        self._thread: threading.Thread | None = None
        self._timers: set[threading.Thread] = set()
        self._accounts: dict[str, str] = {}
        self._messages: dict[str, dict[str, Any]] = {}
        self._faults: deque[_Fault] = deque()
        self._outcomes: dict[str, tuple[Outcome, int | None]] = {}
        self._pending: list[_PendingCallback] = []
        self._posted: list[dict[str, Any]] = []
        self._requests_count = 0
        # Opener without proxies: callbacks go to local test servers, never through HTTP_PROXY.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._urls = Map(
            [
                Rule(
                    f"/{API_VERSION}/Accounts/<account_sid>/Messages.json",
                    endpoint="messages",
                    methods=["GET", "POST"],
                ),
                Rule(
                    f"/{API_VERSION}/Accounts/<account_sid>/Messages/<sid>.json",
                    endpoint="message",
                    methods=["GET"],
                ),
            ]
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> TwilioEmulator:
        """Listen (on a free port when ``port`` is 0) and serve from a daemon thread."""
        if self._server is not None:
            raise RuntimeError("the emulator is already running")
        self._stopping.clear()
        self._server = _KeepAliveServer(self.host, self.port, self._wsgi)
        self.port = self._server.server_port
        # A short poll interval: shutdown() waits up to one interval, at every test's teardown.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="twilio-emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; hanging requests are released and pending auto callbacks dropped."""
        self._stopping.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            timers = list(self._timers)
        for timer in timers:
            timer.join(timeout=self.callback_timeout + 1)

    def __enter__(self) -> TwilioEmulator:
        return self if self._server is not None else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``, the origin to use instead of ``https://api.twilio.com``."""
        if self._server is None:
            raise RuntimeError("the emulator is not running: call start() first")
        return f"http://{self.host}:{self.port}"

    # -- configuration -----------------------------------------------------------------------

    def add_account(self, account_sid: str, auth_token: str) -> None:
        """Accept Basic auth ``account_sid:auth_token`` for ``/Accounts/{account_sid}/...``."""
        with self._lock:
            self._accounts[account_sid] = auth_token

    def fail_next(
        self, n: int, code: int, *, status: int | None = None, message: str | None = None
    ) -> None:
        """Answer the next ``n`` create calls with Twilio error ``code`` instead of creating.

        Known codes: 20429 (HTTP 429), 500 or 20500 (HTTP 500, code 20500), 20503 (HTTP 503),
        21211, 21408, 21610, 21614 (HTTP 400). Another code needs ``status``. Faults queue up in
        the order they were injected and are used by create calls that passed authentication.
        """
        if code == 500:
            code = 20500
        if code not in INJECTABLE_CODES and status is None:
            raise ValueError(f"unknown Twilio error code {code}: pass status=")
        fault = _Fault(code=code, status=status or ERRORS[code][0], message=message)
        with self._lock:
            self._faults.extend([fault] * n)

    def hang_next(
        self, n: int, seconds: float, *, then: Literal["drop", "create"] = "drop"
    ) -> None:
        """Hold the next ``n`` create calls for ``seconds`` before answering.

        Use a ``seconds`` longer than the client's timeout, so the client gives up first. With
        ``then="drop"`` (default) nothing is created, as if the request was lost on the way (a
        client still waiting gets HTTP 503, code 20503). With ``then="create"`` the message is
        created after the delay, as when Twilio accepted it but the answer never arrived: a
        retry then sends a second message, as with the real Twilio.
        """
        if then not in ("drop", "create"):
            raise ValueError(f"then must be 'drop' or 'create', not {then!r}")
        with self._lock:
            self._faults.extend([_Fault(hang_seconds=seconds, then=then)] * n)

    def set_outcome(self, to_number: str, outcome: Outcome, error_code: int | None = None) -> None:
        """Make messages to ``to_number`` end ``outcome``.

        ``"delivered"`` (the default for every number): callbacks ``sent``, ``delivered``.
        ``"undelivered"``: ``sent``, ``undelivered`` with ``ErrorCode`` (default 30003).
        ``"failed"``: ``failed`` with ``ErrorCode`` (default 30008), never ``sent``.
        ``"sent"``: ``sent`` only (a carrier without delivery receipts).
        """
        if outcome not in ("delivered", "undelivered", "failed", "sent"):
            raise ValueError(f"unknown outcome {outcome!r}")
        if outcome in DEFAULT_OUTCOME_ERRORS and error_code is None:
            error_code = DEFAULT_OUTCOME_ERRORS[outcome]
        with self._lock:
            self._outcomes[to_number] = (outcome, error_code)

    def reset(self) -> None:
        """Forget messages, faults, outcomes, callbacks and the request count; keep accounts."""
        with self._lock:
            self._messages.clear()
            self._faults.clear()
            self._outcomes.clear()
            self._pending.clear()
            self._posted.clear()
            self._requests_count = 0

    # -- inspection --------------------------------------------------------------------------

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Copies of the messages created, oldest first.

        Each has ``sid``, ``account_sid``, ``to``, ``from``, ``messaging_service_sid``, ``body``,
        ``status_callback``, ``status`` (as Twilio would report it now), ``error_code``,
        ``num_segments`` and ``date_created``.
        """
        with self._lock:
            return [self._inspect(m) for m in self._messages.values()]

    @property
    def requests_count(self) -> int:
        """HTTP requests received since start (or :meth:`reset`), whatever their answer."""
        with self._lock:
            return self._requests_count

    @property
    def callbacks_posted(self) -> list[dict[str, Any]]:
        """Copies of the status callbacks posted, in posting order.

        Each has ``url``, ``params`` (the form fields), ``signature`` (the ``X-Twilio-Signature``
        sent), ``message_sid``, ``status``, ``status_code`` (the HTTP status the target answered,
        None when it did not answer) and ``error`` (why it did not, else None).
        """
        with self._lock:
            return [dict(entry, params=dict(entry["params"])) for entry in self._posted]

    @property
    def pending_callbacks(self) -> int:
        """Callbacks queued for :meth:`deliver_callbacks` (``callbacks="manual"``)."""
        with self._lock:
            return sum(1 for p in self._pending if p.url is not None)

    def deliver_callbacks(self) -> list[dict[str, Any]]:
        """Post every queued callback now, in this thread; return what was posted.

        Message statuses advance as their callbacks are taken from the queue, also for messages
        created without a ``StatusCallback``. Shuffling, when on, mixes the whole batch.
        """
        with self._lock:
            batch, self._pending = self._pending, []
        batch = self._arrange(batch)
        return [record for p in batch if (record := self._post(p)) is not None]

    def wait_for_callbacks(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Wait until at least ``count`` callbacks were posted; return them all.

        Raises TimeoutError naming how many arrived when ``timeout`` seconds pass first.
        """
        with self._posted_changed:
            # Condition.wait_for counts real time, also when a test freezes the clock.
            if not self._posted_changed.wait_for(lambda: len(self._posted) >= count, timeout):
                raise TimeoutError(
                    f"{len(self._posted)} of {count} status callbacks posted after {timeout} s"
                )
        return self.callbacks_posted

    def client(
        self,
        account_sid: str | None = None,
        auth_token: str | None = None,
        *,
        timeout: float | None = None,
        http_client: TwilioHttpClient | None = None,
    ) -> Client:
        """A real ``twilio.rest.Client`` whose Messages API calls reach this emulator.

        Without ``account_sid``, the only account added is used. ``timeout`` (seconds) builds a
        ``TwilioHttpClient(timeout=...)``; or pass your own ``http_client``.
        """
        with self._lock:
            if account_sid is None:
                if len(self._accounts) != 1:
                    raise ValueError("pass account_sid: the emulator has not exactly one account")
                account_sid = next(iter(self._accounts))
            if auth_token is None:
                auth_token = self._accounts[account_sid]
        http = http_client or TwilioHttpClient(timeout=timeout)
        client = Client(account_sid, auth_token, http_client=http)
        # TWILIO_REGION/TWILIO_EDGE would make get_hostname() rewrite the (emulator's) host.
        client.region = None
        client.edge = None
        # Domain.absolute_url() builds every api.twilio.com URL (paging links too) from this.
        client.api.base_url = self.base_url
        return client

    # -- HTTP --------------------------------------------------------------------------------

    def _wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        with self._lock:
            self._requests_count += 1
        response = self._dispatch(request)
        return response(environ, start_response)

    def _dispatch(self, request: Request) -> Response:
        adapter = self._urls.bind_to_environ(request.environ)
        try:
            endpoint, args = adapter.match()
        except HTTPException as exc:  # NotFound, MethodNotAllowed
            code = 20004 if exc.code == 405 else 20404
            return self._error(code, path=request.path)
        account_sid = args["account_sid"]
        denied = self._authenticate(request, account_sid)
        if denied is not None:
            return denied
        if endpoint == "message":
            return self._fetch(account_sid, args["sid"], request.path)
        if request.method == "GET":
            return self._list(account_sid, request)
        return self._create(account_sid, request)

    def _authenticate(self, request: Request, account_sid: str) -> Response | None:
        username, password = _basic_credentials(request.headers.get("Authorization", ""))
        with self._lock:
            expected = self._accounts.get(username or "")
        if (
            username is None
            or expected is None
            or not secrets.compare_digest(expected.encode(), (password or "").encode())
        ):
            response = self._error(20003)
            response.headers["WWW-Authenticate"] = 'Basic realm="Twilio API"'
            return response
        if username != account_sid:
            # Another account's resources are invisible, as on Twilio.
            return self._error(20404, path=request.path)
        return None

    def _create(self, account_sid: str, request: Request) -> Response:
        form = request.form
        fields = {
            "to": form.get("To") or "",
            "from": form.get("From") or None,
            "messaging_service_sid": form.get("MessagingServiceSid") or None,
            "body": form.get("Body") or "",
            "status_callback": form.get("StatusCallback") or None,
        }
        with self._lock:
            fault = self._faults.popleft() if self._faults else None
        if fault is not None and fault.hang_seconds:
            # Released early by stop(), so a test run never waits for a forgotten hang.
            self._stopping.wait(fault.hang_seconds)
            if fault.then == "drop":
                return self._error(20503, **fields)
        elif fault is not None:
            return self._error(fault.code, status=fault.status, message=fault.message, **fields)
        invalid = self._validate(
            fields, has_media=bool(form.get("MediaUrl") or form.get("ContentSid"))
        )
        if invalid is not None:
            return invalid
        return self._json(self._store(account_sid, fields), 201, after=self._schedule)

    def _validate(self, fields: dict[str, Any], *, has_media: bool) -> Response | None:
        if not fields["to"]:
            return self._error(21604)
        if not E164.fullmatch(fields["to"]):
            return self._error(21211, **fields)
        if not fields["from"] and not fields["messaging_service_sid"]:
            return self._error(21603)
        service = fields["messaging_service_sid"]
        if service and not MESSAGING_SERVICE_SID.fullmatch(service):
            return self._error(21701, **fields)
        if not fields["body"] and not has_media:
            return self._error(21602)
        if len(fields["body"]) > MAX_BODY_CHARACTERS:
            return self._error(21617)
        callback = fields["status_callback"]
        if callback and urllib.parse.urlsplit(callback).scheme not in ("http", "https"):
            return self._error(21609, **fields)
        return None

    def _store(self, account_sid: str, fields: dict[str, Any]) -> dict[str, Any]:
        now = _now()
        sid = _new_sid()
        message = {
            "sid": sid,
            "account_sid": account_sid,
            "to": fields["to"],
            "from": fields["from"],
            "messaging_service_sid": fields["messaging_service_sid"],
            "body": fields["body"],
            "status_callback": fields["status_callback"],
            # Twilio answers "accepted" when a Messaging Service still has to pick the sender.
            "status": "queued" if fields["from"] else "accepted",
            "error_code": None,
            "num_segments": count_segments(fields["body"]).segments,
            "date_created": now,
            "date_updated": now,
            "date_sent": None,
        }
        with self._lock:
            self._messages[sid] = message
            outcome, error_code = self._outcomes.get(fields["to"], ("delivered", None))
            token = self._accounts[account_sid]
            steps = {
                "delivered": [("sent", None), ("delivered", None)],
                "undelivered": [("sent", None), ("undelivered", error_code)],
                "failed": [("failed", error_code)],
                "sent": [("sent", None)],
            }[outcome]
            pending = [
                _PendingCallback(
                    message_sid=sid,
                    account_sid=account_sid,
                    url=fields["status_callback"],
                    status=status,
                    error_code=code,
                    # One token per (message, status): a duplicate repeats it, as Twilio does.
                    idempotency_token=hashlib.sha256(f"{token}{sid}{status}".encode()).hexdigest(),
                )
                for status, code in steps
            ]
            if self.callbacks == "manual":
                # Queued before answering: once the client has the SID, deliver_callbacks() sees it.
                self._pending.extend(pending)
            else:
                message["_pending"] = pending
            return self._resource(message)

    def _schedule(self, resource: dict[str, Any]) -> None:
        """Start posting (auto mode) the callbacks of a message just answered."""
        with self._lock:
            message = self._messages.get(resource["sid"])
            if message is None:  # reset() in between
                return
            pending = message.pop("_pending", [])
            if not pending or self._stopping.is_set():
                return
            timer = threading.Thread(
                target=self._post_series, args=(pending,), name="twilio-callbacks", daemon=True
            )
            # Started under the lock: stop() joins every thread it finds in _timers, and joining
            # one not started yet raises.
            self._timers.add(timer)
            timer.start()

    def _post_series(self, pending: list[_PendingCallback]) -> None:
        try:
            for item in self._arrange(pending):
                if self._stopping.wait(self.callback_delay):
                    return
                self._post(item)
        finally:
            with self._lock:
                self._timers.discard(threading.current_thread())

    def _arrange(self, pending: list[_PendingCallback]) -> list[_PendingCallback]:
        """Apply the duplicate and shuffle options to a run of callbacks."""
        if self.duplicate_callbacks:
            pending = [p for p in pending for _ in (0, 1)]
        if self.shuffle_callbacks and len({id(p) for p in pending}) > 1:
            original = list(pending)
            with self._lock:
                self._random.shuffle(pending)
            if [p.status for p in pending] == [p.status for p in original]:
                # A shuffle that happens to keep the order would make the option a coin toss.
                pending.reverse()
        return pending

    def _post(self, item: _PendingCallback) -> dict[str, Any] | None:
        """Advance the message's status and post its callback; never raises."""
        with self._lock:
            message = self._messages.get(item.message_sid)
            if message is None:
                return None
            self._advance(message, item.status, item.error_code)
            token = self._accounts.get(item.account_sid, "")
            params = {
                "MessageSid": message["sid"],
                "SmsSid": message["sid"],
                "AccountSid": message["account_sid"],
                "To": message["to"],
                "MessageStatus": item.status,
                "SmsStatus": item.status,
                "ApiVersion": API_VERSION,
            }
            if message["from"]:
                params["From"] = message["from"]
            if message["messaging_service_sid"]:
                params["MessagingServiceSid"] = message["messaging_service_sid"]
            if item.error_code is not None:
                params["ErrorCode"] = str(item.error_code)
        if item.url is None:
            return None
        signature = RequestValidator(token).compute_signature(item.url, params)
        record: dict[str, Any] = {
            "url": item.url,
            "params": params,
            "signature": signature,
            "message_sid": item.message_sid,
            "status": item.status,
            "status_code": None,
            "error": None,
        }
        request = urllib.request.Request(
            item.url,
            data=urllib.parse.urlencode(params).encode(),
            method="POST",
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Twilio-Signature": signature,
                "I-Twilio-Idempotency-Token": item.idempotency_token,
                "User-Agent": "TwilioProxy/1.1",
            },
        )
        try:
            with self._opener.open(request, timeout=self.callback_timeout) as answer:
                record["status_code"] = answer.status
        except urllib.error.HTTPError as exc:
            record["status_code"] = exc.code
            exc.close()
        except Exception as exc:  # the target is down, slow or not HTTP: record, never crash
            record["error"] = f"{type(exc).__name__}: {exc}"
        with self._lock:
            self._posted.append(record)
            self._posted_changed.notify_all()
        return dict(record, params=dict(params))

    def _advance(self, message: dict[str, Any], status: str, error_code: int | None) -> None:
        if _STATUS_RANK.get(status, 0) <= _STATUS_RANK.get(message["status"], 0):
            return
        message["status"] = status
        message["date_updated"] = _now()
        if status == "sent":
            message["date_sent"] = message["date_updated"]
        if error_code is not None:
            message["error_code"] = error_code

    def _fetch(self, account_sid: str, sid: str, path: str) -> Response:
        with self._lock:
            message = self._messages.get(sid)
            if message is None or message["account_sid"] != account_sid:
                return self._error(20404, path=path)
            return self._json(self._resource(message), 200)

    def _list(self, account_sid: str, request: Request) -> Response:
        args = request.args
        try:
            page_size = max(1, min(1000, int(args.get("PageSize", 50))))
            page = max(0, int(args.get("Page", 0)))
        except ValueError:
            return self._error(20404, path=request.path)
        with self._lock:
            found = [
                self._resource(m)
                for m in reversed(self._messages.values())  # Twilio lists newest first
                if m["account_sid"] == account_sid
                and args.get("To", m["to"]) == m["to"]
                and args.get("From", m["from"]) == m["from"]
            ]
        start = page * page_size
        chunk = found[start : start + page_size]
        base = f"/{API_VERSION}/Accounts/{account_sid}/Messages.json"
        filters = {k: args[k] for k in ("To", "From") if k in args}

        def page_uri(number: int) -> str:
            query = urllib.parse.urlencode({**filters, "PageSize": page_size, "Page": number})
            return f"{base}?{query}"

        return self._json(
            {
                "messages": chunk,
                "start": start,
                "end": start + max(len(chunk) - 1, 0),
                "page": page,
                "page_size": page_size,
                "uri": page_uri(page),
                "first_page_uri": page_uri(0),
                "next_page_uri": page_uri(page + 1) if start + page_size < len(found) else None,
                "previous_page_uri": page_uri(page - 1) if page > 0 else None,
            },
            200,
        )

    def _resource(self, message: dict[str, Any]) -> dict[str, Any]:
        """The message as Twilio's JSON resource."""
        uri = f"/{API_VERSION}/Accounts/{message['account_sid']}/Messages/{message['sid']}"
        error_code = message["error_code"]
        return {
            "account_sid": message["account_sid"],
            "api_version": API_VERSION,
            "body": message["body"],
            "date_created": _rfc2822(message["date_created"]),
            "date_sent": _rfc2822(message["date_sent"]),
            "date_updated": _rfc2822(message["date_updated"]),
            "direction": "outbound-api",
            "error_code": error_code,
            "error_message": None if error_code is None else f"Error {error_code}",
            "from": message["from"],
            "messaging_service_sid": message["messaging_service_sid"],
            "num_media": "0",
            "num_segments": str(message["num_segments"]),
            "price": None,
            "price_unit": "USD",
            "sid": message["sid"],
            "status": message["status"],
            "subresource_uris": {"media": f"{uri}/Media.json", "feedback": f"{uri}/Feedback.json"},
            "to": message["to"],
            "uri": f"{uri}.json",
        }

    @staticmethod
    def _inspect(message: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in message.items() if not k.startswith("_")}

    @staticmethod
    def _json(
        payload: dict[str, Any],
        status: int,
        after: Callable[[dict[str, Any]], None] | None = None,
    ) -> Response:
        response = Response(json.dumps(payload), status=status, mimetype="application/json")
        if after is not None:
            # Runs once the server has written the answer: a callback never beats the 201.
            response.call_on_close(lambda: after(payload))
        return response

    def _error(
        self, code: int, *, status: int | None = None, message: str | None = None, **fill: Any
    ) -> Response:
        default_status, template = ERRORS.get(code, (status or 400, f"Error {code}"))
        values = {"to": "", "path": "", "status_callback": "", "messaging_service_sid": ""}
        values.update({k: v for k, v in fill.items() if v is not None})
        # A caller's own message is used as given; only the built-in templates are filled in.
        text = message if message is not None else template.format(**values)
        status = status or default_status
        return self._json(error_body(code, status, text), status)


def _basic_credentials(header: str) -> tuple[str | None, str | None]:
    """(username, password) from a Basic Authorization header, (None, None) when absent or bad."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None, None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    username, sep, password = decoded.partition(":")
    return (username, password) if sep else (None, None)


def _account_arg(value: str) -> tuple[str, str]:
    account_sid, sep, token = value.partition(":")
    if not sep or not account_sid or not token:
        raise argparse.ArgumentTypeError("expected ACCOUNT_SID:AUTH_TOKEN")
    return account_sid, token


def main(argv: list[str] | None = None) -> None:
    """Serve in the foreground until SIGINT or SIGTERM, then stop cleanly (for demos)."""
    parser = argparse.ArgumentParser(
        prog="python -m flask_polysms.emulator",
        description="A local Twilio Messages API for the real twilio client.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8999)
    parser.add_argument(
        "--account",
        action="append",
        type=_account_arg,
        required=True,
        metavar="ACCOUNT_SID:AUTH_TOKEN",
        help="an account the emulator accepts (repeat for more)",
    )
    parser.add_argument("--duplicate-callbacks", action="store_true")
    parser.add_argument("--shuffle-callbacks", action="store_true")
    parser.add_argument("--callback-delay", type=float, default=0.5, metavar="SECONDS")
    parser.add_argument(
        "--callbacks",
        choices=["auto", "manual"],
        default="auto",
        help="manual: status callbacks are queued, never posted (benchmarks of the sender alone)",
    )
    args = parser.parse_args(argv)
    emulator = TwilioEmulator(
        args.host,
        args.port,
        callbacks=args.callbacks,
        duplicate_callbacks=args.duplicate_callbacks,
        shuffle_callbacks=args.shuffle_callbacks,
        callback_delay=args.callback_delay,
    )
    for account_sid, token in args.account:
        emulator.add_account(account_sid, token)
    stopped = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stopped.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    emulator.start()
    print(f"Twilio emulator on {emulator.base_url} (Ctrl-C to stop)", flush=True)
    try:
        # A bounded wait: a signal that lands on a server thread is only handled when the main
        # thread wakes, and an unbounded wait would never wake.
        while not stopped.wait(0.2):
            pass
    finally:
        emulator.stop()


if __name__ == "__main__":
    main()
