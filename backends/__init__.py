"""Storage backends, chosen by the storage URL's scheme.

``memory://`` is the in-memory store; ``sqlite``, ``postgresql``, ``postgres`` and ``mysql``
URLs are served by the Peewee store. Other packages add schemes with :func:`register_backend` or
through the entry-point group ``flask_polysms.backends`` (name: scheme, value: ``module:Class``).
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from flask_polysms.ports.store import Store

ENTRY_POINT_GROUP = "flask_polysms.backends"

# Scheme -> "module:Class" (imported lazily so optional drivers load only when chosen) or a class.
_REGISTRY: dict[str, Any] = {
    "memory": "flask_polysms.backends.memory:MemoryStore",
    "sqlite": "flask_polysms.backends.peewee:PeeweeStore",
    "postgresql": "flask_polysms.backends.peewee:PeeweeStore",
    "postgres": "flask_polysms.backends.peewee:PeeweeStore",
    "mysql": "flask_polysms.backends.peewee:PeeweeStore",
}


class BackendError(Exception):
    """No backend serves a storage URL, or the chosen one cannot load."""


def register_backend(scheme: str, store_class: type[Store] | str) -> None:
    """Serve URLs of ``scheme`` with ``store_class`` (a Store subclass or ``"module:Class"``)."""
    _REGISTRY[scheme] = store_class


def _resolve(target: Any) -> type[Store]:
    if not isinstance(target, str):
        return target
    module_name, _, attr = target.partition(":")
    try:
        return getattr(import_module(module_name), attr)
    except ImportError as exc:
        raise BackendError(
            f"the backend {target} cannot be imported ({exc}); install its extra, "
            "e.g. pip install 'flask-polysms[peewee]'"
        ) from exc


def backend_for(url: str) -> type[Store]:
    """The Store class serving ``url``: registry first, then the entry-point group."""
    scheme = urlsplit(url).scheme.split("+", 1)[0]
    if not scheme:
        raise BackendError(f"POLYSMS_STORAGE_URL {url!r} has no scheme (e.g. memory://)")
    if scheme in _REGISTRY:
        return _resolve(_REGISTRY[scheme])
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name == scheme:
            return entry.load()
    known = ", ".join(sorted(_REGISTRY))
    raise BackendError(f"POLYSMS_STORAGE_URL scheme {scheme!r} has no backend (known: {known})")


def create_store(url: str, **options: Any) -> Store:
    """A Store instance for ``url``."""
    return backend_for(url)(url, **options)
