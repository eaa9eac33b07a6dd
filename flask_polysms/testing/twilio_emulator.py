"""The Twilio emulator: a local Twilio Messages API server for the real ``twilio`` client."""

from __future__ import annotations

import random
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from typing import Any, Literal

from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client
from werkzeug.routing import Map, Rule

from .emulator_api import MessagesApi
from .emulator_callbacks import StatusCallbacks, _PendingCallback
from .emulator_server import _KeepAliveServer
from .emulator_wire import (
    API_VERSION,
    DEFAULT_OUTCOME_ERRORS,
    ERRORS,
    INJECTABLE_CODES,
    CallbackMode,
    Outcome,
    _Fault,
)


class TwilioEmulator(MessagesApi, StatusCallbacks):
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
        created at once (listed, sent, its callbacks posted) and only the answer waits, as when
        Twilio accepted it but the answer never arrived: a retry that does not look first sends
        a second message, as with the real Twilio.
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
        ``num_segments``, ``media_urls`` (the ``MediaUrl`` values, ``[]`` for an SMS),
        ``num_media`` and ``date_created``.
        """
        with self._lock:
            return [self._inspect(m) for m in self._messages.values()]

    @property
    def requests_count(self) -> int:
        """HTTP requests received since start (or :meth:`reset`), whatever their answer."""
        with self._lock:
            return self._requests_count

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
