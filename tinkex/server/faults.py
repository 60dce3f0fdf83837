"""Fault profiles for the local server: seeded, per-route, every injected fault logged and counted.

A :class:`FaultProfile` is parsed from a short spec string (``tinkex serve --faults``) or a JSON
object. Spec grammar: comma-separated ``key=value`` items, whitespace ignored::

    seed=INT                        seed of the fault dice (default 0): same seed, same faults
    [ROUTE.]KIND=PROBABILITY        KIND is one of 408 410 429 500 503 (that status, JSON body),
                                    400 (a 400 with an empty body: a proxy rejection),
                                    drop_before (connection aborted before the request is handled),
                                    drop_after (handled, e.g. the promise created, then aborted
                                    unanswered; for stream_sample: aborted after the first event)
    [ROUTE.]latency_ms=MS           added latency before handling
    paused_capacity=DUR[/PERIOD]    a pause window: for DUR out of every PERIOD (once if no
    paused_rate_limit=DUR[/PERIOD]  PERIOD), counted from when the profile was set, polls answer
                                    try_again with that queue_state (408 bodies carry it too)
    WINDOW.reason=TEXT              the queue_state_reason reported for that window
    sse_slow_ms=MS                  delay before every stream_sample event

ROUTE is a route name (``asample``, ``retrieve_future``, ``retrieve_futures``, ``stream_sample``,
``create_session``, ``session_heartbeat``, ``create_sampling_session``, ``get_sampler``,
``join_sampling_session``, ``cancel_future``, ``telemetry``, ``finish_session``, ``client_config``,
``dynamic_config``, ``auth_token``, ``healthz``, ``get_server_capabilities``) or ``*``, every route
(the default). A route's own rule for a KIND overrides the ``*`` rule. For each request one die
is rolled over the route's outcome kinds, so their probabilities must add up to at most 1.
DUR and PERIOD are numbers with an optional ``ms`` or ``s`` suffix (seconds when bare).
``/admin/stats`` is never faulted.

Example spec: ``seed=1,asample.500=0.05,retrieve_future.429=0.05,drop_before=0.02,latency_ms=20,
paused_capacity=2s/10s,sse_slow_ms=200``.

The JSON form is an object with the same keys; window values are spec strings or objects
``{"duration_s": 2, "period_s": 10, "reason": "GPU maintenance"}``.

Example:
    >>> profile = FaultProfile.parse("seed=3,asample.500=0.5,paused_capacity=2s/10s")
    >>> profile.seed, profile.windows[0].period_s
    (3, 10.0)
    >>> FaultProfile.parse(profile.to_spec()) == profile
    True
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import attrs

from ..errors import ValidationError
from ._routes import ROUTE_NAMES

__all__ = ["FaultProfile", "FaultRule", "PauseWindow", "FaultInjector", "OUTCOME_KINDS", "STATUS_KINDS"]

logger = logging.getLogger(__name__)

STATUS_KINDS = ("408", "410", "429", "500", "503", "400")
DROP_KINDS = ("drop_before", "drop_after")
OUTCOME_KINDS = STATUS_KINDS + DROP_KINDS
LATENCY = "latency_ms"
WINDOW_STATES = ("paused_capacity", "paused_rate_limit")
_DEFAULT_REASONS = {
    "paused_capacity": "injected fault: running short on capacity, please wait",
    "paused_rate_limit": "injected fault: concurrent sampler weights limit hit",
}
ANY_ROUTE = "*"


def _invalid(item: str, why: str) -> ValidationError:
    return ValidationError(f"fault spec item {item!r}: {why}", field="faults", value=item)


def _number(text: Any, item: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise _invalid(item, f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise _invalid(item, "must be a finite number >= 0")
    return value


def _duration(text: Any, item: str) -> float:
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return _number(text, item)
    text = str(text).strip().lower()
    if text.endswith("ms"):
        return _number(text[:-2], item) / 1000.0
    if text.endswith("s"):
        return _number(text[:-1], item)
    return _number(text, item)


def _format_seconds(value: float) -> str:
    return f"{value:g}s"


@attrs.frozen
class FaultRule:
    """One rule: ``kind`` on ``route`` with ``value`` (a probability, or ms for latency)."""

    route: str
    kind: str
    value: float

    def __attrs_post_init__(self) -> None:
        item = f"{self.route}.{self.kind}={self.value}"
        if self.route != ANY_ROUTE and self.route not in ROUTE_NAMES:
            raise _invalid(item, f"unknown route {self.route!r}; routes: {', '.join(ROUTE_NAMES)}")
        if self.kind not in OUTCOME_KINDS and self.kind != LATENCY:
            raise _invalid(item, f"unknown kind {self.kind!r}; kinds: {', '.join(OUTCOME_KINDS)}, {LATENCY}")
        if self.kind != LATENCY and not 0 <= self.value <= 1:
            raise _invalid(item, "a probability must be in [0, 1]")

    def to_spec(self) -> str:
        prefix = "" if self.route == ANY_ROUTE else f"{self.route}."
        return f"{prefix}{self.kind}={self.value:g}"


@attrs.frozen
class PauseWindow:
    """A time window in which polls report ``state`` (``paused_capacity`` / ``paused_rate_limit``).

    The window covers ``[k * period_s, k * period_s + duration_s)`` of the time since the profile
    was set, for every k >= 0 (only k = 0 without a period).
    """

    state: str
    duration_s: float
    period_s: Optional[float] = None
    reason: Optional[str] = None

    def __attrs_post_init__(self) -> None:
        if self.state not in WINDOW_STATES:
            raise _invalid(self.state, f"a window must be one of {', '.join(WINDOW_STATES)}")
        if self.period_s is not None and self.period_s <= self.duration_s:
            raise _invalid(self.state, "the period must be longer than the window")

    @property
    def reason_text(self) -> str:
        return self.reason or _DEFAULT_REASONS[self.state]

    def remaining(self, elapsed: float) -> float:
        """Seconds left in the window at ``elapsed``; 0 when outside it."""
        phase = elapsed % self.period_s if self.period_s else elapsed
        return max(0.0, self.duration_s - phase)

    def to_spec(self) -> str:
        period = "" if self.period_s is None else "/" + _format_seconds(self.period_s)
        return f"{self.state}={_format_seconds(self.duration_s)}{period}"


def _check_total(rules: Tuple[FaultRule, ...]) -> None:
    for route in ROUTE_NAMES:
        total = sum(_outcome_table(rules, route).values())
        if total > 1 + 1e-9:
            raise ValidationError(
                f"fault probabilities on route {route!r} add up to {total:g} (> 1)", field="faults", value=total
            )


def _outcome_table(rules: Tuple[FaultRule, ...], route: str) -> Dict[str, float]:
    table: Dict[str, float] = {}
    for wanted in (ANY_ROUTE, route):
        for rule in rules:
            if rule.route == wanted and rule.kind != LATENCY:
                table[rule.kind] = rule.value
    return {kind: table[kind] for kind in OUTCOME_KINDS if table.get(kind)}


def _latency_ms(rules: Tuple[FaultRule, ...], route: str) -> float:
    found = 0.0
    for wanted in (ANY_ROUTE, route):
        for rule in rules:
            if rule.route == wanted and rule.kind == LATENCY:
                found = rule.value
    return found


def _as_tuple(items: Iterable[Any]) -> Tuple[Any, ...]:
    return tuple(items)


@attrs.frozen
class FaultProfile:
    """What to inject, with a seed; immutable, parsed from a spec string or JSON.

    Example:
        >>> FaultProfile.parse({"seed": 1, "asample.429": 0.25}).rules
        (FaultRule(route='asample', kind='429', value=0.25),)
    """

    seed: int = 0
    rules: Tuple[FaultRule, ...] = attrs.field(default=(), converter=_as_tuple)
    windows: Tuple[PauseWindow, ...] = attrs.field(default=(), converter=_as_tuple)
    sse_slow_ms: float = 0.0

    def __attrs_post_init__(self) -> None:
        _check_total(self.rules)

    @property
    def is_empty(self) -> bool:
        return not self.rules and not self.windows and not self.sse_slow_ms

    @classmethod
    def parse(cls, value: Union[None, str, Mapping[str, Any], FaultProfile]) -> FaultProfile:
        """Accept a profile, a spec string, a JSON object or its text, or None (no faults)."""
        if value is None:
            return cls()
        if isinstance(value, FaultProfile):
            return value
        if isinstance(value, Mapping):
            return cls.from_json(value)
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("{"):
                try:
                    return cls.from_json(json.loads(text))
                except json.JSONDecodeError as exc:
                    raise ValidationError(f"fault profile is not valid JSON: {exc}", field="faults") from None
            return cls.from_spec(text)
        raise ValidationError(f"cannot read a fault profile from {type(value).__name__}", field="faults")

    @classmethod
    def from_spec(cls, spec: str) -> FaultProfile:
        items: List[Tuple[str, Any]] = []
        for raw in spec.split(","):
            item = raw.strip()
            if not item:
                continue
            key, sep, text = item.partition("=")
            if not sep:
                raise _invalid(item, "expected key=value")
            items.append((key.strip(), text.strip()))
        return cls._from_items(items)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FaultProfile:
        if not isinstance(data, Mapping):
            raise ValidationError("a JSON fault profile must be an object", field="faults")
        return cls._from_items(list(data.items()))

    @classmethod
    def _from_items(cls, items: List[Tuple[str, Any]]) -> FaultProfile:
        builder = _Builder()
        for key, value in items:
            builder.add(str(key), value)
        return builder.build()

    def to_spec(self) -> str:
        parts = [f"seed={self.seed}"]
        parts += [rule.to_spec() for rule in self.rules]
        for window in self.windows:
            parts.append(window.to_spec())
            if window.reason:
                parts.append(f"{window.state}.reason={window.reason}")
        if self.sse_slow_ms:
            parts.append(f"sse_slow_ms={self.sse_slow_ms:g}")
        return ",".join(parts)

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"seed": self.seed}
        for rule in self.rules:
            key = rule.kind if rule.route == ANY_ROUTE else f"{rule.route}.{rule.kind}"
            out[key] = rule.value
        for window in self.windows:
            out[window.state] = {"duration_s": window.duration_s, "period_s": window.period_s, "reason": window.reason}
        if self.sse_slow_ms:
            out["sse_slow_ms"] = self.sse_slow_ms
        return out


class _Builder:
    """Collects parsed items; later items override earlier ones with the same key."""

    def __init__(self) -> None:
        self.seed = 0
        self.rules: Dict[Tuple[str, str], FaultRule] = {}
        self.windows: Dict[str, Dict[str, Any]] = {}
        self.sse_slow_ms = 0.0

    def add(self, key: str, value: Any) -> None:
        item = f"{key}={value}"
        if key == "seed":
            self.seed = self._seed(value, item)
        elif key == "sse_slow_ms":
            self.sse_slow_ms = _number(value, item)
        elif key in WINDOW_STATES:
            self.windows.setdefault(key, {}).update(self._window(value, item))
        elif key.endswith(".reason") and key[: -len(".reason")] in WINDOW_STATES:
            self.windows.setdefault(key[: -len(".reason")], {})["reason"] = str(value)
        else:
            route, _, kind = key.rpartition(".")
            rule = FaultRule(route or ANY_ROUTE, kind, _number(value, item))
            self.rules[(rule.route, rule.kind)] = rule

    @staticmethod
    def _seed(value: Any, item: str) -> int:
        try:
            return int(value)
        except (TypeError, ValueError):
            raise _invalid(item, "the seed must be an integer") from None

    @staticmethod
    def _window(value: Any, item: str) -> Dict[str, Any]:
        if isinstance(value, Mapping):
            period = value.get("period_s")
            return {
                "duration_s": _duration(value.get("duration_s"), item),
                "period_s": None if period is None else _duration(period, item),
                **({"reason": str(value["reason"])} if value.get("reason") else {}),
            }
        duration, _, period = str(value).partition("/")
        return {"duration_s": _duration(duration, item), "period_s": _duration(period, item) if period else None}

    def build(self) -> FaultProfile:
        windows = []
        for state, parts in self.windows.items():
            if "duration_s" not in parts:
                raise _invalid(f"{state}.reason", f"a reason needs a {state}=DUR[/PERIOD] window")
            windows.append(PauseWindow(state=state, **parts))
        return FaultProfile(
            seed=self.seed, rules=tuple(self.rules.values()), windows=tuple(windows), sse_slow_ms=self.sse_slow_ms
        )


class FaultInjector:
    """Rolls the dice of one profile. Not thread-safe: used only on the server's event loop.

    Args:
        profile: what to inject.
        clock: monotonic seconds; pause windows count from construction.
    """

    def __init__(self, profile: FaultProfile, clock: Callable[[], float] = time.monotonic) -> None:
        self.profile = profile
        self._clock = clock
        self._started = clock()
        self._rng = random.Random(profile.seed)
        self._tables: Dict[str, List[Tuple[float, str]]] = {}
        self._latency: Dict[str, float] = {}

    def draw(self, route: str) -> Optional[str]:
        """The outcome fault for one request on ``route`` (a kind of OUTCOME_KINDS) or None."""
        table = self._tables.get(route)
        if table is None:
            table = self._tables[route] = self._cumulative(route)
        if not table:
            return None
        roll = self._rng.random()
        for bound, kind in table:
            if roll < bound:
                return kind
        return None

    def _cumulative(self, route: str) -> List[Tuple[float, str]]:
        total = 0.0
        table = []
        for kind, probability in _outcome_table(self.profile.rules, route).items():
            total += probability
            table.append((total, kind))
        return table

    def latency_s(self, route: str) -> float:
        value = self._latency.get(route)
        if value is None:
            value = self._latency[route] = _latency_ms(self.profile.rules, route) / 1000.0
        return value

    def pause(self) -> Optional[Tuple[PauseWindow, float]]:
        """The pause window in force now and the seconds it has left, or None."""
        if not self.profile.windows:
            return None
        elapsed = self._clock() - self._started
        for window in self.profile.windows:
            left = window.remaining(elapsed)
            if left > 0:
                return window, left
        return None

    @property
    def sse_delay_s(self) -> float:
        return self.profile.sse_slow_ms / 1000.0
