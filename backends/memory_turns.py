"""The memory store's share of one conversation's concurrency: one open session per user and
number (checked and created under the store's lock) and the turn claim of each session."""

from __future__ import annotations

import copy
import threading
from datetime import datetime

from flask_polysms.records import CLOSED, INBOUND, RECEIVED, Message, Session


class MemoryTurns:
    """Mixin of :class:`~flask_polysms.backends.memory.MemoryStore`: it holds ``_lock``,
    ``_sessions``, ``_messages`` and ``_messages_by_session``; the claims live here."""

    _lock: threading.RLock
    _sessions: dict[str, Session]
    _messages: dict[str, Message]
    _messages_by_session: dict[str, list[str]]
    #: session id -> (owner, claimed until)
    _turns: dict[str, tuple[str, datetime]]

    def open_session(self, session: Session) -> tuple[Session, bool]:
        """Record ``session`` unless its triple has an open session: the check and the insert
        under one lock."""
        with self._lock:
            found = self.find_open_session(  # type: ignore[attr-defined]
                session.project_id, session.user_number, session.agent_number
            )
            if found is not None:
                return found, False
            if session.state == CLOSED:
                raise ValueError("open_session records an open session")
            return self.create_session(session), True  # type: ignore[attr-defined]

    def claim_turn(self, session_id: str, owner: str, now: datetime, until: datetime) -> bool:
        """Take the session's turn unless another owner holds an unexpired claim."""
        with self._lock:
            held = self._turns.get(session_id)
            if held is not None and held[0] != owner and held[1] >= now:
                return False
            self._turns[session_id] = (owner, until)
            return True

    def release_turn(self, session_id: str, owner: str) -> bool:
        """Give the turn back if ``owner`` holds it."""
        with self._lock:
            held = self._turns.get(session_id)
            if held is None or held[0] != owner:
                return False
            del self._turns[session_id]
            return True

    def waiting_turn_messages(self, session_id: str, limit: int = 100) -> list[Message]:
        """The session's inbound ``received`` messages, in recording order."""
        with self._lock:
            waiting = []
            for message_id in self._messages_by_session.get(session_id, []):
                m = self._messages[message_id]
                if m.direction == INBOUND and m.status == RECEIVED:
                    waiting.append(copy.deepcopy(m))
                    if len(waiting) >= limit:
                        break
            return waiting
