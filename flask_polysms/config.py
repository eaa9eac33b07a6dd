"""Every configuration key of the extension in one table: its name, default, type and meaning.

The table (:data:`KEYS`) is the only list of keys: the defaults written into ``app.config``, the
checks run by ``init_app``, the reading of keys from environment variables (:func:`from_environ`)
and the configuration table of the README (:func:`markdown_table`) all come from it. Keys are
read once in ``init_app``; a bad value fails there with a message naming the key, not later in a
request.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, make_dataclass
from datetime import timedelta
from typing import Any

from limits import parse_many

from .crypto import KeyProblem, check_fernet_key, parse_keys

DEFAULT_WARNING_MESSAGE = (
    "Are you still there? This conversation will end in 10 minutes unless you reply."
)
DEFAULT_CLOSING_MESSAGE = "I am going to end conversation now"

SCHEDULERS = ("manual", "thread", "rq")
GATEWAYS = ("twilio", "outbox")

GENERATE_KEY_HINT = (
    'make one with `python -c "from cryptography.fernet import Fernet; '
    'print(Fernet.generate_key().decode())"`'
)


class ConfigError(ValueError):
    """A configuration value is unusable; the message names the key."""


# -- how each type of value is checked (``config`` is the app's config, defaults applied) -------
def _text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key} must be a non-empty string, not {value!r}")
    return value


def _optional_text(key: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    return _text(key, value)


def _duration(key: str, value: Any) -> timedelta:
    if isinstance(value, timedelta):
        result = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        result = timedelta(seconds=value)
    else:
        raise ConfigError(f"{key} must be a timedelta or a number of seconds, not {value!r}")
    if result <= timedelta(0):
        raise ConfigError(f"{key} must be positive, not {value!r}")
    return result


def _window(key: str, value: Any) -> timedelta:
    """A duration that may be zero (zero turns the feature off)."""
    if isinstance(value, timedelta):
        result = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        result = timedelta(seconds=value)
    else:
        raise ConfigError(f"{key} must be a timedelta or a number of seconds, not {value!r}")
    if result < timedelta(0):
        raise ConfigError(f"{key} must be 0 or more, not {value!r}")
    return result


def _seconds(key: str, value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{key} must be a positive number of seconds, not {value!r}")
    return float(value)


def _flag(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{key} must be True or False, not {value!r}")


def _limit(key: str, value: Any) -> str:
    try:
        parse_many(value)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{key} is not a rate limit such as '20 per second': {value!r}") from exc
    return value


def _positive_int(minimum: int) -> Callable[[str, Any], int]:
    def check(key: str, value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ConfigError(f"{key} must be an integer >= {minimum}, not {value!r}")
        return value

    return check


def _choice(*choices: str) -> Callable[[str, Any], str]:
    def check(key: str, value: Any) -> str:
        if value not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(choices)}, not {value!r}")
        return value

    return check


def _mount_path(*, empty: bool) -> Callable[[str, Any], str]:
    def check(key: str, value: Any) -> str:
        value = value or ""
        if not isinstance(value, str) or (not value and not empty):
            raise ConfigError(f"{key} must be a path such as '/sms', not {value!r}")
        if value and (not value.startswith("/") or value.endswith("/")):
            raise ConfigError(f"{key} must start with '/' and not end with it")
        return value

    return check


def _optional_mount_path(key: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    return _mount_path(empty=False)(key, value)


def _http_url(key: str, value: Any) -> str | None:
    value = _optional_text(key, value)
    if value is not None and not value.startswith(("http://", "https://")):
        raise ConfigError(f"{key} must be an http(s) URL, not {value!r}")
    return value.rstrip("/") if value else None


def _table_prefix(key: str, value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,39}", value):
        raise ConfigError(f"{key} must be a letter then letters, digits or _ (up to 40)")
    return value


def _secret(key: str, value: Any) -> str | bytes | None:
    if value is not None and not isinstance(value, (str, bytes)):
        raise ConfigError(f"{key} must be a string, not {type(value).__name__}")
    return value or None


def _as_is(key: str, value: Any) -> Any:
    return value


# -- how each type is read from an environment variable -----------------------------------------
def _env_number(text: str) -> int | float:
    number = float(text)
    return int(number) if number.is_integer() and "." not in text else number


ENV_READERS: dict[Callable, Callable[[str], Any]] = {
    _duration: _env_number,
    _window: _env_number,
    _seconds: _env_number,
    _flag: lambda text: text,  # _flag reads "true"/"false"/"1"/"0"
}


@dataclass(frozen=True)
class Key:
    """One configuration key: ``POLYSMS_`` + ``name``, its default, its check and its meaning."""

    name: str
    default: Any
    check: Callable[[str, Any], Any]
    doc: str
    #: Shown in the README instead of ``repr(default)`` when the default depends on the app.
    shown_default: str | None = None
    #: How an environment variable's text becomes a value (numbers for durations, …).
    from_env: Callable[[str], Any] | None = field(default=None, compare=False)

    @property
    def config_name(self) -> str:
        """The key in ``app.config``."""
        return f"POLYSMS_{self.name}"

    @property
    def attribute(self) -> str:
        """The attribute of :class:`Settings` holding the checked value."""
        return self.name.lower()

    def read_env(self, text: str) -> Any:
        """The value of an environment variable's ``text`` for this key."""
        reader = self.from_env
        if reader is None:
            for check, env_reader in ENV_READERS.items():
                if self.check is check:
                    reader = env_reader
                    break
        if reader is None and isinstance(self.default, int) and not isinstance(self.default, bool):
            reader = int
        try:
            return reader(text) if reader is not None else text
        except ValueError as exc:
            raise ConfigError(f"{self.config_name} from the environment: {exc}") from None


#: Every key, in the order the README lists them.
KEYS: tuple[Key, ...] = (
    Key("STORAGE_URL", "memory://", _text,
        "`memory://`, `sqlite:///file.db` (relative paths in the instance folder), "
        "`postgresql://…`, `mysql://…`"),
    Key("SCHEDULER", None, _as_is,
        "`manual` (tests), `thread` (one process), `rq` (production)",
        shown_default="`manual` when testing, else `thread`"),
    Key("REDIS_URL", None, _optional_text, "Redis for `rq` (required with it)"),
    Key("QUEUE_NAME", "polysms", _text, "the RQ queue"),
    Key("GATEWAY", "twilio", _choice(*GATEWAYS),
        "`twilio` (the real client) or `outbox` (records to `polysms.outbox`)",
        shown_default="`outbox` when testing, else `twilio`"),
    Key("TWILIO_BASE_URL", None, _optional_text,
        "send to another origin (the local emulator) instead of Twilio"),
    Key("TWILIO_TIMEOUT", 10.0, _seconds,
        "seconds before a Twilio call counts as a (retryable) timeout"),
    Key("PUBLIC_URL", None, _http_url,
        "the public origin Twilio calls (with the app's mount point): status callbacks and "
        "signature checks; required outside debug and testing unless `SERVER_NAME` is set"),
    Key("URL_PREFIX", "", _mount_path(empty=True),
        "mount every route under a prefix (starts with `/`, no trailing `/`)"),
    Key("HEALTH_ROUTES", True, _flag,
        "serve `/healthz` and `/readyz` (under `POLYSMS_URL_PREFIX`); off when the host has its "
        "own"),
    Key("METRICS_ENDPOINT", None, _optional_mount_path,
        "serve Prometheus metrics at this path, e.g. `/metrics` (under `POLYSMS_URL_PREFIX`, "
        "unauthenticated; needs the `metrics` extra); off when None"),
    Key("DASHBOARD", False, _flag, "serve the dashboard"),
    Key("DASHBOARD_URL", "/dashboard", _mount_path(empty=False),
        "where the dashboard is mounted, under `POLYSMS_URL_PREFIX`"),
    Key("DASHBOARD_IDLE_TIMEOUT", timedelta(minutes=30), _duration,
        "a dashboard sign-in unused this long ends"),
    Key("DASHBOARD_ABSOLUTE_TIMEOUT", timedelta(hours=12), _duration,
        "a dashboard sign-in ends this long after it began"),
    Key("RATE_LIMIT", "20 per second", _limit,
        "messages started per project (API, dashboard, operator routes): a `limits` string, "
        "e.g. `20 per second; 1000 per hour`"),
    Key("READ_RATE_LIMIT", "100 per second", _limit,
        "requests per project on every authenticated route"),
    Key("RATE_LIMIT_STORAGE_URL", "memory://", _text,
        "`redis://…` to share the limits between processes"),
    Key("IDLE_TIMEOUT", timedelta(hours=24), _duration,
        "silence before the warning (engaged sessions) or the silent close (unengaged ones)"),
    Key("GRACE_PERIOD", timedelta(minutes=10), _duration, "time to answer the warning"),
    Key("WARNING_MESSAGE", DEFAULT_WARNING_MESSAGE, _text, "the warning text"),
    Key("CLOSING_MESSAGE", DEFAULT_CLOSING_MESSAGE, _text, "the closing text"),
    Key("VALIDATE_SIGNATURES", True, _flag, "check `X-Twilio-Signature` on webhooks"),
    Key("ENCRYPTION_KEYS", None, _as_is,
        "Fernet keys (a list, or one comma-separated string): the first encrypts stored "
        "Twilio Auth Tokens, every one decrypts; required outside debug and testing"),
    Key("DECRYPT_WITH_SECRET_KEY", True, _flag,
        "with `POLYSMS_ENCRYPTION_KEYS` set, still open tokens stored under the `SECRET_KEY` "
        "derivation (0.1); turn off after `flask polysms rotate-keys`"),
    Key("SECRET_KEY", None, _secret,
        "debug and testing only: the Auth Token key is derived from it (default: the app's "
        "`SECRET_KEY`)"),
    Key("SEND_MAX_ATTEMPTS", 5, _positive_int(1),
        "tries for retryable Twilio errors (20429, 5xx, timeouts)"),
    Key("RETRY_BASE_DELAY", timedelta(seconds=2), _duration,
        "first retry delay, doubled each try"),
    Key("INBOUND_SENDER_LIMIT", "10 per 60 seconds", _limit,
        "inbound per user number (keywords exempt)"),
    Key("INBOUND_PROJECT_LIMIT", "100 per minute", _limit, "inbound per project"),
    Key("DUPLICATE_TEXT_LIMIT", "5 per 5 minutes", _limit,
        "the same text more often than this (the sixth in 5 minutes) blocks the number …"),
    Key("DUPLICATE_TEXT_BLOCK", timedelta(minutes=10), _duration, "… for this long"),
    Key("MERGE_WINDOW", 0, _window,
        "seconds: user messages arriving within this long of each other, before their turn "
        "starts, go to the agent as one turn, texts joined with a newline (0 = off)"),
    Key("SWEEP_INTERVAL", timedelta(seconds=60), _duration,
        "how often the `thread` scheduler runs the sweep (overdue timers, stuck messages)"),
    Key("STUCK_AFTER", timedelta(minutes=5), _duration,
        "a message `queued`/`sending` this long is re-queued by the sweep"),
    Key("SENDER_GUARD", True, _flag,
        "fail a send fast when its sender is a US long code recorded as `not_registered` for "
        "10DLC or a US/CA toll-free number recorded as `not_verified`; a sender whose state is "
        "`unknown` (the default) sends, and the compliance report flags it"),
    Key("MAX_CONTENT_LENGTH", 64 * 1024, _positive_int(1024),
        "request body cap in bytes (413 above; at least 1024)"),
    Key("TABLE_PREFIX", "polysms_", _table_prefix, "names our database tables"),
)  # fmt: skip

#: The key names as constants (``ConfigVars.STORAGE_URL == "POLYSMS_STORAGE_URL"``).
ConfigVars = type(
    "ConfigVars",
    (),
    {
        "__doc__": "Names of the configuration keys (all start with ``POLYSMS_``).",
        **{key.name: key.config_name for key in KEYS},
    },
)

#: Defaults written into ``app.config`` by ``init_app`` (None: filled from the app).
DEFAULTS: dict[str, Any] = {key.config_name: key.default for key in KEYS}

#: The checked configuration of one app: an attribute per key (``settings.storage_url``), plus
#: ``public_url`` (from ``POLYSMS_PUBLIC_URL``, else ``SERVER_NAME``) and ``encryption_keys``
#: as checked bytes.
Settings = make_dataclass(
    "Settings",
    [(key.attribute, Any) for key in KEYS],
    frozen=True,
    namespace={"__doc__": "The validated configuration of one app (one attribute per key)."},
)


def _server_name_url(config: Mapping[str, Any]) -> str | None:
    """The app's public base URL as Flask's own settings give it (``SERVER_NAME``,
    ``PREFERRED_URL_SCHEME`` and ``APPLICATION_ROOT``, the mount point), or None without
    ``SERVER_NAME``."""
    server_name = config.get("SERVER_NAME")
    if not server_name:
        return None
    scheme = config.get("PREFERRED_URL_SCHEME") or "http"
    root = (config.get("APPLICATION_ROOT") or "/").rstrip("/")
    return f"{scheme}://{server_name}{root}"


def _encryption_keys(value: Any, *, lenient: bool) -> tuple[bytes, ...]:
    """``POLYSMS_ENCRYPTION_KEYS``, each key checked. A malformed key is refused everywhere; a
    missing setting or a weak key only outside debug and testing (``lenient``)."""
    name = ConfigVars.ENCRYPTION_KEYS
    try:
        given = parse_keys(value)
    except TypeError as exc:
        raise ConfigError(f"{name} must be {exc}") from None
    keys = []
    for position, key in enumerate(given):
        try:
            keys.append(check_fernet_key(key, allow_weak=lenient))
        except KeyProblem as problem:
            # The position, never the key: this message ends up in logs.
            raise ConfigError(f"{name}[{position}] {problem}; {GENERATE_KEY_HINT}") from None
    if not keys and not lenient:
        raise ConfigError(
            f"{name} must be set outside debug and testing: a list of Fernet keys (or one "
            "comma-separated string), the first encrypts the stored Twilio Auth Tokens; "
            f"{GENERATE_KEY_HINT}. Deriving the key from {ConfigVars.SECRET_KEY} (or SECRET_KEY) "
            "is for debug and testing only"
        )
    return tuple(keys)


def load_settings(config: dict, *, testing: bool, debug: bool = False) -> Settings:
    """Apply the defaults to ``config`` and check every key (ConfigError names the key).

    Outside ``debug`` and ``testing`` the checks are stricter: ``POLYSMS_ENCRYPTION_KEYS`` is
    required and a weak key is refused."""
    if testing and ConfigVars.GATEWAY not in config:
        # A testing app records what it would send (as Flask-Mail suppresses mail when testing)
        # unless it names a gateway: a test suite never texts real people by accident.
        config[ConfigVars.GATEWAY] = "outbox"
    for key in KEYS:
        config.setdefault(key.config_name, key.default)
    if config[ConfigVars.SCHEDULER] is None:
        config[ConfigVars.SCHEDULER] = "manual" if testing else "thread"
    values = {key.attribute: key.check(key.config_name, config[key.config_name]) for key in KEYS}
    values["scheduler"] = _choice(*SCHEDULERS)(ConfigVars.SCHEDULER, values["scheduler"])
    if values["scheduler"] == "rq" and not values["redis_url"]:
        raise ConfigError(f"{ConfigVars.REDIS_URL} is required when {ConfigVars.SCHEDULER} is 'rq'")
    values["encryption_keys"] = _encryption_keys(
        values["encryption_keys"], lenient=testing or debug
    )
    # Read, not copied into the config: the host's secret stays in one place.
    if values["secret_key"] is None:
        values["secret_key"] = _secret("SECRET_KEY", config.get("SECRET_KEY"))
    if not values["secret_key"] and not values["encryption_keys"]:
        raise ConfigError(
            f"{ConfigVars.SECRET_KEY} (or the app's SECRET_KEY) must be set: without "
            f"{ConfigVars.ENCRYPTION_KEYS} (debug and testing only), Twilio Auth Tokens are "
            "encrypted with a key derived from it"
        )
    if values["public_url"] is None:
        server_url = _server_name_url(config)
        values["public_url"] = server_url.rstrip("/") if server_url else None
    return Settings(**values)


def from_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    """The keys of the table that ``environ`` sets (``POLYSMS_*`` variables), as config values:
    numbers for durations and counts, the text itself for the rest (flags read "true"/"false")."""
    return {
        key.config_name: key.read_env(environ[key.config_name])
        for key in KEYS
        if key.config_name in environ
    }


def _shown(key: Key) -> str:
    if key.shown_default is not None:
        return key.shown_default
    value = key.default
    if isinstance(value, timedelta):
        seconds = int(value.total_seconds())
        for unit, size in (("h", 3600), ("min", 60), ("s", 1)):
            if seconds % size == 0:
                return f"{seconds // size} {unit}"
    if value is None:
        return "None"
    if value == "":
        return '`""`'
    if isinstance(value, str) and len(value) > 40:
        return f"`{value[:37]}…`"
    return f"`{value}`" if isinstance(value, str) else f"`{value!r}`"


def markdown_table() -> str:
    """The README's configuration table, made from :data:`KEYS`."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    lines += [f"| `{key.config_name}` | {_shown(key)} | {key.doc} |" for key in KEYS]
    return "\n".join(lines)
