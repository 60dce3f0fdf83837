"""The values one sample call runs on: the client's published snapshot and the call itself."""

from __future__ import annotations

import threading
from typing import Any, Dict, Optional

import attrs

from .._http import Abort
from .._policy import PollPolicy, RetryConfig
from ..types import ClientConfig, DynamicConfig

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
