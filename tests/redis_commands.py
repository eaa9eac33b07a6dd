"""Counting what this test process sends to Redis (the server is shared with other test runs, so
its own command statistics cannot tell one client from another)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis.connection


@contextmanager
def sent_to_redis(monkeypatch) -> Iterator[list[bytes]]:
    """Within the block, each command (or pipeline) this process sends, as the bytes sent."""
    sent: list[bytes] = []
    send = redis.connection.Connection.send_packed_command

    def counted(connection, command, *args, **kwargs):
        sent.append(command if isinstance(command, bytes) else b"".join(command))
        return send(connection, command, *args, **kwargs)

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counted)
    try:
        yield sent
    finally:
        monkeypatch.undo()
