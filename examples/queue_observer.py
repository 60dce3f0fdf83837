"""Watch the server's queue state: an observer told when a request is paused and resumed.

    python examples/queue_observer.py

The local server is started with a fault profile that pauses sampling for its first 2.5 s
(``paused_capacity``), as a busy Tinker deployment would. While a request waits, every poll
answer carries a queue state; the client passes each change to the observer given to
``create_sampling_client``. Without one, it logs a debounced WARNING instead:
``Sampling is paused for <sampling session>. Reason: <reason>``.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Mapping

from _connect import MODEL, connect

from tinkex import types
from tinkex.types import QueueState


class PrintingObserver:
    """Prints each queue-state change. Called from the client's worker threads, hence the lock."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.changes = 0
        self._lock = threading.Lock()

    def on_queue_state_change(self, state: QueueState, metadata: Mapping[str, Any]) -> None:
        with self._lock:
            self.changes += 1
            elapsed = time.monotonic() - self.started
            reason = metadata.get("queue_state_reason") or "-"
            print(f"{elapsed:5.2f}s  request {metadata['request_id']}: {state.value} ({reason})")

    def completed(self, _future: Any) -> None:
        with self._lock:
            print(f"{time.monotonic() - self.started:5.2f}s  a sample completed")


def main() -> None:
    observer = PrintingObserver()
    with connect(faults="paused_capacity=2.5s", poll_hold_s=0.25) as service:
        client = service.create_sampling_client(base_model=MODEL, queue_state_observer=observer)
        prompt = types.ModelInput.from_text("Queues", tokenizer=client.get_tokenizer())
        futures = [client.sample(prompt, 1, types.SamplingParams(max_tokens=20, seed=i)) for i in range(3)]
        for future in futures:
            future.add_done_callback(observer.completed)
        for future in futures:
            future.result(timeout=60)
    elapsed = time.monotonic() - observer.started
    print(f"{len(futures)} samples done after {elapsed:.2f} s; the observer saw {observer.changes} changes")


if __name__ == "__main__":
    main()
