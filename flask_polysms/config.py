"""Every configuration key of the extension, its default, and the start-up checks.

Keys are read once in ``init_app``; a bad value fails there with a message naming the key, not later
in a request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from limits import parse_many

from .crypto import KeyProblem, check_fernet_key, parse_keys


class ConfigVars:
    """Names of the configuration keys (all start with ``POLYSMS_``)."""

    STORAGE_URL = "POLYSMS_STORAGE_URL"
    SCHEDULER = "POLYSMS_SCHEDULER"
    REDIS_URL = "POLYSMS_REDIS_URL"
    QUEUE_NAME = "POLYSMS_QUEUE_NAME"
    GATEWAY = "POLYSMS_GATEWAY"
    TWILIO_BASE_URL = "POLYSMS_TWILIO_BASE_URL"
    TWILIO_TIMEOUT = "POLYSMS_TWILIO_TIMEOUT"
    PUBLIC_URL = "POLYSMS_PUBLIC_URL"
    URL_PREFIX = "POLYSMS_URL_PREFIX"
    RATE_LIMIT = "POLYSMS_RATE_LIMIT"
    RATE_LIMIT_STORAGE_URL = "POLYSMS_RATE_LIMIT_STORAGE_URL"
    READ_RATE_LIMIT = "POLYSMS_READ_RATE_LIMIT"
    IDLE_TIMEOUT = "POLYSMS_IDLE_TIMEOUT"
    GRACE_PERIOD = "POLYSMS_GRACE_PERIOD"
    WARNING_MESSAGE = "POLYSMS_WARNING_MESSAGE"
    CLOSING_MESSAGE = "POLYSMS_CLOSING_MESSAGE"
    VALIDATE_SIGNATURES = "POLYSMS_VALIDATE_SIGNATURES"
    SECRET_KEY = "POLYSMS_SECRET_KEY"
    ENCRYPTION_KEYS = "POLYSMS_ENCRYPTION_KEYS"
    DECRYPT_WITH_SECRET_KEY = "POLYSMS_DECRYPT_WITH_SECRET_KEY"
    SEND_MAX_ATTEMPTS = "POLYSMS_SEND_MAX_ATTEMPTS"
    RETRY_BASE_DELAY = "POLYSMS_RETRY_BASE_DELAY"
    INBOUND_SENDER_LIMIT = "POLYSMS_INBOUND_SENDER_LIMIT"
    INBOUND_PROJECT_LIMIT = "POLYSMS_INBOUND_PROJECT_LIMIT"
    DUPLICATE_TEXT_LIMIT = "POLYSMS_DUPLICATE_TEXT_LIMIT"
    DUPLICATE_TEXT_BLOCK = "POLYSMS_DUPLICATE_TEXT_BLOCK"
    SWEEP_INTERVAL = "POLYSMS_SWEEP_INTERVAL"
    STUCK_AFTER = "POLYSMS_STUCK_AFTER"
    SENDER_GUARD = "POLYSMS_SENDER_GUARD"
    DASHBOARD = "POLYSMS_DASHBOARD"
    DASHBOARD_IDLE_TIMEOUT = "POLYSMS_DASHBOARD_IDLE_TIMEOUT"
    DASHBOARD_ABSOLUTE_TIMEOUT = "POLYSMS_DASHBOARD_ABSOLUTE_TIMEOUT"
    MAX_CONTENT_LENGTH = "POLYSMS_MAX_CONTENT_LENGTH"
    TABLE_PREFIX = "POLYSMS_TABLE_PREFIX"
    DASHBOARD_URL = "POLYSMS_DASHBOARD_URL"


DEFAULT_WARNING_MESSAGE = (
    "Are you still there? This conversation will end in 10 minutes unless you reply."
)
DEFAULT_CLOSING_MESSAGE = "I am going to end conversation now"

SCHEDULERS = ("manual", "thread", "rq")
GATEWAYS = ("twilio", "outbox")

# Defaults; POLYSMS_SCHEDULER and POLYSMS_SECRET_KEY depend on the app and are filled in init_app.
DEFAULTS: dict[str, Any] = {
    ConfigVars.STORAGE_URL: "memory://",
    ConfigVars.SCHEDULER: None,  # "manual" when app.testing, else "thread"
    ConfigVars.REDIS_URL: None,
    ConfigVars.QUEUE_NAME: "polysms",
    ConfigVars.GATEWAY: "twilio",
    ConfigVars.TWILIO_BASE_URL: None,
    ConfigVars.TWILIO_TIMEOUT: 10.0,
    ConfigVars.PUBLIC_URL: None,
    ConfigVars.URL_PREFIX: "",
    ConfigVars.RATE_LIMIT: "20 per second",
    ConfigVars.RATE_LIMIT_STORAGE_URL: "memory://",
    ConfigVars.READ_RATE_LIMIT: "100 per second",
    ConfigVars.IDLE_TIMEOUT: timedelta(hours=24),
    ConfigVars.GRACE_PERIOD: timedelta(minutes=10),
    ConfigVars.WARNING_MESSAGE: DEFAULT_WARNING_MESSAGE,
    ConfigVars.CLOSING_MESSAGE: DEFAULT_CLOSING_MESSAGE,
    ConfigVars.VALIDATE_SIGNATURES: True,
    ConfigVars.SECRET_KEY: None,  # the app's SECRET_KEY
    # Fernet keys, the first encrypts; required outside debug and testing.
    ConfigVars.ENCRYPTION_KEYS: None,
    # With ENCRYPTION_KEYS: the SECRET_KEY derivation still decrypts (tokens stored by 0.1).
    ConfigVars.DECRYPT_WITH_SECRET_KEY: True,
    ConfigVars.SEND_MAX_ATTEMPTS: 5,
    ConfigVars.RETRY_BASE_DELAY: timedelta(seconds=2),
    ConfigVars.INBOUND_SENDER_LIMIT: "10 per 60 seconds",
    ConfigVars.INBOUND_PROJECT_LIMIT: "100 per minute",
    ConfigVars.DUPLICATE_TEXT_LIMIT: "5 per 5 minutes",
    ConfigVars.DUPLICATE_TEXT_BLOCK: timedelta(minutes=10),
    ConfigVars.SWEEP_INTERVAL: timedelta(seconds=60),
    ConfigVars.STUCK_AFTER: timedelta(minutes=5),
    ConfigVars.SENDER_GUARD: True,
    ConfigVars.DASHBOARD: False,
    ConfigVars.DASHBOARD_IDLE_TIMEOUT: timedelta(minutes=30),
    ConfigVars.DASHBOARD_ABSOLUTE_TIMEOUT: timedelta(hours=12),
    ConfigVars.MAX_CONTENT_LENGTH: 64 * 1024,
    ConfigVars.TABLE_PREFIX: "polysms_",
    ConfigVars.DASHBOARD_URL: "/dashboard",
}


class ConfigError(ValueError):
    """A configuration value is unusable; the message names the key."""


@dataclass(frozen=True)
class Settings:
    """The validated configuration of one app."""

    storage_url: str
    scheduler: str
    redis_url: str | None
    queue_name: str
    gateway: str
    twilio_base_url: str | None
    twilio_timeout: float
    #: The app's public base URL from configuration only (``POLYSMS_PUBLIC_URL``, else
    #: ``SERVER_NAME``): status callbacks and webhook signatures use it, never a request's Host.
    public_url: str | None
    url_prefix: str
    rate_limit: str
    rate_limit_storage_url: str
    #: The request budget of every authenticated route, per project (same storage).
    read_rate_limit: str
    idle_timeout: timedelta
    grace_period: timedelta
    warning_message: str
    closing_message: str
    validate_signatures: bool
    #: ``POLYSMS_SECRET_KEY`` as given (else the app's ``SECRET_KEY``), None when neither is set.
    secret_key: str | bytes | None
    #: ``POLYSMS_ENCRYPTION_KEYS``, checked; empty only in debug and testing (then the key is
    #: derived from ``secret_key``).
    encryption_keys: tuple[bytes, ...]
    decrypt_with_secret_key: bool
    send_max_attempts: int
    retry_base_delay: timedelta
    inbound_sender_limit: str
    inbound_project_limit: str
    duplicate_text_limit: str
    duplicate_text_block: timedelta
    sweep_interval: timedelta
    stuck_after: timedelta
    sender_guard: bool
    dashboard: bool
    dashboard_idle_timeout: timedelta
    dashboard_absolute_timeout: timedelta
    max_content_length: int
    #: Names our database tables (``polysms_`` + name): a host sharing the database keeps its own.
    table_prefix: str
    #: Where the dashboard is mounted, under ``url_prefix``.
    dashboard_url: str


def _duration(config: dict, key: str) -> timedelta:
    value = config[key]
    if isinstance(value, timedelta):
        result = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        result = timedelta(seconds=value)
    else:
        raise ConfigError(f"{key} must be a timedelta or a number of seconds, not {value!r}")
    if result <= timedelta(0):
        raise ConfigError(f"{key} must be positive, not {value!r}")
    return result


def _flag(config: dict, key: str) -> bool:
    value = config[key]
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{key} must be True or False, not {value!r}")


def _limit(config: dict, key: str) -> str:
    value = config[key]
    try:
        parse_many(value)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{key} is not a rate limit such as '20 per second': {value!r}") from exc
    return value


def _choice(config: dict, key: str, choices: tuple[str, ...]) -> str:
    value = config[key]
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, not {value!r}")
    return value


def _text(config: dict, key: str, *, optional: bool = False) -> str | None:
    value = config[key]
    if value is None and optional:
        return None
    if not isinstance(value, str) or (not value and not optional):
        raise ConfigError(f"{key} must be a non-empty string, not {value!r}")
    return value


def _server_name_url(config: Any) -> str | None:
    """The app's public base URL as Flask's own settings give it (``SERVER_NAME``,
    ``PREFERRED_URL_SCHEME`` and ``APPLICATION_ROOT``, the mount point), or None without
    ``SERVER_NAME``."""
    server_name = config.get("SERVER_NAME")
    if not server_name:
        return None
    scheme = config.get("PREFERRED_URL_SCHEME") or "http"
    root = (config.get("APPLICATION_ROOT") or "/").rstrip("/")
    return f"{scheme}://{server_name}{root}"


GENERATE_KEY_HINT = (
    'make one with `python -c "from cryptography.fernet import Fernet; '
    'print(Fernet.generate_key().decode())"`'
)


def _encryption_keys(config: dict, *, lenient: bool) -> tuple[bytes, ...]:
    """``POLYSMS_ENCRYPTION_KEYS``, each key checked. A malformed key is refused everywhere; a
    missing setting or a weak key only outside debug and testing (``lenient``)."""
    name = ConfigVars.ENCRYPTION_KEYS
    try:
        given = parse_keys(config[name])
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
    """Apply the defaults to ``config`` and validate every key (ConfigError names the key).

    Outside ``debug`` and ``testing`` the checks are stricter: ``POLYSMS_ENCRYPTION_KEYS`` is
    required and a weak key is refused."""
    if testing and ConfigVars.GATEWAY not in config:
        # A testing app records what it would send (as Flask-Mail suppresses mail when testing)
        # unless it names a gateway: a test suite never texts real people by accident.
        config[ConfigVars.GATEWAY] = "outbox"
    for key, value in DEFAULTS.items():
        config.setdefault(key, value)
    if config[ConfigVars.SCHEDULER] is None:
        config[ConfigVars.SCHEDULER] = "manual" if testing else "thread"
    encryption_keys = _encryption_keys(config, lenient=testing or debug)
    # Read, not copied into the config: the host's secret stays in one place.
    secret = config[ConfigVars.SECRET_KEY]
    if secret is None:
        secret = config.get("SECRET_KEY")
    if secret is not None and not isinstance(secret, (str, bytes)):
        raise ConfigError(f"{ConfigVars.SECRET_KEY} must be a string, not {type(secret).__name__}")
    if not secret and not encryption_keys:
        raise ConfigError(
            f"{ConfigVars.SECRET_KEY} (or the app's SECRET_KEY) must be set: without "
            f"{ConfigVars.ENCRYPTION_KEYS} (debug and testing only), Twilio Auth Tokens are "
            "encrypted with a key derived from it"
        )
    scheduler = _choice(config, ConfigVars.SCHEDULER, SCHEDULERS)
    redis_url = _text(config, ConfigVars.REDIS_URL, optional=True)
    if scheduler == "rq" and not redis_url:
        raise ConfigError(f"{ConfigVars.REDIS_URL} is required when {ConfigVars.SCHEDULER} is 'rq'")
    prefix = config[ConfigVars.URL_PREFIX] or ""
    if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
        raise ConfigError(f"{ConfigVars.URL_PREFIX} must start with '/' and not end with it")
    attempts = config[ConfigVars.SEND_MAX_ATTEMPTS]
    if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
        raise ConfigError(f"{ConfigVars.SEND_MAX_ATTEMPTS} must be a positive integer")
    timeout = config[ConfigVars.TWILIO_TIMEOUT]
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigError(f"{ConfigVars.TWILIO_TIMEOUT} must be a positive number of seconds")
    max_length = config[ConfigVars.MAX_CONTENT_LENGTH]
    if not isinstance(max_length, int) or max_length < 1024:
        raise ConfigError(f"{ConfigVars.MAX_CONTENT_LENGTH} must be an integer >= 1024")
    public_url = _text(config, ConfigVars.PUBLIC_URL, optional=True)
    if public_url and not public_url.startswith(("http://", "https://")):
        raise ConfigError(f"{ConfigVars.PUBLIC_URL} must be an http(s) URL, not {public_url!r}")
    public_url = public_url or _server_name_url(config)
    dashboard_url = _text(config, ConfigVars.DASHBOARD_URL)
    if not dashboard_url.startswith("/") or dashboard_url.endswith("/"):
        raise ConfigError(f"{ConfigVars.DASHBOARD_URL} must start with '/' and not end with it")
    table_prefix = _text(config, ConfigVars.TABLE_PREFIX)
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,39}", table_prefix):
        raise ConfigError(
            f"{ConfigVars.TABLE_PREFIX} must be a letter then letters, digits or _ (up to 40)"
        )
    return Settings(
        storage_url=_text(config, ConfigVars.STORAGE_URL),
        scheduler=scheduler,
        redis_url=redis_url,
        queue_name=_text(config, ConfigVars.QUEUE_NAME),
        gateway=_choice(config, ConfigVars.GATEWAY, GATEWAYS),
        twilio_base_url=_text(config, ConfigVars.TWILIO_BASE_URL, optional=True),
        twilio_timeout=float(timeout),
        public_url=public_url.rstrip("/") if public_url else None,
        url_prefix=prefix,
        rate_limit=_limit(config, ConfigVars.RATE_LIMIT),
        rate_limit_storage_url=_text(config, ConfigVars.RATE_LIMIT_STORAGE_URL),
        read_rate_limit=_limit(config, ConfigVars.READ_RATE_LIMIT),
        idle_timeout=_duration(config, ConfigVars.IDLE_TIMEOUT),
        grace_period=_duration(config, ConfigVars.GRACE_PERIOD),
        warning_message=_text(config, ConfigVars.WARNING_MESSAGE),
        closing_message=_text(config, ConfigVars.CLOSING_MESSAGE),
        validate_signatures=_flag(config, ConfigVars.VALIDATE_SIGNATURES),
        secret_key=secret or None,
        encryption_keys=encryption_keys,
        decrypt_with_secret_key=_flag(config, ConfigVars.DECRYPT_WITH_SECRET_KEY),
        send_max_attempts=attempts,
        retry_base_delay=_duration(config, ConfigVars.RETRY_BASE_DELAY),
        inbound_sender_limit=_limit(config, ConfigVars.INBOUND_SENDER_LIMIT),
        inbound_project_limit=_limit(config, ConfigVars.INBOUND_PROJECT_LIMIT),
        duplicate_text_limit=_limit(config, ConfigVars.DUPLICATE_TEXT_LIMIT),
        duplicate_text_block=_duration(config, ConfigVars.DUPLICATE_TEXT_BLOCK),
        sweep_interval=_duration(config, ConfigVars.SWEEP_INTERVAL),
        stuck_after=_duration(config, ConfigVars.STUCK_AFTER),
        sender_guard=_flag(config, ConfigVars.SENDER_GUARD),
        dashboard=_flag(config, ConfigVars.DASHBOARD),
        dashboard_idle_timeout=_duration(config, ConfigVars.DASHBOARD_IDLE_TIMEOUT),
        dashboard_absolute_timeout=_duration(config, ConfigVars.DASHBOARD_ABSOLUTE_TIMEOUT),
        max_content_length=max_length,
        table_prefix=table_prefix,
        dashboard_url=dashboard_url,
    )
