"""Fuzzing every decoder of server input: only DecodeError / ValidationError may escape, and
no input makes a decoder hang.

Targets: the protobuf SampleResponse decoder, the SSE parser and chunk decoder, the JSON
codec (``_codec.loads``, ``_codec.decode_sample_result``), every ``from_json`` in
:mod:`tinkex.types` and the Retry-After parser. Inputs are random bytes and JSON values, and
valid wire values damaged in random ways (a field replaced, dropped or added; bytes cut,
flipped, inserted), which reach far deeper into the decoders than noise does.

Budget: ``TINKEX_FUZZ_EXAMPLES`` examples per property (``make fuzz`` sets 20,000; the
default run uses a small one). "Never a hang" is a Hypothesis deadline per example, generous
enough for a loaded 2-core machine, plus the per-test timeout.

``atheris`` (coverage-guided): a wheel exists for CPython 3.11 on Linux x86-64 (3.0.0), but it
is not a dependency; when it is importable, ``test_atheris_protobuf_and_sse`` runs a bounded
campaign in a child process (``python tests/unit/test_fuzz.py RUNS``), otherwise it is skipped.
"""

from __future__ import annotations

import datetime
import inspect
import os
import subprocess
import sys
from typing import Any, Callable, Dict, List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import strategies as wire
from tinkex import types
from tinkex._http import sse as _sse
from tinkex._policy import parse_retry_after
from tinkex._wire import codec as _codec
from tinkex._wire import proto as _proto
from tinkex.errors import DecodeError, ValidationError

ALLOWED = (DecodeError, ValidationError)
EXAMPLES = int(os.environ.get("TINKEX_FUZZ_EXAMPLES", "") or 100)
FUZZ = settings(max_examples=EXAMPLES, deadline=datetime.timedelta(seconds=5),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- inputs ------------------------------------------------------------------------------------

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.sampled_from(["", "try_again", "complete_metadata", "stop", "length", "user", "encoded_text", "image",
                     "sample", "\ud800", "tml-x", "paused_capacity", "0", "-1", "1e400"]),
)
json_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=12), inner, max_size=5)),
    max_leaves=30,
)


def _valid_wire_values() -> st.SearchStrategy[Any]:
    """to_json() of valid values of every kind the wire carries."""
    return st.one_of(
        wire.sample_requests.map(lambda v: v.to_json()),
        wire.sampling_params.map(lambda v: v.to_json()),
        wire.model_inputs().map(lambda v: v.to_json()),
        wire.sample_responses().map(lambda v: v.to_json()),
        st.just({"type": "try_again", "request_id": "r", "queue_state": "paused_capacity"}),
        st.just({"status": "complete_metadata", "response_payload_size": 96}),
        st.just({"error": "x", "category": "user"}),
        st.just({"request_id": "r", "model_id": "m", "sample_sequence_ids": ["r:seq:0"]}),
        st.just({"session_id": "s", "type": "create_session", "info_message": "hi"}),
        st.just({"sampler_id": "s", "base_model": "m", "model_path": None}),
        st.just({"supported_models": [{"model_name": "m", "max_context_length": 5}]}),
        st.just({"refresh_interval_sec": 300, "sample_cancel_enabled": True}),
    )


@st.composite
def damaged_json(draw: st.DrawFn) -> Any:
    """A valid wire value with a few nested values replaced, dropped or added."""
    value = draw(_valid_wire_values())
    for _ in range(draw(st.integers(1, 3))):
        value = _mutate(draw, value)
    return value


def _mutate(draw: st.DrawFn, value: Any) -> Any:
    if isinstance(value, dict) and value and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(value)))
        action = draw(st.sampled_from(["replace", "drop", "recurse", "add"]))
        out = dict(value)
        if action == "replace":
            out[key] = draw(json_values)
        elif action == "drop":
            del out[key]
        elif action == "add":
            out[draw(st.text(max_size=8))] = draw(json_values)
        else:
            out[key] = _mutate(draw, value[key])
        return out
    if isinstance(value, list) and value and draw(st.booleans()):
        index = draw(st.integers(0, len(value) - 1))
        out_list = list(value)
        out_list[index] = _mutate(draw, value[index]) if draw(st.booleans()) else draw(json_values)
        return out_list
    return draw(json_values)


wire_json = st.one_of(json_values, damaged_json())


def _decoders() -> Dict[str, Callable[[Any], Any]]:
    """Every ``from_json`` reachable from tinkex.types, chunk classes included."""
    found: Dict[str, Callable[[Any], Any]] = {}
    for name in dir(types):
        cls = getattr(types, name)
        if inspect.isclass(cls) and callable(getattr(cls, "from_json", None)):
            found[name] = cls.from_json
    for cls in (types.EncodedTextChunk, types.ImageChunk, types.ImageAssetPointerChunk):
        if callable(getattr(cls, "from_json", None)):
            found[cls.__name__] = cls.from_json
    return found


DECODERS = _decoders()


def test_every_wire_type_has_a_decoder_under_fuzz() -> None:
    assert {"SampleResponse", "SamplePromise", "SampleRequest", "TryAgainResponse", "ClientConfig",
            "ModelInput", "SamplingParams", "CreateSessionResponse"} <= set(DECODERS)


def expect_only_typed_errors(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except ALLOWED:
        return None


# -- JSON decoders -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DECODERS))
@FUZZ
@given(value=wire_json)
def test_from_json_raises_only_typed_errors(name: str, value: Any) -> None:
    expect_only_typed_errors(lambda: DECODERS[name](value))


@FUZZ
@given(data=st.one_of(
    st.binary(max_size=300),
    wire_json.map(lambda v: _codec.dumps(v) if _encodable(v) else b"[]"),
    st.builds(lambda v, cut: _codec.dumps(v)[:cut] if _encodable(v) else b"{", damaged_json(), st.integers(0, 200)),
    st.integers(1, 5000).map(lambda depth: b"[" * depth + b"]" * depth),
    st.integers(1, 5000).map(lambda depth: b'{"a":' * depth + b"1" + b"}" * depth),
))
def test_codec_loads_raises_only_decode_errors(data: bytes) -> None:
    try:
        _codec.loads(data, what="fuzz")
    except DecodeError:
        pass


def _encodable(value: Any) -> bool:
    try:
        _codec.dumps(value)
    except ValidationError:
        return False
    return True


@FUZZ
@given(body=st.one_of(st.binary(max_size=300), wire.damaged_messages(),
                      wire_json.map(lambda v: _codec.dumps(v) if _encodable(v) else b"")),
       content_type=st.sampled_from([None, "", "application/x-protobuf", "application/json", "text/html",
                                     "APPLICATION/X-PROTOBUF; charset=binary", "application/json; charset=latin-1"]))
def test_decode_sample_result_raises_only_typed_errors(body: bytes, content_type: Any) -> None:
    expect_only_typed_errors(lambda: _codec.decode_sample_result(body, content_type))


# -- protobuf ----------------------------------------------------------------------------------


@FUZZ
@given(data=st.one_of(st.binary(max_size=400), wire.damaged_messages(),
                      wire.protobuf_messages().map(lambda m: m.SerializeToString())))
def test_protobuf_decoder_raises_only_decode_errors(data: bytes) -> None:
    expect_only_typed_errors(lambda: _proto.decode_sample_response(data))


@FUZZ
@given(length=st.integers(0, 2**64), field=st.integers(1, 6))
def test_protobuf_huge_declared_lengths_fail_fast(length: int, field: int) -> None:
    """A length prefix far past the end of the data is refused, never allocated or waited for."""
    key = bytes([(field << 3) | 2])
    expect_only_typed_errors(lambda: _proto.decode_sample_response(key + _varint(length) + b"\x00" * 8))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


# -- SSE ---------------------------------------------------------------------------------------

_field_lines = st.one_of(
    st.sampled_from([b"event: token", b"event: done", b"event: error", b"event: ping", b"event:", b": keep-alive",
                     b"id: 7", b"retry: 10", b"retry: x", b"data", b"data:", b"event", b":", b"\xef\xbb\xbfdata: {}"]),
    wire_json.map(lambda v: b"data: " + (_codec.dumps(v) if _encodable(v) else b"{")),
    st.binary(max_size=40),
)
_line_ends = st.sampled_from([b"\n", b"\r\n", b"\r"])


@st.composite
def sse_bodies(draw: st.DrawFn) -> List[bytes]:
    """SSE-ish text (fields, payloads, noise, mixed line endings), split into random chunks."""
    body = b"".join(draw(_field_lines) + draw(_line_ends) for _ in range(draw(st.integers(0, 12))))
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=8)))
    return [body[a:b] for a, b in zip([0] + cuts, cuts + [len(body)])]


@FUZZ
@given(chunks=st.one_of(sse_bodies(), st.lists(st.binary(max_size=60), max_size=8)))
def test_sse_parser_and_chunk_decoder_raise_only_typed_errors(chunks: List[bytes]) -> None:
    def parse() -> None:
        for event in _sse.iter_events(chunks, max_event_bytes=4096):
            expect_only_typed_errors(lambda e=event: _sse.decode_chunk(e))
    expect_only_typed_errors(parse)


@FUZZ
@given(name=st.sampled_from(["token", "done", "error", "message", ""]), data=wire_json)
def test_sse_chunk_decoder_on_any_json(name: str, data: Any) -> None:
    text = _codec.dumps(data).decode() if _encodable(data) else "{"
    expect_only_typed_errors(lambda: _sse.decode_chunk(_sse.ServerEvent(name, text)))


def test_an_endless_sse_line_is_refused_not_buffered() -> None:
    chunks = (b"data: " + b"x" * 65536 for _ in range(64))  # 4 MiB without a line end
    with pytest.raises(DecodeError):
        list(_sse.iter_events(chunks, max_event_bytes=1024 * 1024))


# -- headers -----------------------------------------------------------------------------------


@FUZZ
@given(headers=st.dictionaries(st.sampled_from(["retry-after", "retry-after-ms"]),
                               st.one_of(st.text(max_size=40), st.sampled_from(
                                   ["nan", "inf", "-1", "1e999", "Wed, 21 Oct 2015 07:28:00 GMT", "Mon, 99 Foo"]))))
def test_retry_after_parser_never_raises(headers: Dict[str, str]) -> None:
    parse_retry_after(headers, now=1_700_000_000.0)


# -- atheris (coverage-guided), where it installs -----------------------------------------------


def test_atheris_protobuf_and_sse() -> None:
    pytest.importorskip("atheris", reason="atheris is not installed (optional; see the module docstring)")
    runs = str(max(EXAMPLES, 2000))
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, __file__, runs], capture_output=True, text=True, timeout=600, cwd=root,
                          env={**os.environ, "PYTHONPATH": path})
    assert done.returncode == 0, done.stderr[-3000:]


def _atheris_one_input(data: bytes) -> None:
    for target in (lambda: _proto.decode_sample_response(data),
                   lambda: _codec.decode_sample_result(data, "application/json"),
                   lambda: [_sse.decode_chunk(e) for e in _sse.iter_events([data[:17], data[17:]])]):
        try:
            target()
        except ALLOWED:
            pass


if __name__ == "__main__":  # the atheris campaign, run as a child process by the test above
    import atheris

    atheris.instrument_all()  # coverage feedback for the decoders already imported above
    atheris.Setup([sys.argv[0], f"-atheris_runs={sys.argv[1]}"], _atheris_one_input)
    atheris.Fuzz()
