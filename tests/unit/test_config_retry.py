"""Config resolution and key checks; retry maths with an injected clock."""

from __future__ import annotations

import base64
import json
import pickle
import time

import attrs
import pytest

from tinkex import ValidationError
from tinkex._clock import Clock
from tinkex._config import DEFAULT_BASE_URL, Config, redact_key
from tinkex._policy import Action, HTTPRetryPolicy, Phase, RetryConfig, classify, parse_retry_after

KEY = "tml-secret-key-123456"


def _jwt(exp: float) -> str:
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part({'exp': exp, 'iat': 0})}.sig"


def test_arguments_win_over_environment() -> None:
    env = {"TINKER_API_KEY": "tml-env", "TINKER_BASE_URL": "http://env:1"}
    cfg = Config.from_env(api_key=KEY, base_url="http://arg:2/", environ=env)
    assert (cfg.api_key, cfg.base_url) == (KEY, "http://arg:2")


def test_environment_then_default() -> None:
    cfg = Config.from_env(environ={"TINKER_API_KEY": KEY, "TINKER_BASE_URL": "", "TINKER_TAGS": "b,a,b",
                                   "TINKER_PROJECT_ID": "p1", "TINKER_TELEMETRY": "off", "TINKER_LOG": "DEBUG"})
    assert cfg.base_url == DEFAULT_BASE_URL
    assert cfg.tags == ("a", "b") and cfg.project_id == "p1"
    assert cfg.telemetry is False and cfg.log_level == "debug"


@pytest.mark.parametrize("key", [None, "", "sk-foo", "eyJnotajwt"])
def test_bad_keys_are_refused_without_showing_them(key: object) -> None:
    with pytest.raises(ValidationError) as info:
        Config.from_env(api_key=key, environ={})  # type: ignore[arg-type]
    assert info.value.field == "api_key"
    if key:
        assert key not in str(info.value) and key != info.value.value
    assert "TINKER_API_KEY" in str(info.value) or "tml-" in str(info.value) or "JWT" in str(info.value)


def test_jwt_keys_need_a_future_expiry() -> None:
    assert Config.from_env(api_key=_jwt(time.time() + 600), environ={}).api_key.startswith("eyJ")
    with pytest.raises(ValidationError, match="expired"):
        Config.from_env(api_key=_jwt(time.time() - 1), environ={})


def test_key_never_in_repr_str_or_pickle() -> None:
    cfg = Config.from_env(api_key=KEY, environ={})
    assert KEY not in repr(cfg) and KEY not in str(cfg)
    assert redact_key(KEY) == "tml-…"
    with pytest.raises(TypeError):
        pickle.dumps(cfg)


@pytest.mark.parametrize("field,value", [("timeout", 0), ("max_retries", -1), ("base_url", "ftp://x")])
def test_bad_settings_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        Config.from_env(api_key=KEY, environ={}, **{field: value})
    assert info.value.field == field and info.value.value == value


def test_verify_off_warns() -> None:
    import tinkex._config as config_module

    config_module._verify_warned = False
    with pytest.warns(UserWarning, match="verification"):
        Config.from_env(api_key=KEY, environ={}, verify=False)


def test_retry_after_forms() -> None:
    now = 1_000_000.0
    assert parse_retry_after({"retry-after-ms": "250"}, now) == 0.25
    assert parse_retry_after({"retry-after": "3"}, now) == 3.0
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 7))
    assert parse_retry_after({"retry-after": date}, now) == pytest.approx(7.0, abs=1.0)
    assert parse_retry_after({"retry-after": "soon"}, now) is None
    assert parse_retry_after({}, now) is None


def test_http_retry_delays_follow_the_spec() -> None:
    policy = HTTPRetryPolicy()
    high, low = Clock(random=lambda: 0.0), Clock(random=lambda: 0.999999)
    assert [policy.delay(n, {}, high) for n in range(7)] == [0.5, 1, 2, 4, 8, 10, 10]
    assert policy.delay(0, {}, low) == pytest.approx(0.375, abs=1e-4)
    assert 7.5 <= policy.delay(20, {}, low) <= 10
    assert policy.delay(0, {"retry-after": "5"}, high) == 5.0
    assert policy.delay(0, {"retry-after": "120"}, high) == 0.5  # over 60 s: ignored


def is_retryable_status(status: int, headers: dict) -> bool:
    return classify(Phase.HTTP, status, b"{}", headers) is Action.RETRY


def test_retryable_statuses() -> None:
    assert [s for s in (400, 401, 404, 408, 409, 410, 429, 500, 503) if is_retryable_status(s, {})] == [
        408, 409, 429, 500, 503]
    assert is_retryable_status(400, {"x-should-retry": "true"})
    assert not is_retryable_status(503, {"x-should-retry": "false"})


def test_whole_call_retry_delays() -> None:
    config = RetryConfig()
    flat = Clock(random=lambda: 0.5)
    assert [config.delay(a, flat) for a in (1, 2, 3, 4, 5, 6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    config = attrs.evolve(config, retry_delay_base=1.0)
    assert config.delay(1, Clock(random=lambda: 0.0)) == 0.75
    assert config.delay(1, Clock(random=lambda: 1.0)) == 1.25
    assert RetryConfig(max_retries=2).allows(2) and not RetryConfig(max_retries=2).allows(3)
    assert not RetryConfig(enable_retry_logic=False).allows(1)


@pytest.mark.parametrize("field,value", [("jitter_factor", 1.5), ("retry_delay_base", 0), ("max_retries", -1),
                                         ("retry_delay_max", 0.1)])
def test_retry_config_validates(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        RetryConfig(**{field: value})
    assert info.value.field == field


def test_tinker_log_turns_on_tinkex_logging_and_never_quietens_it() -> None:
    import logging

    from tinkex import _logging

    logger = logging.getLogger("tinkex")
    urllib3_level = logging.getLogger("urllib3").level
    before = (logger.level, list(logger.handlers), _logging._handler, _logging._level)
    try:
        _logging._handler, _logging._level = None, None
        _logging.apply_log_level("nonsense")
        assert logger.level == before[0]
        _logging.apply_log_level("INFO")
        assert logger.level == logging.INFO and any(isinstance(h, logging.StreamHandler) for h in logger.handlers)
        _logging.apply_log_level("debug")
        assert logger.level == logging.DEBUG
        _logging.apply_log_level("warning")  # a later client with TINKER_LOG=warning keeps --debug's lines
        assert logger.level == logging.DEBUG
        assert logging.getLogger("urllib3").level == urllib3_level  # urllib3 stays below tinkex's lines
        assert len([h for h in logger.handlers if h not in before[1]]) == 1
    finally:
        logger.setLevel(before[0])
        for handler in list(logger.handlers):
            if handler not in before[1]:
                logger.removeHandler(handler)
        _logging._handler, _logging._level = before[2], before[3]
