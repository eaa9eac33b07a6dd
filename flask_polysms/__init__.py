"""flask-polysms: SMS conversations for Flask apps, on Twilio."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .extension import PolySMS
    from .services.conversation import Conversation
    from .services.state import get_state
    from .web.hosting import alembic_include_name

__all__ = ["Conversation", "PolySMS", "alembic_include_name", "get_state"]
__version__ = "0.1.0"

# Imported when first used: the pytest plugin (an entry point loaded by every pytest run that has
# the package installed) imports this package, and must not cost every test run the whole of it.
_LAZY = {
    "Conversation": ".services.conversation",
    "PolySMS": ".extension",
    "get_state": ".services.state",
    "alembic_include_name": ".web.hosting",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value
