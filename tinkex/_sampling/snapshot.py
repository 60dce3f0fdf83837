"""The values one sample call runs on: the client's published snapshot and the call itself."""

from __future__ import annotations

import threading
from typing import Any, Dict, Optional

import attrs

from .._clock import Clock
from .._http import Abort
from .._limits import estimate_bytes
from .._policy import PollPolicy, RetryConfig
from ..errors import ValidationError
from ..types import ClientConfig, DynamicConfig, ModelInput, SampleRequest

__all__ = ["Snapshot", "SampleCall"]


@attrs.frozen
class Snapshot:
    """A SamplingClient's published configuration; replaced whole, read without a lock."""

    session_id: str
    sampling_session_id: str
    base_model: Optional[str]
    model_path: Optional[str]
    client_config: ClientConfig
    dynamic_config: DynamicConfig
    retry_config: RetryConfig
    poll_policy: PollPolicy
    tokenizer_id: Optional[str] = None
    stream_supported: bool = True

    @property
    def billing_window(self) -> float:
        """The longest billing pause of one incident (the poll policy may override the server's)."""
        window = self.poll_policy.billing_window
        return self.client_config.billing_exception_max_pause_duration_sec if window is None else window


@attrs.frozen
class SampleCall:
    """One logical call: its body (without ``seq_id``), size estimate, deadline and cancel event."""

    body: Dict[str, Any]
    estimated_bytes: int
    deadline: Optional[float]
    sdk_method: str
    cancel: threading.Event = attrs.field(factory=threading.Event)
    abort: Abort = attrs.field(factory=Abort)  # cuts the call's HTTP request in progress when it is cancelled

    @classmethod
    def of(cls, request: SampleRequest, prompt: ModelInput, timeout: Optional[float], clock: Clock,
           sdk_method: str) -> SampleCall:
        """The call for ``request``: its JSON without ``seq_id`` (each attempt adds its own) and the
        deadline ``timeout`` seconds from now.

        Raises:
            ValidationError: ``timeout`` is not a positive number of seconds.
        """
        body = request.to_json()
        body.pop("seq_id", None)
        return cls(body=body, estimated_bytes=estimate_bytes(prompt), deadline=_deadline(timeout, clock),
                   sdk_method=sdk_method)


def _deadline(timeout: Optional[float], clock: Clock) -> Optional[float]:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValidationError(f"timeout must be a positive number of seconds, got {timeout!r}", field="timeout",
                              value=timeout)
    return clock.monotonic() + float(timeout)
