"""A local Twilio Messages API: the real ``twilio`` client talks to it over HTTP.

Nothing in this project mocks Twilio at the Python level. :class:`TwilioEmulator` is a small HTTP
server on 127.0.0.1 that answers ``POST/GET /2010-04-01/Accounts/{AccountSid}/Messages.json`` and
``GET .../Messages/{Sid}.json`` as Twilio does (Basic auth, the same validation codes, the same
error JSON), lets a test inject the failures Twilio produces (429, 5xx, permanent 4xx, a hang
longer than the client's timeout) and posts signed status callbacks (``sent`` then ``delivered``,
or ``undelivered``/``failed`` with an ``ErrorCode``), optionally twice or out of order.

The real client is pointed at it by ``client.api.base_url = emulator.base_url`` (every URL of the
``api`` domain, paging links included, is built from that attribute by
``twilio.base.domain.Domain.absolute_url``), with ``client.region`` and ``client.edge`` set to
None so ``TWILIO_REGION``/``TWILIO_EDGE`` cannot rewrite the host. :meth:`TwilioEmulator.client`
returns such a client. Run standalone with
``python -m flask_polysms.emulator --port 8999 --account ACxxx:token``.

One module per idea: the class in :mod:`.twilio_emulator`, its Messages API in
:mod:`.emulator_api`, its status callbacks in :mod:`.emulator_callbacks`, its HTTP server in
:mod:`.emulator_server`, Twilio's wire formats in :mod:`.emulator_wire`; this module keeps the
address and runs the command line.
"""

from __future__ import annotations

import argparse
import signal
import threading

from .emulator_wire import error_body
from .twilio_emulator import TwilioEmulator

__all__ = ["TwilioEmulator", "error_body", "main"]


def _account_arg(value: str) -> tuple[str, str]:
    account_sid, sep, token = value.partition(":")
    if not sep or not account_sid or not token:
        raise argparse.ArgumentTypeError("expected ACCOUNT_SID:AUTH_TOKEN")
    return account_sid, token


def main(argv: list[str] | None = None) -> None:
    """Serve in the foreground until SIGINT or SIGTERM, then stop cleanly (for demos)."""
    parser = argparse.ArgumentParser(
        prog="python -m flask_polysms.emulator",
        description="A local Twilio Messages API for the real twilio client.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8999)
    parser.add_argument(
        "--account",
        action="append",
        type=_account_arg,
        required=True,
        metavar="ACCOUNT_SID:AUTH_TOKEN",
        help="an account the emulator accepts (repeat for more)",
    )
    parser.add_argument("--duplicate-callbacks", action="store_true")
    parser.add_argument("--shuffle-callbacks", action="store_true")
    parser.add_argument("--callback-delay", type=float, default=0.5, metavar="SECONDS")
    parser.add_argument(
        "--callbacks",
        choices=["auto", "manual"],
        default="auto",
        help="manual: status callbacks are queued, never posted (benchmarks of the sender alone)",
    )
    args = parser.parse_args(argv)
    emulator = TwilioEmulator(
        args.host,
        args.port,
        callbacks=args.callbacks,
        duplicate_callbacks=args.duplicate_callbacks,
        shuffle_callbacks=args.shuffle_callbacks,
        callback_delay=args.callback_delay,
    )
    for account_sid, token in args.account:
        emulator.add_account(account_sid, token)
    stopped = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stopped.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    emulator.start()
    print(f"Twilio emulator on {emulator.base_url} (Ctrl-C to stop)", flush=True)
    try:
        # A bounded wait: a signal that lands on a server thread is only handled when the main
        # thread wakes, and an unbounded wait would never wake.
        while not stopped.wait(0.2):
            pass
    finally:
        emulator.stop()


if __name__ == "__main__":
    main()
