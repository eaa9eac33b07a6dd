"""The Twilio emulator's status callbacks: queued, arranged, signed and posted."""

from __future__ import annotations

import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from twilio.request_validator import RequestValidator

from .emulator_wire import _STATUS_RANK, API_VERSION, _now


@dataclass
class _PendingCallback:
    """One status callback waiting to be posted (or, without a URL, a status change to apply)."""

    message_sid: str
    account_sid: str
    url: str | None
    status: str
    error_code: int | None
    idempotency_token: str


class StatusCallbacks:
    """The status-callback half of :class:`~flask_polysms.testing.TwilioEmulator`."""

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
