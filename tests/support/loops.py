"""Building blocks for driving the sampling loops over the in-memory transport."""

from __future__ import annotations

import itertools
from typing import Any, List, Optional, Tuple

from tests.support.virtual_clock import VirtualClock
from tinkex._config import Config
from tinkex._http import FakeTransport
from tinkex._limits import SessionLimits
from tinkex._policy import PollPolicy, RetryConfig
from tinkex._sampling.call import Sampler
from tinkex._sampling.snapshot import SampleCall, Snapshot
from tinkex._sampling.submit import Submitter
from tinkex._sampling.target import SamplingTarget, TargetSpec
from tinkex._session import Holder
from tinkex._wire.proto import encode_sample_response
from tinkex.queue_state import QueueStateReporter
from tinkex.telemetry import Telemetry
from tinkex.types import ClientConfig, DynamicConfig, QueueState, SampledSequence, SampleResponse, StopReason

KEY = "tml-unit-loops-key"


class Observer:
    """Records queue-state reports."""

    def __init__(self) -> None:
        self.reports: List[Tuple[QueueState, Optional[str]]] = []

    def on_queue_state_change(self, state: QueueState, metadata: Any) -> None:
        self.reports.append((state, metadata.get("queue_state_reason")))


def fake(clock: VirtualClock) -> FakeTransport:
    return FakeTransport(Config.from_env(api_key=KEY, base_url="http://fake.invalid"), clock=clock.clock())


def snapshot(**client_config: Any) -> Snapshot:
    return Snapshot(
        session_id="sess-1", sampling_session_id="sess-1:sample:0", base_model="m", model_path=None,
        client_config=ClientConfig(**client_config), dynamic_config=DynamicConfig(),
        retry_config=RetryConfig(), poll_policy=PollPolicy(),
    )


def call(deadline: Optional[float] = None, estimated_bytes: int = 100) -> SampleCall:
    return SampleCall(body={"num_samples": 1}, estimated_bytes=estimated_bytes, deadline=deadline,
                      sdk_method="unit")


def result_bytes(tokens: Tuple[int, ...] = (7, 8, 9)) -> Tuple[int, bytes, dict]:
    response = SampleResponse(sequences=[SampledSequence(tokens=list(tokens), logprobs=[-0.5] * len(tokens),
                                                         stop_reason=StopReason.LENGTH)])
    return 200, encode_sample_response(response), {"content-type": "application/x-protobuf"}


def promise(seq_id: Any = 0) -> dict:
    return {"request_id": f"req-{seq_id}", "sample_sequence_ids": [f"req-{seq_id}:seq:0"]}


def promise_for_seq(recorded: Any) -> dict:
    return promise(recorded.body["seq_id"])


class Rig:
    """A Sampler over a FakeTransport with virtual time; ``observer`` sees queue states."""

    def __init__(self, **client_config: Any) -> None:
        self.time = VirtualClock()
        self.clock = self.time.clock()
        self.transport = fake(self.time)
        self.limits = SessionLimits(self.clock)
        self.telemetry = Telemetry()
        self.observer = Observer()
        reporter = QueueStateReporter(self.observer, {"session_id": "sess-1"})
        self.submitter = Submitter(self.transport, self.limits, telemetry=self.telemetry, clock=self.clock,
                                   reporter=reporter)
        self.holder = Holder(self.transport.config, clock=self.clock, transport=self.transport)
        self.target = SamplingTarget(self.holder, TargetSpec(base_model="m"), RetryConfig(), PollPolicy())
        self.state = self.target.publish(snapshot(**client_config))
        self.sampler = Sampler(self.submitter, self.target, self.limits, telemetry=self.telemetry,
                               reporter=reporter, clock=self.clock, seq_ids=itertools.count())

    def seq_ids(self, path: str = "asample") -> List[int]:
        return [c.body["seq_id"] for c in self.transport.calls_to(path)]
