"""The local server's configuration values, checked without a server: ``ServerSettings``
validation, the descriptor-derived connection cap, and fault profiles read from spec strings,
JSON and objects."""

from __future__ import annotations

import resource
import sys
from typing import Any

import pytest

from tinkex.errors import ValidationError
from tinkex.server import _settings
from tinkex.server._settings import ServerSettings, is_loopback_host
from tinkex.server.faults import FaultInjector, FaultProfile, PauseWindow

# ---------------------------------------------------------------- ServerSettings


@pytest.mark.parametrize("value", [0, -1.5, True, "5", None])
def test_a_positive_setting_refuses_zero_negatives_and_non_numbers(value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        ServerSettings(poll_hold_s=value)
    assert info.value.field == "poll_hold_s" and "positive" in str(info.value)


@pytest.mark.parametrize("value", [-0.001, False, "0"])
def test_a_non_negative_setting_refuses_negatives_and_non_numbers(value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        ServerSettings(token_delay_ms=value)
    assert info.value.field == "token_delay_ms" and "non-negative" in str(info.value)
    assert ServerSettings(token_delay_ms=0).token_delay_s == 0.0


def test_api_keys_accept_none_one_string_or_an_iterable() -> None:
    assert ServerSettings(api_keys=None).api_keys == ()
    assert ServerSettings(api_keys="tml-one").api_keys == ("tml-one",)  # not split into characters
    assert ServerSettings(api_keys=["tml-a", "tml-b"]).api_keys == ("tml-a", "tml-b")
    assert ServerSettings(api_keys="tml-one").describe_keys() == "1 configured API key(s)"


@pytest.mark.parametrize("keys", [[""], ["  "], ["tml-a", 7]])
def test_api_keys_must_be_non_empty_strings(keys: Any) -> None:
    with pytest.raises(ValidationError) as info:
        ServerSettings(api_keys=keys)
    assert info.value.field == "api_keys"


def test_config_flags_must_be_a_mapping() -> None:
    with pytest.raises(ValidationError) as info:
        ServerSettings(client_config=[("sample_use_retrieve_futures", True)])
    assert info.value.field == "config" and "list" in str(info.value)
    assert ServerSettings(client_config=None).client_config == {}


@pytest.mark.parametrize("port", [-1, 65536, 8000.5])
def test_the_port_must_be_an_int_in_range(port: Any) -> None:
    with pytest.raises(ValidationError) as info:
        ServerSettings(port=port)
    assert info.value.field == "port"
    assert ServerSettings(port=65535).port == 65535


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.8.9.10", "::1", "[::1]"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback_host(host)
    assert ServerSettings(host=host).host == host  # no api_keys needed


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.1", "example.com", "localhost.example.com", ""])
def test_other_hosts_are_not_loopback_and_need_keys(host: str) -> None:
    assert not is_loopback_host(host)
    with pytest.raises(ValidationError) as info:
        ServerSettings(host=host)
    assert info.value.field == "host"
    assert ServerSettings(host=host, api_keys=["tml-k"]).host == host


def test_an_explicit_connection_cap_wins_over_the_descriptor_limit() -> None:
    assert ServerSettings(max_connections_per_peer=3).connection_cap == 3


def test_the_default_connection_cap_leaves_a_reserve_below_the_descriptor_limit() -> None:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    expected = 4096 if soft == resource.RLIM_INFINITY else max(16, min(4096, soft - 64))
    assert ServerSettings().connection_cap == expected


def test_an_unlimited_descriptor_limit_caps_connections_at_4096(monkeypatch: pytest.MonkeyPatch) -> None:
    unlimited = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
    monkeypatch.setattr(resource, "getrlimit", lambda _which: unlimited)
    assert ServerSettings().connection_cap == 4096


def test_without_the_resource_module_the_connection_cap_is_512(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "resource", None)  # as on Windows: the import fails
    assert _settings._default_connection_cap() == 512


# ---------------------------------------------------------------- fault profiles


def test_parse_accepts_none_a_profile_a_mapping_json_text_and_a_spec() -> None:
    profile = FaultProfile.parse("seed=4,asample.500=0.25")
    assert FaultProfile.parse(None).is_empty
    assert FaultProfile.parse(profile) is profile
    assert FaultProfile.parse({"seed": 4, "asample.500": 0.25}) == profile
    assert FaultProfile.parse('{"seed": 4, "asample.500": 0.25}') == profile


@pytest.mark.parametrize("value", [42, ["asample.500=1"], b"seed=1"])
def test_parse_refuses_other_types(value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        FaultProfile.parse(value)
    assert "cannot read a fault profile" in str(info.value)


def test_from_json_refuses_a_non_object() -> None:
    with pytest.raises(ValidationError) as info:
        FaultProfile.from_json([("seed", 1)])  # type: ignore[arg-type]
    assert "must be an object" in str(info.value)


def test_empty_spec_items_are_skipped() -> None:
    assert FaultProfile.parse(" , seed=2,, asample.429=0.5 ,") == FaultProfile.parse("seed=2,asample.429=0.5")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("asample.500=often", "'often' is not a number"),
        ("latency_ms=-5", "finite number >= 0"),
        ("latency_ms=nan", "finite number >= 0"),
        ("paused_capacity=soon", "'soon' is not a number"),
        ("paused_capacity=2s/1s", "the period must be longer than the window"),
    ],
)
def test_bad_numbers_in_a_spec_name_the_item(spec: str, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        FaultProfile.parse(spec)
    assert message in str(info.value) and info.value.field == "faults"


def test_a_window_must_be_a_pause_state() -> None:
    with pytest.raises(ValidationError) as info:
        PauseWindow(state="active", duration_s=1.0)
    assert "paused_capacity" in str(info.value)


def test_durations_may_be_bare_seconds_seconds_or_milliseconds() -> None:
    bare, seconds, millis = (FaultProfile.parse(f"paused_capacity={text}").windows[0] for text in ("2", "2s", "2000ms"))
    assert bare.duration_s == seconds.duration_s == millis.duration_s == 2.0
    window = FaultProfile.parse({"paused_rate_limit": {"duration_s": 0.5, "period_s": "3"}}).windows[0]
    assert (window.duration_s, window.period_s) == (0.5, 3.0)


def test_to_json_round_trips_and_leaves_out_an_unset_stream_delay() -> None:
    profile = FaultProfile.parse("seed=9,retrieve_future.429=0.5,latency_ms=20,paused_capacity=1s/4s")
    data = profile.to_json()
    assert "sse_slow_ms" not in data
    assert data["retrieve_future.429"] == 0.5 and data["latency_ms"] == 20
    assert FaultProfile.parse(data) == profile
    slow = FaultProfile.parse("sse_slow_ms=150")
    assert slow.to_json()["sse_slow_ms"] == 150 and FaultProfile.parse(slow.to_json()) == slow


def test_the_injector_reports_the_window_in_force_and_its_time_left() -> None:
    now = [100.0]
    injector = FaultInjector(FaultProfile.parse("paused_rate_limit=1s/4s"), clock=lambda: now[0])
    window, left = injector.pause() or (None, 0.0)
    assert window is not None and window.state == "paused_rate_limit" and left == pytest.approx(1.0)
    now[0] += 2.0
    assert injector.pause() is None  # between windows
    now[0] += 2.5
    assert injector.pause() == (window, pytest.approx(0.5))  # the next period's window


def test_a_spec_with_a_reason_and_no_window_is_refused() -> None:
    with pytest.raises(ValidationError) as info:
        FaultProfile.parse("paused_capacity.reason=maintenance")
    assert "a reason needs a paused_capacity=DUR[/PERIOD] window" in str(info.value)


@pytest.mark.parametrize("field", ["max_concurrent_generations", "max_num_samples", "max_connections_per_peer"])
def test_a_count_must_be_a_whole_number(field: str) -> None:
    with pytest.raises(ValidationError, match=f"{field} must be a positive whole number, got 1.5") as caught:
        ServerSettings(**{field: 1.5})
    assert caught.value.field == field and caught.value.value == 1.5
