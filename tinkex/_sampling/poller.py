"""Poller mode (protocol.md 4.10): one thread long-polls ``retrieve_futures`` for a whole sampling session.

In default mode each waiting sample holds a worker thread in its own ``retrieve_future``
poll. When the server announces ``sample_use_retrieve_futures``, a waiting sample holds no
thread at all: it is an entry in a :class:`CompletionPoller`, whose one thread asks the server
"what finished since cursor N?" and hands each finished request back to the caller's
``on_complete`` (which fetches the result with a short ``retrieve_future`` on a worker).

The cursor and acknowledgement rules: every poll sends the last ``cursor`` it got and the ids
fetched since the previous successful poll (``retrieved_request_ids``), so the server may
drop those payloads. Statuses follow :func:`tinkex._policy.classify` (phase ``FUTURES``):
transient answers are retried after 1 s forever, a 402 pauses within the billing window, and
anything else fails every waiting sample (and every later one) with a typed error -- a
broken poller never leaves a future pending. Deadlines are kept by bounding each long poll by
the earliest deadline waiting; a new waiter with an earlier one cuts the poll in progress.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

import attrs

from .._clock import Clock
from .._http import Abort, Response, Sender
from .._policy import Action, Phase, PollPolicy, classify
from ..errors import APIConnectionError, APIStatusError, APITimeoutError, DecodeError, TinkexError
from .billing import BillingPause

__all__ = ["Completion", "CompletionPoller"]

logger = logging.getLogger(__name__)

RETRY_DELAY = 1.0  # protocol.md 4.10: transient failures of retrieve_futures are retried after 1 s
ACK_READ_TIMEOUT = 5.0
# A completion can arrive before its sample registers (the promise's answer and the poll race);
# it is kept unacknowledged this long for its waiter, then acknowledged as nobody's.
UNCLAIMED_TTL = 300.0


@attrs.frozen
class Completion:
    """A finished (or failed) request, as ``retrieve_futures`` reported it."""

    request_id: str
    failed: bool = False
    size: Optional[int] = None


@attrs.define
class _Waiter:
    deadline: Optional[float]
    on_complete: Callable[[Completion], None]
    on_fail: Callable[[BaseException], None]


class CompletionPoller:
    """Waits for many requests of one sampling session (and clone) with one thread.

    Thread-safety: :meth:`wait`, :meth:`forget`, :meth:`acknowledge` and :meth:`close` may be
    called from any thread; one condition guards the waiters, the acknowledgements and the
    state. Callbacks run on the poller's thread, outside the lock, and must be quick (they
    hand work to the client's pool).
    """

    def __init__(self, transport: Sender, sampling_session_id: str, clone_id: int, *, clock: Clock,
                 policy: PollPolicy, billing_window: float) -> None:
        self._transport = transport
        self._target = {"type": "sampling_session", "sampling_session_id": sampling_session_id,
                        "cloned_sampler_id": clone_id}
        self.sampling_session_id = sampling_session_id
        self._clock = clock
        self._policy = policy
        self._billing_window = billing_window
        self._cond = threading.Condition()  # guards everything below
        self._waiters: Dict[str, _Waiter] = {}
        self._unclaimed: Dict[str, Tuple[float, Completion]] = {}
        self._acks: List[str] = []
        self._cursor = 0
        self._closed = False
        self._failure: Optional[BaseException] = None
        self._poll_abort: Optional[Abort] = None
        self._poll_until: Optional[float] = None  # when the poll in progress ends at the latest
        self._stop = threading.Event()  # set by close(): ends the pauses between polls
        self._thread = threading.Thread(target=self._run, name=f"tinkex-poller-{sampling_session_id}", daemon=True)
        self._thread.start()

    # -- called by samples ----------------------------------------------------------------------

    def wait(self, request_id: str, deadline: Optional[float], on_complete: Callable[[Completion], None],
             on_fail: Callable[[BaseException], None]) -> None:
        """Call ``on_complete`` when ``request_id`` finishes, ``on_fail`` at its deadline or if polling breaks."""
        with self._cond:
            failure = self._failure
            early = self._unclaimed.pop(request_id, None)
            if failure is None and early is None:
                self._waiters[request_id] = _Waiter(deadline, on_complete, on_fail)
                if deadline is not None and self._poll_until is not None and deadline < self._poll_until:
                    self._cut_poll()  # re-poll with a bound that honours this deadline
                self._cond.notify_all()
        if early is not None:
            on_complete(early[1])
        elif failure is not None:
            on_fail(failure)

    def forget(self, request_id: str) -> bool:
        """Stop waiting for ``request_id`` (cancelled); True if it was waiting."""
        with self._cond:
            found = self._waiters.pop(request_id, None) is not None
            if found:
                self._acks.append(request_id)  # the server may drop whatever it kept for it
                self._cond.notify_all()
        return found

    def acknowledge(self, request_id: str) -> None:
        """``request_id``'s result was fetched: say so in the next poll."""
        with self._cond:
            self._acks.append(request_id)
            self._cond.notify_all()

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._waiters)

    def close(self) -> None:
        """Stop polling now (a poll in progress is cut); idempotent. Waiters left get nothing more."""
        with self._cond:
            self._closed = True
            self._stop.set()
            self._cut_poll()
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(5.0)

    def _cut_poll(self) -> None:
        if self._poll_abort is not None:
            self._poll_abort.abort()

    # -- the poller's thread --------------------------------------------------------------------

    def _run(self) -> None:
        state = _LoopState(BillingPause(self._billing_window, self._clock))
        while True:
            prepared = self._next_poll()
            if prepared is None:
                return
            body, abort, read_timeout = prepared
            try:
                response = self._transport.request(
                    "POST", "retrieve_futures", body=body, read_timeout=read_timeout, max_retries=0, check=False,
                    abort=abort,
                )
            except APIConnectionError as exc:
                if not abort.aborted:  # a cut poll is re-sent at once; a real failure waits 1 s
                    logger.debug("retrieve_futures for %s failed (%s); retrying in 1 s", self.sampling_session_id, exc)
                    self._pause(RETRY_DELAY)
                continue
            try:
                self._handle(response, body, state)
            except TinkexError as exc:
                self._fail_all(exc)
                return

    def _next_poll(self) -> Optional[Tuple[Dict[str, Any], Abort, float]]:
        """Wait until there is something to poll for; expire deadlines; build the next poll (None: closed)."""
        while True:
            with self._cond:
                while not self._closed and not self._waiters and not self._acks:
                    self._cond.wait()
                if self._closed:
                    return None
                expired = self._expired()
                if not expired:
                    return self._build_poll()
            for request_id, waiter in expired:
                waiter.on_fail(APITimeoutError(f"Timed out waiting for request {request_id}",
                                               url=self._transport.url("retrieve_futures"), request_id=request_id))

    def _expired(self) -> List[Tuple[str, _Waiter]]:
        now = self._clock.monotonic()
        late = [(rid, w) for rid, w in self._waiters.items() if w.deadline is not None and w.deadline <= now]
        for request_id, _ in late:
            del self._waiters[request_id]
        return late

    def _build_poll(self) -> Tuple[Dict[str, Any], Abort, float]:
        body: Dict[str, Any] = {"target": self._target, "prev_cursor": self._cursor,
                                "retrieved_request_ids": list(self._acks)}
        deadlines = [w.deadline for w in self._waiters.values() if w.deadline is not None]
        read_timeout = self._policy.read_timeout
        if not self._waiters:
            body["timeout"], read_timeout = 0.0, ACK_READ_TIMEOUT  # only acknowledgements to deliver
        elif deadlines:
            body["timeout"] = max(min(deadlines) - self._clock.monotonic(), 0.01)
        self._poll_abort = Abort()
        self._poll_until = self._clock.monotonic() + float(body.get("timeout", read_timeout))
        return body, self._poll_abort, read_timeout

    def _handle(self, response: Response, body: Dict[str, Any], state: _LoopState) -> None:
        action = classify(Phase.FUTURES, response.status, response.content)
        if action is Action.DONE:
            state.bad_requests = 0
            self._deliver(response.json("retrieve_futures answer"), body["retrieved_request_ids"])
            return
        error = self._transport.error_for(response)
        if action is Action.RETRY:
            self._pause(RETRY_DELAY)
        elif action is Action.REPOLL_LIMITED:
            state.bad_requests += 1
            if state.bad_requests > self._policy.bad_request_repolls:
                raise self._broken(error)
            self._pause(RETRY_DELAY)
        elif action is Action.BILLING:
            try:
                state.billing.check(error)
            except APIStatusError as exc:
                raise self._broken(exc) from exc  # keeps the BillingError as the cause, like every other failure
            self._pause(self._policy.billing_delay)
        else:
            raise self._broken(error)

    def _broken(self, error: BaseException) -> TinkexError:
        broken = TinkexError(f"retrieve_futures polling failed for sampling session {self.sampling_session_id}: "
                             f"{error}")
        broken.__cause__ = error
        return broken

    def _deliver(self, answer: Any, acknowledged: List[str]) -> None:
        completions, cursor = _parse(answer)
        ready: List[Tuple[_Waiter, Completion]] = []
        with self._cond:
            del self._acks[:len(acknowledged)]  # those reached the server; later ones wait for the next poll
            self._cursor = max(self._cursor, cursor)
            for completion in completions:
                waiter = self._waiters.pop(completion.request_id, None)
                if waiter is not None:
                    ready.append((waiter, completion))
                else:  # its sample has not registered yet (or never will): keep it a while
                    self._unclaimed[completion.request_id] = (self._clock.monotonic(), completion)
            self._drop_stale_unclaimed()
        for waiter, completion in ready:
            waiter.on_complete(completion)

    def _drop_stale_unclaimed(self) -> None:
        """Under the lock: acknowledge completions nobody claimed within ``UNCLAIMED_TTL``."""
        cutoff = self._clock.monotonic() - UNCLAIMED_TTL
        for request_id in [rid for rid, (at, _) in self._unclaimed.items() if at < cutoff]:
            del self._unclaimed[request_id]
            self._acks.append(request_id)

    def _fail_all(self, error: BaseException) -> None:
        with self._cond:
            self._failure = error
            waiters = list(self._waiters.values())
            self._waiters.clear()
        logger.error("%s", error)
        for waiter in waiters:
            waiter.on_fail(error)

    def _pause(self, seconds: float) -> None:
        self._clock.sleep(seconds, self._stop)


@attrs.define
class _LoopState:
    """The poller loop's counters. Not thread-safe: the poller's thread only."""

    billing: BillingPause
    bad_requests: int = 0


def _parse(answer: Any) -> Tuple[List[Completion], int]:
    if not isinstance(answer, dict) or not isinstance(answer.get("completions"), list):
        raise DecodeError(f"retrieve_futures answered without a completions list: {str(answer)[:200]}")
    cursor = answer.get("cursor")
    if not isinstance(cursor, int) or isinstance(cursor, bool):
        raise DecodeError(f"retrieve_futures answered without an integer cursor: {cursor!r}")
    completions = []
    for item in answer["completions"]:
        request_id = item.get("request_id") if isinstance(item, dict) else None
        if not isinstance(request_id, str):
            raise DecodeError(f"retrieve_futures: a completion without a request_id: {item!r}")
        size = item.get("response_payload_uncompressed_size")
        completions.append(Completion(request_id=request_id, failed=item.get("state") == "failed",
                                      size=size if isinstance(size, int) and size > 0 else None))
    return completions, cursor
