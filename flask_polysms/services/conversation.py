"""``conv``: what the host app's agent sees of a session, and what it can do with it."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from ..media import check_media_urls
from ..phone import validate_e164
from ..records import END_AGENT, Message, Session
from .lifecycle import note_activity
from .operators import end_session, hand_off
from .session_writes import update_with_retry

if TYPE_CHECKING:
    from .state import PolySMSState


def message_dict(message: Message) -> dict[str, Any]:
    """A message as the agent's code and the API see it."""
    return {
        "id": message.id,
        "direction": message.direction,
        "kind": message.kind,
        "body": message.body,
        "to": message.to,
        "from": message.from_ or message.messaging_service_sid,
        "status": message.status,
        "error_code": message.error_code,
        "error_message": message.error_message,
        "twilio_sid": message.twilio_sid,
        "segments": message.segments,
        "encoding": message.encoding,
        "template": message.template,
        "created_at": message.created_at,
        "attempts": message.attempts,
        "last_error": last_error(message),
        "media": [dict(item) for item in message.media],
        "send_at": message.send_at,
    }


def last_error(message: Message) -> dict[str, Any] | None:
    """The message's last failed send attempt as ``{"code", "message", "at"}`` (``code`` None
    for a timeout or a failure before Twilio was called), None when no attempt failed. Kept
    after a later attempt succeeded."""
    if message.last_error_at is None:
        return None
    return {
        "code": message.last_error_code,
        "message": message.last_error_message,
        "at": message.last_error_at,
    }


class Conversation:
    """One SMS session, as the agent's code uses it (the product's ``conv`` object)."""

    channel_type = "sms"

    def __init__(self, state: PolySMSState, session: Session) -> None:
        self._state = state
        self._session = session
        self.id = session.id
        self.project_id = session.project_id
        self.env = session.environment
        self.caller_number = session.user_number
        self.agent_number = session.agent_number
        self.language = session.language
        #: Persisted with the session after the agent returns (``{{vrbl:ID}}`` reads it).
        self.state: dict[str, Any] = copy.deepcopy(session.data)
        #: Entities for ``{{entity:name}}``.
        self.entities: dict[str, Any] = copy.deepcopy(session.entities)
        self._saved_state = copy.deepcopy(session.data)
        self._saved_entities = copy.deepcopy(session.entities)
        #: The pictures of the user message being answered (``{"url", "content_type"}`` each);
        #: ``[]`` for a text alone, and outside a turn.
        self.attachments: list[dict[str, Any]] = []

    @property
    def variant(self) -> dict[str, Any]:
        """Variant attributes for ``${attribute}``, set per project and environment."""
        project = self._state.store.get_project(self.project_id)
        variants = (project.settings.get("variants") or {}) if project else {}
        return dict(variants.get(self.env) or {})

    @property
    def history(self) -> list[dict[str, Any]]:
        """Every message of the session, the outbound greeting first."""
        return [message_dict(m) for m in self._state.store.list_messages(self.id)]

    def send_sms(
        self,
        to_number: str,
        from_number: str,
        content: str,
        retry_count: int | None = None,
        media_urls: list[str] | None = None,
    ) -> dict[str, Any]:
        """Send a free-form SMS (an MMS with ``media_urls``: 1 to 10 ``https://`` URLs of
        pictures); returns the queued message. A send to an opted-out pair is suppressed and still
        returns success (``status`` is ``suppressed``)."""
        from .sending import queue_message

        if media_urls is not None:
            media_urls = check_media_urls(media_urls)
        to_number = validate_e164(to_number)
        sender = self._state.store.get_sender(from_number)
        if sender is None or sender.project_id != self.project_id:
            raise ValueError(f"{from_number!r} is not a sender provisioned for this project")
        if not isinstance(content, str) or not content or len(content) > 1600:
            raise ValueError("content must be 1 to 1600 characters")
        if retry_count is not None and (
            not isinstance(retry_count, int) or isinstance(retry_count, bool) or retry_count < 0
        ):
            raise ValueError("retry_count must be a whole number, 0 or more")
        message = queue_message(
            self._state,
            project_id=self.project_id,
            environment=self.env,
            session=self._session,
            kind="agent",
            body=content,
            to=to_number,
            sender=from_number,
            max_attempts=None if retry_count is None else 1 + retry_count,
            media_urls=media_urls,
        )
        note_activity(self._state, self.id, user_reply=False)
        return self._current(message)

    def send_sms_template(
        self, to_number: str, template: str, retry_count: int | None = None
    ) -> dict[str, Any]:
        """Send a template by title (``<title>_<conv.language>`` first when it exists); the sender
        is the template's for this environment. Returns the queued (or failed) message."""
        from .templates import send_template

        self.save()
        message = send_template(
            self._state,
            self._session,
            validate_e164(to_number),
            template,
            variant=self.variant,
            entities=self.entities,
            variables=self.state,
            retry_count=retry_count,
        )
        note_activity(self._state, self.id, user_reply=False)
        return self._current(message)

    def end(self) -> None:
        """Close the session now (``end_reason`` ``agent``)."""
        self.save()
        end_session(self._state, self.id, END_AGENT)

    def handoff(self, reason: str | None = None) -> None:
        """Hand the conversation to a person: the agent is not given the user's next messages,
        and the inactivity warning and close wait, until ``POST .../resume``. A reply returned
        by this turn is still sent."""
        self.save()
        hand_off(self._state, self.id, reason)

    def reply(self, text: str) -> dict[str, Any]:
        """Send ``text`` to the user from the session's agent number."""
        return self.send_sms(self.caller_number, self.agent_number, text)

    def save(self) -> None:
        """Persist ``state`` and ``entities`` if the agent changed them."""
        if self.state == self._saved_state and self.entities == self._saved_entities:
            return
        data, entities = copy.deepcopy(self.state), copy.deepcopy(self.entities)
        update_with_retry(self._state, self.id, lambda s: {"data": data, "entities": entities})
        self._saved_state, self._saved_entities = data, entities

    def _current(self, message: Message) -> dict[str, Any]:
        # With an inline scheduler the send already ran: report the message as it is now.
        return message_dict(self._state.store.get_message(message.id) or message)
