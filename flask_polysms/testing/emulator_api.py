"""The Twilio emulator's Messages API: authenticate, validate, create, fetch, list."""

from __future__ import annotations

import hashlib
import json
import secrets
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Request, Response

from flask_polysms.segments import count_segments

from .emulator_callbacks import _PendingCallback
from .emulator_wire import (
    API_VERSION,
    E164,
    ERRORS,
    MAX_BODY_CHARACTERS,
    MAX_MEDIA,
    MESSAGING_SERVICE_SID,
    _basic_credentials,
    _new_sid,
    _now,
    _rfc2822,
    error_body,
)


class MessagesApi:
    """The HTTP half of :class:`~flask_polysms.testing.TwilioEmulator`: requests to answers."""

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
            # Repeated, one per picture, as Twilio takes it.
            "media_urls": form.getlist("MediaUrl"),
        }
        with self._lock:
            fault = self._faults.popleft() if self._faults else None
        if fault is not None and fault.hang_seconds and fault.then == "drop":
            # Released early by stop(), so a test run never waits for a forgotten hang.
            self._stopping.wait(fault.hang_seconds)
            return self._error(20503, **fields)
        if fault is not None and not fault.hang_seconds:
            return self._error(fault.code, status=fault.status, message=fault.message, **fields)
        invalid = self._validate(
            fields, has_media=bool(fields["media_urls"] or form.get("ContentSid"))
        )
        if invalid is not None:
            return invalid
        created = self._store(account_sid, fields)
        if fault is not None:
            # Accepted, and only the answer is late: the message is there (listed, sent, its
            # callbacks posted) while the client waits, as when Twilio's answer is lost.
            self._schedule(created)
            self._stopping.wait(fault.hang_seconds)
            return self._json(created, 201)
        return self._json(created, 201, after=self._schedule)

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
        if len(fields["media_urls"]) > MAX_MEDIA:
            return self._error(21623)
        if any(
            urllib.parse.urlsplit(url).scheme not in ("http", "https")
            for url in fields["media_urls"]
        ):
            return self._error(21620)
        callback = fields["status_callback"]
        if callback and urllib.parse.urlsplit(callback).scheme not in ("http", "https"):
            return self._error(21609, **fields)
        return None

    def _store(self, account_sid: str, fields: dict[str, Any]) -> dict[str, Any]:
        now = _now()
        media_urls = list(fields["media_urls"])
        # An MMS has an MM SID and is one message whatever its text, as Twilio reports it.
        sid = _new_sid("MM" if media_urls else "SM")
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
            "media_urls": media_urls,
            "num_media": len(media_urls),
            "num_segments": 1 if media_urls else count_segments(fields["body"]).segments,
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
        try:
            sent_in = _date_sent_range(args)
        except ValueError:
            return self._error(20001, status=400, message="Invalid DateSent filter")
        with self._lock:
            found = [
                self._resource(m)
                for m in reversed(self._messages.values())  # Twilio lists newest first
                if m["account_sid"] == account_sid
                and args.get("To", m["to"]) == m["to"]
                and args.get("From", m["from"]) == m["from"]
                and sent_in(m["date_sent"])
            ]
        start = page * page_size
        chunk = found[start : start + page_size]
        base = f"/{API_VERSION}/Accounts/{account_sid}/Messages.json"
        filters = {k: args[k] for k in FILTERS if k in args}

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
            "num_media": str(message["num_media"]),
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
        return {
            k: list(v) if isinstance(v, list) else v
            for k, v in message.items()
            if not k.startswith("_")
        }

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


#: The list's filters, kept in its paging links.
FILTERS = ("To", "From", "DateSent", "DateSent<", "DateSent>")


def _date_sent_range(args: Any) -> Callable[[datetime | None], bool]:
    """The ``DateSent`` filters of a list request as a test of a message's ``date_sent``.

    Twilio documents dates (``YYYY-MM-DD``, a whole day in GMT) and the twilio client sends
    times (``2026-12-07T10:00:00Z``, from ``date_sent_after=``): both are read. ``DateSent>``
    keeps messages sent at or after it, ``DateSent<`` at or before it, ``DateSent`` those sent
    that day (or at that time). A message not sent yet (``date_sent`` null: still queued) has no
    date to compare and is left out by any of them.
    """
    bounds = []
    for name, compare in (
        ("DateSent>", lambda sent, low, high: sent >= low),
        ("DateSent<", lambda sent, low, high: sent < high),
        ("DateSent", lambda sent, low, high: low <= sent < high),
    ):
        if name in args:
            low, high = _date_or_time(args[name])
            bounds.append((compare, low, high))

    def sent_in(sent: datetime | None) -> bool:
        if not bounds:
            return True
        return sent is not None and all(test(sent, low, high) for test, low, high in bounds)

    return sent_in


def _date_or_time(text: str) -> tuple[datetime, datetime]:
    """A GMT day (``YYYY-MM-DD``) as [midnight, next midnight), or a time as [it, it + 1 s)."""
    if len(text) == 10:
        day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc)
        return day, day + timedelta(days=1)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment, moment + timedelta(seconds=1)
