"""One conversation at a time: the open session of a user and number (a unique key decides two
first messages at once), and the claim on a session's agent turn (a conditional update with an
expiry, so a crashed worker's claim is taken over)."""

from __future__ import annotations

from datetime import datetime

import peewee as pw

from flask_polysms.records import INBOUND, RECEIVED, Message, Session

from .statements import StatementRunner, _is_open_clash, _record, _values

# Tries of an open_session whose clash found no winner (it closed in between).
_OPEN_TRIES = 5


class TurnRecords(StatementRunner):
    """The store's open-session check-and-insert and its turn claims."""

    def open_session(self, session: Session) -> tuple[Session, bool]:
        """Record ``session`` marked as its triple's open one unless another holds the mark (the
        unique key ``session_one_open``); on a clash, the session that won."""
        S = self._m.Session
        triple = (session.project_id, session.user_number, session.agent_number)
        for _ in range(_OPEN_TRIES):
            found = self.find_open_session(*triple)  # type: ignore[attr-defined]
            if found is not None:
                return found, False
            try:
                # In a savepoint inside the caller's transaction: the clash is ours to handle.
                self._insert(S, {**_values(session), "open_mark": 1}, may_fail=True)
            except pw.IntegrityError as exc:
                if not _is_open_clash(exc):
                    raise
                winner = self._open_now(*triple)
                if winner is not None:
                    return winner, False
                continue
            return self._roundtrip(S, Session, session), True
        raise RuntimeError(f"no open session could be recorded for {triple}")

    def _open_now(self, project_id: str, user_number: str, agent_number: str) -> Session | None:
        """The session holding the triple's open mark. The clashing insert waited for its
        winner to commit, and each statement reads what is committed when it starts (MySQL
        connections read committed, as PostgreSQL does; SQLite has one writer at a time)."""
        S = self._m.Session
        row = self._first(
            S.select().where(
                (S.project_id == project_id)
                & (S.user_number == user_number)
                & (S.agent_number == agent_number)
                & (S.open_mark == 1)
            )
        )
        return _record(Session, row) if row else None

    def claim_turn(self, session_id: str, owner: str, now: datetime, until: datetime) -> bool:
        """One conditional update: the turn is ours if free, ours already, or run out."""
        S = self._m.Session
        query = S.update({S.turn_owner: owner, S.turn_until: until}).where(
            (S.id == session_id)
            & (S.turn_owner.is_null() | (S.turn_owner == owner) | (S.turn_until < now))
        )
        return self._atomically(query.execute, one_statement=True) > 0

    def release_turn(self, session_id: str, owner: str) -> bool:
        """Clear the claim if ``owner`` holds it."""
        S = self._m.Session
        query = S.update({S.turn_owner: None, S.turn_until: None}).where(
            (S.id == session_id) & (S.turn_owner == owner)
        )
        return self._atomically(query.execute, one_statement=True) > 0

    def waiting_turn_messages(self, session_id: str, limit: int = 100) -> list[Message]:
        """The session's inbound ``received`` messages in recording order (the message_session
        index)."""
        M = self._m.Message
        query = (
            M.select()
            .where((M.session_id == session_id) & (M.status == RECEIVED) & (M.direction == INBOUND))
            .order_by(M.seq)
            .limit(limit)
        )
        return [_record(Message, row) for row in query.dicts()]
