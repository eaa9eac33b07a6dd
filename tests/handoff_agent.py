"""The host app's agent of the handoff tests: hands the conversation to a person when the user
asks for one (``trigger``), else answers with ``reply`` (a ``str.format`` pattern of ``text``);
records every text it was given."""

from __future__ import annotations

HANDOFF_REASON = "the user asked for a person"
HANDOFF_ANSWER = "Connecting you to a person."


class HandoffAgent:
    def __init__(self, trigger: str, reply: str) -> None:
        self.trigger = trigger
        self.reply = reply
        self.texts: list[str] = []

    def __call__(self, conv, text):
        self.texts.append(text)
        if text == self.trigger:
            conv.handoff(reason=HANDOFF_REASON)
            return HANDOFF_ANSWER
        return self.reply.format(text=text)
