"""The ids of the jobs that work on one message.

The sweep asks the broker about exactly the job a message expects (is it waiting, running on a
live worker, or lost?) instead of waiting POLYSMS_STUCK_AFTER to guess, so whoever enqueues such a
job names it with these.
"""

from __future__ import annotations

#: The job run every sweep interval by the schedulers that run on their own (thread, RQ).
SWEEP_JOB = "sweep"


def send_job_id(message_id: str, attempt: int) -> str:
    """The id of the job that makes a message's send attempt ``attempt + 1``: ``send-<id>-0``
    for its first send, ``send-<id>-N`` for the retry after attempt N (what the send job
    schedules) or the send again after a lost attempt N (what the sweep enqueues)."""
    return f"send-{message_id}-{attempt}"


def agent_job_id(message_id: str) -> str:
    """The id of the job that runs the agent's turn on one inbound message."""
    return f"agent-{message_id}"


def release_job_id(message_id: str) -> str:
    """The id of the job that releases a scheduled message to its send at its ``send_at``."""
    return f"release-{message_id}"
