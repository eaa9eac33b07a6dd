"""RQ worker classes whose exit takes bounded time."""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import signal
import threading
import time
from typing import Any

log = logging.getLogger("flask_polysms.scheduler")


#: Seconds the command listener waits on Redis per round: the longest a stopping worker waits
#: for it (RQ's own listener waits 60 s in rq 3.0, without end in rq 2.x).
COMMAND_POLL = 1.0
#: Seconds a stopping worker gives its scheduler process to end after SIGTERM, then after SIGKILL.
SCHEDULER_STOP_TIMEOUT = 5.0
#: Seconds a scheduler process whose worker died gets to stop by itself before it exits hard.
ORPHAN_GRACE = 10.0
#: The name RQScheduler.start() gives its process (rq 2.x and 3.0).
RQ_SCHEDULER_PROCESS = "Scheduler"


class CommandListener(threading.Thread):
    """Reads the commands RQ sends a worker (``rq`` shutdown, kill-horse, stop-job) on its PubSub
    channel and hands them to the worker; stops in bounded time.

    RQ's own listener (redis-py's ``PubSubWorkerThread``) cannot: since redis-py 8.2 its
    ``stop()`` waits for the thread with no timeout, and a thread that read the UNSUBSCRIBE
    confirmation before the stop flag was set waits for a new subscription for RQ's whole poll
    time. Here the flag is set before UNSUBSCRIBE and every wait lasts at most COMMAND_POLL.
    """

    def __init__(self, pubsub: Any, worker_name: str) -> None:
        super().__init__(name=f"rq-commands-{worker_name}", daemon=True)
        self.pubsub = pubsub
        self._stopping = threading.Event()

    def run(self) -> None:
        from redis.exceptions import ConnectionError as RedisConnectionError

        while not self._stopping.is_set():
            try:
                self.pubsub.get_message(ignore_subscribe_messages=True, timeout=COMMAND_POLL)
            except RedisConnectionError as exc:
                if self._stopping.is_set():
                    return
                # redis-py connects and subscribes again on the next read
                log.warning("RQ command listener: Redis unreachable, retrying: %s", exc)
                self._stopping.wait(COMMAND_POLL)
            except Exception:  # a bad command must not end the listening
                log.exception("RQ command listener: a command failed")
                self._stopping.wait(COMMAND_POLL)

    def stop(self, timeout: float = 5 * COMMAND_POLL) -> None:
        """Stop listening and close the PubSub connection; waits at most ``timeout`` seconds."""
        from redis.exceptions import RedisError

        self._stopping.set()
        try:
            # The confirmation wakes a reader waiting on the socket; it then sees the flag.
            self.pubsub.unsubscribe()
        except RedisError:
            pass  # closing the connection below ends the subscription as well
        self.join(timeout)
        if not self.is_alive():  # never close a socket a reader still uses
            self.pubsub.close()


class BoundedExit:
    """Mixin for RQ worker classes (listed before them): the worker's exit takes bounded time,
    and the scheduler process of ``work(with_scheduler=True)`` never outlives the worker.

    - Commands are read by :class:`CommandListener`, which stops within seconds.
    - At teardown the scheduler process gets SIGTERM, then SIGKILL after
      SCHEDULER_STOP_TIMEOUT (RQ waits for it without end).
    - A scheduler process whose worker died without a teardown (SIGKILL, the OOM killer) stops
      by itself, as if the worker had sent it SIGTERM.
    """

    def work(self, *args: Any, **kwargs: Any) -> bool:
        """RQ's ``work``; the processes it forks meanwhile (its scheduler) stop when it dies."""
        global _watch_forks
        _register_fork_watch()
        _watch_forks = True
        try:
            return super().work(*args, **kwargs)
        finally:
            _watch_forks = False

    def subscribe(self) -> None:
        """Listen for RQ's commands to this worker."""
        pubsub = self.connection.pubsub()
        pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub = pubsub
        self.pubsub_thread = CommandListener(pubsub, self.name)
        self.pubsub_thread.start()

    def unsubscribe(self) -> None:
        """Stop listening for commands, within seconds."""
        listener, self.pubsub_thread = self.pubsub_thread, None
        if isinstance(listener, CommandListener):
            listener.stop()
        elif listener is not None:  # not ours: RQ's own way
            super().unsubscribe()

    def stop_scheduler(self) -> None:
        """Stop the scheduler process: SIGTERM, then SIGKILL if it has not ended in time."""
        found = False
        for child in multiprocessing.active_children():
            if child.name != RQ_SCHEDULER_PROCESS:
                continue
            found = True
            child.terminate()
            child.join(SCHEDULER_STOP_TIMEOUT)
            if child.is_alive():
                log.warning("RQ scheduler process %s ignored SIGTERM: killing it", child.pid)
                child.kill()
                child.join(SCHEDULER_STOP_TIMEOUT)
        if not found:
            # None running (burst mode enqueues scheduled jobs in the worker itself), or RQ
            # renamed the process: then RQ's own way.
            super().stop_scheduler()


@functools.cache
def worker_class(fork: bool = False) -> type:
    """The RQ worker class ``flask polysms worker`` runs, with :class:`BoundedExit`: RQ's
    ``SimpleWorker`` (jobs run in the worker's process), or with ``fork`` its ``Worker`` (a work
    horse forked per job)."""
    from rq import SimpleWorker, Worker

    base = Worker if fork else SimpleWorker
    name = f"Bounded{base.__name__}"
    return type(name, (BoundedExit, base), {"__module__": __name__, "__qualname__": name})


# Set while a BoundedExit worker runs: the multiprocessing children it forks (RQ's scheduler)
# watch it and stop when it dies.
_watch_forks = False
_fork_watch_registered = False


def _register_fork_watch() -> None:
    global _fork_watch_registered
    # Windows has no fork (nor register_at_fork): nothing is forked there to watch.
    if not _fork_watch_registered and hasattr(os, "register_at_fork"):
        _fork_watch_registered = True
        os.register_at_fork(after_in_child=_after_fork_in_child)


def _after_fork_in_child() -> None:
    global _watch_forks
    if _watch_forks:
        _watch_forks = False  # the child's own children are not watched
        threading.Thread(target=_stop_with_parent, name="polysms-parent-watch", daemon=True).start()


def _stop_with_parent() -> None:
    """In a child forked by a worker: SIGTERM this process once the worker has died.

    Only multiprocessing children (RQ's scheduler) are watched: a work horse, forked with
    ``os.fork``, has no ``parent_process()`` and finishes its job, as RQ designed it.
    """
    parent = None
    for _ in range(50):  # the fork returns before multiprocessing records the parent
        parent = multiprocessing.parent_process()
        if parent is not None:
            break
        time.sleep(0.1)
    if parent is None:
        return
    if parent.pid != os.getppid() and parent.is_alive():
        return  # a plain fork inside a process multiprocessing started: not ours to watch
    parent.join()  # returns once the parent process has exited
    log.warning("the RQ worker %s has died: stopping its scheduler process", parent.pid)
    os.kill(os.getpid(), signal.SIGTERM)  # the scheduler stops within its interval (1 s)
    time.sleep(ORPHAN_GRACE)
    os._exit(1)  # still here: it had no SIGTERM handler of its own yet
