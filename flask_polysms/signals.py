"""Signals the extension sends as things happen, for the host app's own code (blinker, Flask's
signal library).

Each is sent with the app as blinker's sender, once per event, after the change it reports is
committed (a rolled-back change sends nothing), and with the keyword argument ``project_id`` plus
those listed below. ``conversation`` and ``message`` are the dicts the HTTP API shows. A
receiver that raises is logged and changes nothing else::

    from flask_polysms import signals

    @signals.message_received.connect_via(app)
    def on_message(app, project_id, conversation, message):
        ...
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

#: Every inbound message recorded (keywords and dropped messages included):
#: ``conversation`` (None when the message joined no conversation), ``message``.
message_received = _signals.signal("polysms.message-received")
#: An outbound message's status changed (sent, suppressed, failed, delivered, ...): ``message``.
message_status_changed = _signals.signal("polysms.message-status-changed")
#: A user opted out of a sender: ``user_number``, ``sender_address``, ``keyword``, ``source``.
opted_out = _signals.signal("polysms.opted-out")
#: A user opted back in: ``user_number``, ``sender_address``, ``keyword``, ``source``.
opted_in = _signals.signal("polysms.opted-in")
#: A conversation was opened: ``conversation``.
conversation_opened = _signals.signal("polysms.conversation-opened")
#: A conversation was closed (whatever its ``end_reason``): ``conversation``.
conversation_closed = _signals.signal("polysms.conversation-closed")
#: A conversation was handed off to a person (``conv.handoff()`` or the API): ``conversation``.
handoff_requested = _signals.signal("polysms.handoff-requested")

__all__ = [
    "conversation_closed",
    "conversation_opened",
    "handoff_requested",
    "message_received",
    "message_status_changed",
    "opted_in",
    "opted_out",
]
