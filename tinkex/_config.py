"""Client configuration: one frozen value resolved from arguments, then the environment.

The hot path never reads the environment; everything is resolved here once.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
import urllib.parse
import warnings
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import attrs

from .errors import TinkexError, ValidationError

__all__ = ["Config", "DEFAULT_BASE_URL", "__version__", "redact_key", "redact_error", "redact_text", "secret_forms",
           "check_api_key"]

#: The SDK's version, sent to the server (``sdk_version``, the User-Agent). Kept in
#: ``tinkex/VERSION`` so packaging reads it without importing tinkex.
__version__ = (Path(__file__).with_name("VERSION")).read_text(encoding="utf-8").strip()

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://tinker.thinkingmachines.dev/services/tinker-prod"
_TRUTHY = frozenset({"1", "true", "yes", "on"})
_FALSY = frozenset({"0", "false", "no", "off"})
_MISSING_KEY_MESSAGE = (
    "The api_key client option must be set by passing api_key to the client "
    "or by setting the TINKER_API_KEY environment variable"
)
_verify_warned = False


def redact_key(key: Optional[str]) -> str:
    """Return a form of ``key`` safe to show: its prefix only."""
    if not key:
        return "<unset>"
    return key[:4] + "…" if key.startswith(("tml-", "eyJ")) else "<redacted>"


_REDACTED = "<redacted>"


def secret_forms(secret: str) -> Tuple[str, ...]:
    """Every spelling of ``secret`` a message may carry, longest first.

    A server may quote the key back JSON-escaped or URL-encoded, and Python shows text
    repr-escaped (a ``DecodeError`` excerpt, an exception's ``args``), with either quote
    escaped; a key containing a backslash or a quote differs in each. One level of nesting is
    covered too (the repr of a JSON-escaped key, as in an excerpt of a JSON body).

    Example:
        >>> secret_forms("tml-a/b")
        ('tml-a%252Fb', 'tml-a%2Fb', 'tml-a/b')
    """
    if not secret:
        return ()
    forms = {secret}
    for _ in range(2):
        forms |= {escaped for form in forms for escaped in _escapes(form)}
    return tuple(sorted(forms, key=lambda form: (-len(form), form)))


def _escapes(text: str) -> Tuple[str, ...]:
    backslashed = text.replace("\\", "\\\\")
    return (
        backslashed, backslashed.replace("'", "\\'"), backslashed.replace('"', '\\"'),
        backslashed.replace("'", "\\'").replace('"', '\\"'),
        json.dumps(text)[1:-1], json.dumps(text, ensure_ascii=False)[1:-1],
        urllib.parse.quote(text, safe=""), urllib.parse.quote_plus(text), urllib.parse.quote(text),
    )


def redact_text(text: str, secret: str) -> str:
    """``text`` with every form of ``secret`` (see :func:`secret_forms`) replaced by ``<redacted>``."""
    if secret:
        for form in secret_forms(secret):
            if form in text:
                text = text.replace(form, _REDACTED)
    return text


def _mentions(text: str, secret: str) -> bool:
    return any(form in text for form in secret_forms(secret))


def redact_error(exc: BaseException, secret: str) -> BaseException:
    """Remove ``secret``, in every form, from a tinkex error's text attributes, in place; returns it.

    A server may quote the key back (in a failed future's text, a body that fails to decode);
    errors reach the caller's logs and tracebacks, so the key is cut out on the way.
    """
    if not secret:
        return exc
    if isinstance(exc, TinkexError):
        for name, value in list(vars(exc).items()):
            if isinstance(value, str) and _mentions(value, secret):
                setattr(exc, name, redact_text(value, secret))
        exc.args = tuple(redact_text(arg, secret) if isinstance(arg, str) else arg for arg in exc.args)
    if _chain_mentions(exc, secret):
        # A library error kept as context (a JSONDecodeError holds the whole document) would
        # carry the key into tracebacks and pickles; the tinkex error already says what failed.
        exc.__cause__ = exc.__context__ = None
        exc.__suppress_context__ = True
    return exc


def _chain_mentions(exc: BaseException, secret: str) -> bool:
    for linked in (exc.__cause__, exc.__context__):
        if linked is not None and (_mentions(repr(linked), secret) or _mentions(str(vars(linked)), secret)
                                   or _mentions(str(getattr(linked, "doc", "")), secret)):
            return True
    return False


def _jwt_expiry(token: str) -> Optional[float]:
    try:
        payload = token.split(".")[1]
        padded = payload + "=" * (-len(payload) % 4)
        claims = json.loads(base64.urlsafe_b64decode(padded))
        exp = claims["exp"]
        return float(exp)
    except (IndexError, ValueError, KeyError, TypeError):
        return None


def check_api_key(key: Optional[str]) -> str:
    """Check an API key's form before any traffic; return it unchanged.

    Raises:
        ValidationError: when missing, of the wrong form, or an expired JWT. The message
            says how to set a key and never contains the key itself.
    """
    if not key:
        raise ValidationError(_MISSING_KEY_MESSAGE, field="api_key", value=None)
    if key.startswith("eyJ"):
        expiry = _jwt_expiry(key)
        if expiry is None:
            raise ValidationError("The api_key looks like a JWT but has no readable expiry", field="api_key",
                                  value=redact_key(key))
        if expiry <= time.time():
            raise ValidationError("The api_key JWT has expired", field="api_key", value=redact_key(key))
        return key
    if not key.startswith("tml-"):
        raise ValidationError(
            "The api_key must start with the 'tml-' prefix (set TINKER_API_KEY or pass api_key=...)",
            field="api_key",
            value=redact_key(key),
        )
    return key


def _env(name: str, environ: Mapping[str, str]) -> Optional[str]:
    value = environ.get(name, "").strip()
    return value or None


def _env_flag(name: str, environ: Mapping[str, str], default: bool) -> bool:
    value = (_env(name, environ) or "").lower()
    if value in _TRUTHY:
        return True
    if value in _FALSY:
        return False
    return default


def _parse_tags(raw: Optional[str]) -> Tuple[str, ...]:
    if not raw:
        return ()
    return tuple(sorted({tag.strip() for tag in raw.split(",") if tag.strip()}))


def _check_base_url(url: str) -> str:
    if not isinstance(url, str) or not url.startswith(("http://", "https://")) or url[-3:] == "://":
        raise ValidationError(f"base_url must be an http(s) URL, got {url!r}", field="base_url", value=url)
    return url.rstrip("/")


def _positive(_instance: Any, attribute: Any, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise ValidationError(f"{attribute.name} must be a positive number, got {value!r}",
                              field=attribute.name, value=value)


def _non_negative_int(_instance: Any, attribute: Any, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValidationError(f"{attribute.name} must be a non-negative int, got {value!r}",
                              field=attribute.name, value=value)


@attrs.frozen(repr=False)
class Config:
    """Everything a client needs to talk to one Tinker service; immutable.

    Build it with :meth:`from_env`, which takes explicit arguments first, then the
    ``TINKER_*`` environment variables, then the defaults. The API key is checked before
    any network traffic and never appears in ``repr``/``str``.

    Example:
        >>> cfg = Config.from_env(api_key="tml-abc", base_url="http://127.0.0.1:8000")
        >>> cfg
        Config(base_url='http://127.0.0.1:8000', api_key='tml-…')
    """

    api_key: str = attrs.field(converter=check_api_key)
    base_url: str = attrs.field(default=DEFAULT_BASE_URL, converter=_check_base_url)
    timeout: float = attrs.field(default=60.0, validator=_positive)
    connect_timeout: float = attrs.field(default=5.0, validator=_positive)
    max_retries: int = attrs.field(default=10, validator=_non_negative_int)
    tags: Tuple[str, ...] = ()
    project_id: Optional[str] = None
    display_name: Optional[str] = None
    user_metadata: Dict[str, Any] = attrs.field(factory=dict)
    telemetry: bool = True
    log_level: Optional[str] = None
    cf_access_client_id: Optional[str] = None
    cf_access_client_secret: Optional[str] = None
    verify: Union[bool, str] = True
    default_headers: Dict[str, str] = attrs.field(factory=dict)
    max_response_bytes: int = attrs.field(default=64 * 1024 * 1024, validator=_non_negative_int)

    def __repr__(self) -> str:
        return f"Config(base_url={self.base_url!r}, api_key={redact_key(self.api_key)!r})"

    __str__ = __repr__

    def __getstate__(self) -> Dict[str, Any]:
        raise TypeError("Config holds the API key and is not picklable; pickle a SamplingClient instead")

    @classmethod
    def from_env(
        cls, api_key: Optional[str] = None, base_url: Optional[str] = None,
        environ: Optional[Mapping[str, str]] = None, **overrides: Any,
    ) -> Config:
        """Resolve arguments, then ``TINKER_*`` variables, then defaults."""
        env = os.environ if environ is None else environ
        values: Dict[str, Any] = {
            "api_key": api_key or _env("TINKER_API_KEY", env),
            "base_url": base_url or _env("TINKER_BASE_URL", env) or DEFAULT_BASE_URL,
            "tags": _parse_tags(_env("TINKER_TAGS", env)),
            "project_id": _env("TINKER_PROJECT_ID", env),
            "telemetry": _env_flag("TINKER_TELEMETRY", env, True),
            "log_level": (_env("TINKER_LOG", env) or "").lower() or None,
            "cf_access_client_id": _env("CLOUDFLARE_ACCESS_CLIENT_ID", env),
            "cf_access_client_secret": _env("CLOUDFLARE_ACCESS_CLIENT_SECRET", env),
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        config = cls(**values)
        if config.verify is False:
            _warn_verify_off()
        return config

    def evolve(self, **changes: Any) -> Config:
        return attrs.evolve(self, **changes)


def _warn_verify_off() -> None:
    global _verify_warned
    if not _verify_warned:
        _verify_warned = True
        warnings.warn("TLS certificate verification is turned off (verify=False)", stacklevel=3)
