"""The floor under tinkex's CPU per sample: the same asample + retrieve_future by hand, one at a time.

Two loops do exactly what one ``sample()`` does on the wire -- POST asample (JSON), then POST
retrieve_future with ``allow_metadata_only: true`` until the server says the result is ready
(``complete_metadata``), then once more with ``false`` for the result (protocol.md 4.9) -- on one
keep-alive connection, with the same headers tinkex sends (protocol.md 2.4 asks for
them: the SDK's identity, idempotency key, read timeout, retry count, request type and
iteration), with no threads, no retries and no decoding beyond the promise's JSON: one over the standard library's
``http.client`` (the lowest Python floor) and one over a bare ``urllib3.HTTPConnectionPool``
(the HTTP stack tinkex itself runs on). ``bench/client_overhead.py`` runs them beside tinkex's
own one-at-a-time loop in the same process against the same server.
"""

from __future__ import annotations

import http.client
import json
import time
from typing import Any, Callable, Dict
from urllib.parse import urlsplit

import urllib3

Loop = Callable[[int], None]


def _headers(api_key: str) -> Dict[str, str]:
    """The headers of every tinkex call, with the values of a typical one (protocol.md 2.4)."""
    return {
        "Accept": "application/x-protobuf, application/json", "User-Agent": "tinkex-floor/0 python/3",
        "Accept-Encoding": "gzip, deflate", "Connection": "keep-alive", "X-API-Key": api_key,
        "x-stainless-read-timeout": "45.0", "X-Idempotency-Key": "tinkex-retry-floor",
        "Content-Type": "application/json", "x-stainless-retry-count": "0",
    }


ASAMPLE_HEADERS = {"X-Tinker-Sampling-Backpressure": "1", "x-sdk-method": "SamplingClient.sample"}
POLL_HEADERS = {"X-Tinker-Request-Iteration": "0", "X-Tinker-Request-Type": "Sample",
                "X-Stainless-Raw-Response": "raw", "X-Tinker-Create-Promise-Roundtrip-Time": "0.0"}


def _bodies(sampling_session_id: str, request: Dict[str, Any], first_seq: int) -> Callable[[int], bytes]:
    def body(i: int) -> bytes:
        return json.dumps(dict(request, seq_id=first_seq + i, sampling_session_id=sampling_session_id)).encode()
    return body


def _finished(status: int, content_type: str, data: bytes) -> bool:
    if status != 200:
        raise RuntimeError(f"retrieve_future answered {status}: {data[:200]!r}")
    return "protobuf" in content_type or b'"try_again"' not in data


def _retrieve(post: Callable[[str, bytes], tuple], request_id: str) -> None:
    """Poll as the protocol says: metadata first, then the result."""
    metadata_only = True
    while True:
        poll = json.dumps({"request_id": request_id, "allow_metadata_only": metadata_only}).encode()
        status, content_type, data = post("/api/v1/retrieve_future", poll)
        if metadata_only and status == 200 and b'"complete_metadata"' in data:
            metadata_only = False
            continue
        if _finished(status, content_type, data):
            return


def _loop(post: Callable[[str, bytes], tuple], sampling_session_id: str, request: Dict[str, Any],
          first_seq: int) -> Loop:
    """``n`` samples one at a time through ``post`` (one HTTP call: path, body -> status, type, body)."""
    body = _bodies(sampling_session_id, request, first_seq)
    seq = [0]

    def run(n: int) -> None:
        for _ in range(n):
            _, _, data = post("/api/v1/asample", body(seq[0]))
            seq[0] += 1
            _retrieve(post, json.loads(data)["request_id"])

    return run


def _per_path(api_key: str) -> Dict[str, Dict[str, str]]:
    headers = _headers(api_key)
    return {"/api/v1/asample": dict(headers, **ASAMPLE_HEADERS),
            "/api/v1/retrieve_future": dict(headers, **POLL_HEADERS)}


def http_client_loop(url: str, api_key: str, sampling_session_id: str, request: Dict[str, Any]) -> Loop:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80)
    per_path = _per_path(api_key)

    def post(path: str, payload: bytes) -> tuple:
        conn.request("POST", path, payload, per_path[path])
        answer = conn.getresponse()
        return answer.status, answer.getheader("content-type", ""), answer.read()

    return _loop(post, sampling_session_id, request, 3 * 10**9)


def urllib3_loop(url: str, api_key: str, sampling_session_id: str, request: Dict[str, Any]) -> Loop:
    parts = urlsplit(url)
    pool = urllib3.HTTPConnectionPool(parts.hostname or "127.0.0.1", parts.port or 80, maxsize=1)
    per_path = _per_path(api_key)

    def post(path: str, payload: bytes) -> tuple:
        answer = pool.urlopen("POST", path, body=payload, headers=per_path[path], retries=False)
        return answer.status, answer.headers.get("content-type", ""), answer.data

    return _loop(post, sampling_session_id, request, 4 * 10**9)


def transport_loop(client: Any, request: Dict[str, Any]) -> Loop:
    """The same two calls through tinkex's own ``Transport.request`` on the calling thread: what
    tinkex's HTTP layer adds to urllib3 (headers, retries, deadline watch, body cap)."""
    transport = client._engine.transport  # a benchmark may read privates

    def post(path: str, payload: bytes) -> tuple:
        headers = ASAMPLE_HEADERS if path.endswith("asample") else POLL_HEADERS
        answer = transport.request("POST", path.rsplit("/", 1)[1], body=payload, max_retries=0, headers=headers,
                                   check=False)
        return answer.status, answer.content_type, answer.content

    return _loop(post, client.sampling_session_id, request, 5 * 10**9)


def sampler_loop(client: Any, prompt: Any, params: Any) -> Loop:
    """Whole samples through tinkex's sampling layer on the calling thread (no worker, no future):
    request building and checks, seq_ids, gates, the poll loop and the typed, decoded result."""
    from tinkex._clock import SYSTEM_CLOCK
    from tinkex._sampling.request import Extras, build_request
    from tinkex._sampling.snapshot import SampleCall

    sampler, target = client._engine.sampler, client._target

    def run(n: int) -> None:
        for _ in range(n):
            request = build_request(prompt, params, 1, Extras())
            sampler.execute(target.current, SampleCall.of(request, prompt, None, SYSTEM_CLOCK, "bench"))

    return run


def sample_loop(client: Any, prompt: Any, params: Any) -> Loop:
    """Whole samples as a user takes them, one at a time: ``client.sample(...).result()``."""
    def run(n: int) -> None:
        for _ in range(n):
            client.sample(prompt, 1, params).result()

    return run


def unwoken_sample_loop(client: Any, prompt: Any, params: Any) -> Loop:
    """An experiment, not the product: ``sample().result()`` with the client's pool given nothing,
    so no worker wakes and the waiting caller runs each sample itself, as ``result()`` does. What it
    saves against :func:`sample_loop` is the price of waking a pool worker for a sample that its
    caller then runs: the only way to avoid it would be to start a sample only once someone waits
    for it, which tinkex does not do (``sample()`` starts the work at once, as the official SDK does)."""
    import concurrent.futures

    loop = sample_loop(client, prompt, params)

    def run(n: int) -> None:
        executor = client._engine.executor  # a benchmark may read privates; looked up each time, as
        # the client replaces a pool that grew large (after the burst) with a fresh one when idle
        executor.submit = lambda *_args, **_kwargs: concurrent.futures.Future()  # accepted, never run
        try:
            loop(n)
        finally:
            del executor.submit  # the instance attribute goes; the pool's method is back

    return run


def replayed_loops(client: Any, prompt: Any, params: Any) -> Dict[str, Loop]:
    """tinkex's two whole-sample loops with the transport's one network step replaying the answers
    of a real sample (recorded here first): what is left is tinkex's own Python, with no socket
    and no wait. Call ``restore_network(client)`` when done."""
    transport = client._engine.transport  # a benchmark may read privates
    real = transport._send_once
    answers: Dict[str, Any] = {}

    def record(method: str, path: str, *rest: Any) -> Any:
        answers[path] = real(method, path, *rest)
        return answers[path]

    transport._send_once = record
    client.sample(prompt, 1, params).result()
    transport._send_once = lambda method, path, *rest: answers[path]
    return {"tinkex Sampler.execute, network replayed": sampler_loop(client, prompt, params),
            "tinkex sample().result(), network replayed": sample_loop(client, prompt, params)}


def restore_network(client: Any) -> None:
    del client._engine.transport._send_once  # the instance attribute goes; the method is back


def handoff_loop() -> Loop:
    """A no-op submitted to a ``ThreadPoolExecutor`` and waited for, one at a time: the price of
    the hand-off to a worker thread and back, paid when a worker runs the sample (a bounded
    ``result(timeout)``, or a worker got there before the waiting caller)."""
    import concurrent.futures

    executor = concurrent.futures.ThreadPoolExecutor(max_workers=4)

    def run(n: int) -> None:
        for _ in range(n):
            executor.submit(int).result()

    return run


def cpu_us_per_sample(loop: Loop, n: int) -> float:
    """Process CPU (every thread) per sample of ``n`` samples run one at a time."""
    cpu0 = time.process_time()
    loop(n)
    return 1e6 * (time.process_time() - cpu0) / n
