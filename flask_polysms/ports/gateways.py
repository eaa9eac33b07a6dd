"""The Gateway port: hands one message to Twilio (or to the test outbox) and says what happened."""

from __future__ import annotations

import logging
import os
import threading
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime

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
    #: Pictures to send with it (an MMS): Twilio's ``MediaUrl``, one per URL.
    media_urls: tuple[str, ...] = ()


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

    def find_sent(
        self, account_sid: str, auth_token: str, message: OutgoingSMS, since: datetime
    ) -> list[SendResult]:
        """The messages the gateway holds that an earlier send of ``message`` (made after
        ``since``) may have created, oldest first; raises GatewayError. This default knows of
        none."""
        return []


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


class BaseUrlHttpClient(TwilioHttpClient):
    """The twilio client's own HTTP client (its session, pooled connections, timeout and log
    lines), sending to another origin than Twilio's (the local emulator) when ``base_url`` is
    given.

    A request is prepared by requests itself (``PreparedRequest.prepare``: URL, headers, form or
    JSON body, Basic auth) and sent through the session's adapter, with the session's headers,
    proxies and TLS settings. What ``Session.request`` adds on every call is left out, as a call
    to Twilio's API needs none of it: merging cookies and hooks, reading the environment's proxy
    and CA-bundle settings again (read once, see :func:`_settle_environment`), following
    redirects (the twilio client never asks to). A third of a send's CPU in the twilio client.
    """

    def __init__(self, base_url: str | None, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self.base_url = base_url.rstrip("/") if base_url else None
        _settle_environment(self.session, self.base_url or TWILIO_API_ORIGIN)

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
        """Send as ``TwilioHttpClient.request`` does, to ``base_url`` instead of Twilio's
        origin; the same answer (``twilio.http.response.Response``) and the same log lines."""
        if self.base_url and url.startswith(TWILIO_API_ORIGIN):
            url = self.base_url + url[len(TWILIO_API_ORIGIN) :]
        if allow_redirects:  # never asked by the twilio client: the session's full path
            return super().request(
                method, url, params, data, headers, auth, timeout, allow_redirects=True
            )
        if timeout is None:
            timeout = self.timeout
        elif timeout <= 0:
            raise ValueError(timeout)
        body = {"json" if _is_json(headers) else "data": data}
        logs = self.logger.isEnabledFor(logging.INFO)
        if logs:
            self.log_request(
                {
                    "method": method.upper(),
                    "url": url,
                    "params": params,
                    "headers": headers,
                    "auth": auth,
                    **body,
                }
            )
        session = self.session
        prepared = requests.PreparedRequest()
        # The session's headers first, the call's over them, as the session merges them.
        prepared.prepare(
            method=method.upper(),
            url=url,
            headers={**session.headers, **(headers or {})},
            params=params,
            auth=auth,
            **body,
        )
        answer = session.get_adapter(prepared.url).send(
            prepared,
            stream=False,
            timeout=timeout,
            verify=session.verify,
            cert=session.cert,
            proxies=session.proxies,
        )
        if logs:
            self.log_response(answer.status_code, answer)
        return Response(answer.status_code, answer.text, answer.headers)


def _is_json(headers: dict | None) -> bool:
    """Whether the twilio client sends ``data`` as JSON (as ``TwilioHttpClient`` decides)."""
    content_type = (headers or {}).get("Content-Type")
    return content_type in ("application/json", "application/scim+json")


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
                http = BaseUrlHttpClient(self.base_url, self.timeout)
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
        if message.media_urls:
            params["media_url"] = list(message.media_urls)
        try:
            created = self._client(account_sid, auth_token).messages.create(**params)
        except (TwilioException, requests.RequestException) as exc:
            raise classify_twilio_error(exc) from exc
        return SendResult(sid=created.sid, status=created.status or "queued")

    def find_sent(
        self, account_sid: str, auth_token: str, message: OutgoingSMS, since: datetime
    ) -> list[SendResult]:
        """Twilio's messages to the same recipient from the same sender with the same body,
        created after ``since``: first those sent since then (``DateSent>``), then the newest
        page, for those still queued (a message has no ``date_sent`` until it leaves).

        Twilio's message resource does not show the StatusCallback it was given, so the body,
        recipient, sender and time are what can be compared.
        """
        messages = self._client(account_sid, auth_token).messages
        query = {"to": message.to}
        if message.from_:
            query["from_"] = message.from_
        try:
            found = messages.list(date_sent_after=since, page_size=LIST_PAGE, **query)
            found += messages.list(limit=LIST_PAGE, page_size=LIST_PAGE, **query)
        except (TwilioException, requests.RequestException) as exc:
            raise classify_twilio_error(exc) from exc
        matches: dict[str, SendResult] = {}
        for item in sorted(found, key=lambda m: m.date_created or since):
            if (
                item.body == message.body
                and item.direction == "outbound-api"
                and (item.date_created is None or item.date_created >= since)
                and (
                    message.messaging_service_sid is None
                    or item.messaging_service_sid == message.messaging_service_sid
                )
            ):
                matches.setdefault(item.sid, SendResult(sid=item.sid, status=item.status))
        return list(matches.values())


#: Messages read per page when looking for an earlier send (one recipient, one sender, minutes).
LIST_PAGE = 50


class OutboxGateway(Gateway):
    """Records messages instead of sending them (``polysms.outbox`` in tests)."""

    def __init__(self) -> None:
        self.outbox: list[dict] = []
        self._lock = threading.Lock()

    def send(self, account_sid: str, auth_token: str, message: OutgoingSMS) -> SendResult:
        # Twilio's MMS SIDs start with MM.
        sid = ("MM" if message.media_urls else "SM") + uuid.uuid4().hex
        with self._lock:
            self.outbox.append(
                {
                    "to": message.to,
                    "from": message.from_,
                    "messaging_service_sid": message.messaging_service_sid,
                    "body": message.body,
                    "sid": sid,
                    "status_callback": message.status_callback,
                    "media_urls": list(message.media_urls),
                }
            )
        return SendResult(sid=sid, status="queued")


def create_gateway(name: str, *, base_url: str | None, timeout: float) -> Gateway:
    if name == "outbox":
        return OutboxGateway()
    return TwilioGateway(base_url=base_url, timeout=timeout)
