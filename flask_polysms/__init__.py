"""flask-polysms: SMS conversations for Flask apps, on Twilio."""

from __future__ import annotations

from .conversation import Conversation
from .extension import PolySMS, get_state

__all__ = ["Conversation", "PolySMS", "get_state"]
__version__ = "0.1.0"
