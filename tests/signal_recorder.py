"""A receiver of every ``flask_polysms.signals`` signal of one app, recording what it got."""

from __future__ import annotations

from collections import defaultdict

from flask_polysms import signals

ALL_SIGNALS = (
    "message_received",
    "message_status_changed",
    "opted_out",
    "opted_in",
    "conversation_opened",
    "conversation_closed",
    "handoff_requested",
)


class Recorder:
    """Connected to every signal for one app: ``calls[name]`` is a list of (sender, kwargs)."""

    def __init__(self, app) -> None:
        self.app = app
        self.calls: dict[str, list] = defaultdict(list)
        self._receivers = []
        for name in ALL_SIGNALS:

            def receive(sender, _name=name, **kwargs):
                self.calls[_name].append((sender, kwargs))

            self._receivers.append(receive)
            getattr(signals, name).connect(receive, sender=app)

    def disconnect(self) -> None:
        for name, receive in zip(ALL_SIGNALS, self._receivers, strict=True):
            getattr(signals, name).disconnect(receive)

    def kwargs(self, name: str) -> list[dict]:
        """The keyword arguments of each ``name`` signal received, in order; sent by the app."""
        assert all(sender is self.app for sender, _ in self.calls[name])
        return [kwargs for _, kwargs in self.calls[name]]

    def counts(self) -> dict[str, int]:
        """How many of each signal were received (only those received at least once)."""
        return {name: len(calls) for name, calls in self.calls.items() if calls}

    def clear(self) -> None:
        self.calls.clear()
