"""The Gateway port: hands one message to Twilio (or to the test outbox) and says what happened."""

from __future__ import annotations

import logging
import os
import threading
import urllib.parse
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

import requests
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

TWILIO_API_ORIGIN = "https://api.twilio.com"

# Twilio errors that no retry can fix: invalid number, unsubscribed recipient, not SMS-capable,
# permission to send to the region not enabled.
PERMANENT_CODES = frozenset({21211, 21610, 21614, 21408, 21602, 21603, 21604, 21606, 21612})
RETRYABLE_CODES = frozenset({20429})


@dataclass(frozen=True)
class OutgoingSMS:
    """One message to hand to Twilio."""

    to: str
    body: str
    from_: str | None = None
    messaging_service_sid: str | None = None
    status_callback: str | None = None


@dataclass(frozen=True)
class SendResult:
    sid: str
    status: str


class GatewayError(Exception):
    """A send failed; ``retryable`` says whether trying again can help, ``timed_out`` whether
    Twilio did not answer in time (the outcome of the send is then unknown)."""

    def __init__(
        self, message: str, *, code: int | None, retryable: bool, timed_out: bool = False
    ) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable
        self.timed_out = timed_out


def classify_twilio_error(exc: Exception) -> GatewayError:
    """Map anything the twilio client raises to a GatewayError with the right retry verdict."""
    if isinstance(exc, TwilioRestException):
        code = exc.code
        status = exc.status or 0
        retryable = code in RETRYABLE_CODES or status == 429 or status >= 500
        if code in PERMANENT_CODES:
            retryable = False
        return GatewayError(exc.msg or str(exc), code=code or status or None, retryable=retryable)
    if isinstance(exc, (requests.Timeout, requests.ConnectionError)):
        reason = f"Twilio did not answer: {type(exc).__name__}"
        timed_out = isinstance(exc, requests.Timeout)
        return GatewayError(reason, code=None, retryable=True, timed_out=timed_out)
    return GatewayError(f"Twilio client error: {exc}", code=None, retryable=False)


class Gateway(ABC):
    """Sends one SMS with a project's Twilio credentials."""

    @abstractmethod
    def send(self, account_sid: str, auth_token: str, message: OutgoingSMS) -> SendResult:
        """Hand the message over; raises GatewayError."""


def _settle_environment(session: requests.Session, origin: str) -> None:
    """Read the environment's proxy and CA-bundle settings once, for ``origin``.

    requests looks them up again on every call (``trust_env``), about a millisecond of a send
    job's CPU; they do not change while the process runs.
    """
    session.proxies.update(requests.utils.get_environ_proxies(origin))
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle
    session.trust_env = False


def _form_pairs(data: dict) -> list[tuple[str, str]]:
    """``data`` as requests encodes a form: lists repeat their key, None values are left out."""
    pairs = []
    for key, values in data.items():
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            values = [values]
        pairs.extend((key, value) for value in values if value is not None)
    return pairs


def _prepared_form(
    method: str,
    url: str,
    data: dict | None,
    session_headers: Mapping[str, str],
    headers: dict | None,
    auth: tuple[str, str] | None,
) -> requests.PreparedRequest:
    """The request ``requests.Request(...).prepare()`` builds for a form POST (or a bare GET) to
    a URL the twilio client made, without its generic checks (URL parsing and re-quoting, typing
    protocol checks of every argument: ~0.2 ms of CPU per send)."""
    prepared = requests.PreparedRequest()
    prepared.method = method
    prepared.url = url
    prepared.headers = requests.structures.CaseInsensitiveDict(session_headers)
    prepared.headers.update(headers or {})
    prepared._cookies = None
    prepared.hooks = {"response": []}
    prepared._body_position = None
    if data:
        body = urllib.parse.urlencode(_form_pairs(data), doseq=True)
        prepared.body = body
        prepared.headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        prepared.headers["Content-Length"] = str(len(body.encode()))
    else:
        prepared.body = None
        if method not in ("GET", "HEAD"):
            prepared.headers["Content-Length"] = "0"
    if auth:
        prepared.headers["Authorization"] = requests.auth._basic_auth_str(*auth)
    return prepared


class _DirectHttpClient(TwilioHttpClient):
    """The twilio client's HTTP client, minus the per-call work a send does not need.

    ``TwilioHttpClient.request`` goes through ``Session.prepare_request`` and ``Session.send``:
    merging session settings, cookies and hooks, reading the environment's proxy settings again
    (read once here, see :func:`_settle_environment`), and formatting the request and response
    log lines whether logging is on or not — about half of a send job's own CPU. This one prepares
    the same request (headers, Basic auth, form body), sends it through the session's adapter
    (the same pooled, kept-alive urllib3 connection, TLS verification and proxies), and logs only
    when ``twilio.http_client`` logs at INFO. ``base_url`` sends to another origin (the emulator).
    """

    def __init__(self, base_url: str | None, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self._base_url = base_url.rstrip("/") if base_url else None
        _settle_environment(self.session, self._base_url or TWILIO_API_ORIGIN)

    def request(
        self,
        method: str,
        url: str,
        params: dict | None = None,
        data: dict | None = None,
        headers: dict | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Response:
        if timeout is None:
            timeout = self.timeout
        elif timeout <= 0:
            raise ValueError(timeout)
        if self._base_url and url.startswith(TWILIO_API_ORIGIN):
            url = self._base_url + url[len(TWILIO_API_ORIGIN) :]
        kwargs = {"method": method.upper(), "url": url, "params": params, "headers": headers}
        logs = self.logger.isEnabledFor(logging.INFO)
        if logs:
            self.log_request({**kwargs, "auth": auth})
        session = self.session
        json_body = "json" in (headers or {}).get("Content-Type", "")
        if params or json_body:
            # Not a send (queries, JSON APIs): requests prepares it in full, as the base class.
            kwargs["json" if json_body else "data"] = data
            prepared = session.prepare_request(requests.Request(auth=auth, **kwargs))
        else:
            prepared = _prepared_form(kwargs["method"], url, data, session.headers, headers, auth)
        answer = session.get_adapter(prepared.url).send(
            prepared,
            timeout=timeout,
            proxies=session.proxies,
            verify=session.verify,
            cert=session.cert,
            stream=False,
        )
        if allow_redirects and answer.is_redirect:  # the twilio client never asks for it
            answer = session.send(prepared, timeout=timeout, allow_redirects=True)
        if logs:
            self.log_response(answer.status_code, answer)
        self._test_only_last_response = Response(answer.status_code, answer.text, answer.headers)
        return self._test_only_last_response


class TwilioGateway(Gateway):
    """Sends through the real ``twilio`` client; ``base_url`` points it at an emulator."""

    def __init__(self, base_url: str | None = None, timeout: float = 10.0) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self._clients: dict[tuple[str, str], Client] = {}
        self._lock = threading.Lock()

    def _client(self, account_sid: str, auth_token: str) -> Client:
        # One client per credential pair: it keeps its HTTP session (connection reuse) across sends.
        key = (account_sid, auth_token)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                http = _DirectHttpClient(self.base_url, self.timeout)
                client = Client(account_sid, auth_token, http_client=http)
                # The client reads TWILIO_REGION/TWILIO_EDGE from the environment and rewrites the
                # host with them (api.ie1.twilio.com), past our base URL: pin both to None.
                client.region = None
                client.edge = None
                self._clients[key] = client
            return client

    def send(self, account_sid: str, auth_token: str, message: OutgoingSMS) -> SendResult:
        params = {"to": message.to, "body": message.body}
        if message.messaging_service_sid:
            params["messaging_service_sid"] = message.messaging_service_sid
        if message.from_:
            params["from_"] = message.from_
        if message.status_callback:
            params["status_callback"] = message.status_callback
        try:
            created = self._client(account_sid, auth_token).messages.create(**params)
        except (TwilioException, requests.RequestException) as exc:
            raise classify_twilio_error(exc) from exc
        return SendResult(sid=created.sid, status=created.status or "queued")


class OutboxGateway(Gateway):
    """Records messages instead of sending them (``polysms.outbox`` in tests)."""

    def __init__(self) -> None:
        self.outbox: list[dict] = []
        self._lock = threading.Lock()

    def send(self, account_sid: str, auth_token: str, message: OutgoingSMS) -> SendResult:
        sid = "SM" + uuid.uuid4().hex
        with self._lock:
            self.outbox.append(
                {
                    "to": message.to,
                    "from": message.from_,
                    "messaging_service_sid": message.messaging_service_sid,
                    "body": message.body,
                    "sid": sid,
                    "status_callback": message.status_callback,
                }
            )
        return SendResult(sid=sid, status="queued")


def create_gateway(name: str, *, base_url: str | None, timeout: float) -> Gateway:
    if name == "outbox":
        return OutboxGateway()
    return TwilioGateway(base_url=base_url, timeout=timeout)
