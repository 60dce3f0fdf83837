"""A scripted Tinker service on a ScriptedServer: the handshake answered, the sampling path scripted.

Used by tests that need an exact sequence of answers (one 429, then a 200) which a seeded
fault profile cannot promise. Time is virtual: sleeps are recorded and advance the clock.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Dict, List, Optional

from tests.scripted_server import Answer, Recorded, ScriptedServer
from tinkex._clock import Clock
from tinkex._wire.proto import encode_sample_response
from tinkex.types import SampledSequence, SampleResponse, StopReason

KEY = "tml-fake-tinker-key-42"
SSID = "sess-1:sample:0"


class VirtualTime:
    """A clock whose sleeps return at once and move time forward. Thread-safe: one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._offset = 0.0
        self.sleeps: List[float] = []

    def monotonic(self) -> float:
        with self._lock:
            return time.monotonic() + self._offset

    def sleep(self, seconds: float, stop: Any = None) -> bool:
        with self._lock:
            self.sleeps.append(round(seconds, 6))
            self._offset += max(seconds, 0.0)
        time.sleep(0.001)
        return bool(stop is not None and stop.is_set())

    def clock(self) -> Clock:
        return Clock(monotonic=self.monotonic, random=lambda: 0.5, sleeper=self.sleep)


def result_answer(tokens: Optional[List[int]] = None, prompt_logprobs: Optional[list] = None) -> Answer:
    response = SampleResponse(
        sequences=[SampledSequence(tokens=tokens or [7, 8, 9], logprobs=[-0.5] * len(tokens or [7, 8, 9]),
                                   stop_reason=StopReason.LENGTH)],
        prompt_logprobs=prompt_logprobs,
    )
    return Answer(body=encode_sample_response(response), headers=(("Content-Type", "application/x-protobuf"),))


def json_answer(status: int, body: Dict[str, Any]) -> Answer:
    return Answer(status=status, body=json.dumps(body).encode())


def promise_for(recorded: Recorded) -> Answer:
    seq_id = json.loads(recorded.body)["seq_id"]
    return json_answer(200, {"request_id": f"req-{seq_id}", "sample_sequence_ids": [f"req-{seq_id}:seq:0"]})


class FakeTinker(ScriptedServer):
    """The handshake routes answer by default; tests queue the sampling path."""

    def __init__(self, client_config: Optional[Dict[str, Any]] = None,
                 dynamic_config: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        self.always("/api/v1/client/config", json_answer(200, client_config or {}))
        if dynamic_config is not None:
            self.always("/api/v1/client/dynamic_config", json_answer(200, dynamic_config))
        self.always("/api/v1/create_session", json_answer(200, {"session_id": "sess-1"}))
        self.always("/api/v1/create_sampling_session", json_answer(200, {"sampling_session_id": SSID}))
        self.always("/api/v1/session_heartbeat", json_answer(200, {}))
        self.always("/api/v1/sessions/sess-1/finish", json_answer(200, {}))
        self.always("/api/v1/telemetry", json_answer(200, {"status": "accepted"}))
        self.always("/api/v1/cancel_future", json_answer(200, {}))
        self.always("/api/v1/asample", promise_for)

    def seq_ids(self) -> List[int]:
        return [json.loads(call.body)["seq_id"] for call in self.calls("/api/v1/asample")]

    def poll_bodies(self) -> List[Dict[str, Any]]:
        return [json.loads(call.body) for call in self.calls("/api/v1/retrieve_future")]
