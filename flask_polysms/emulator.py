"""``python -m flask_polysms.emulator``: the local Twilio Messages API of the test kit
(:mod:`flask_polysms.testing.emulator`)."""

from __future__ import annotations

from .testing.emulator import TwilioEmulator, main

__all__ = ["TwilioEmulator", "main"]

if __name__ == "__main__":
    main()
