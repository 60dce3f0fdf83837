"""Fixtures for tests against the real local server on 127.0.0.1.

``local_server`` is one shared :class:`~tinkex.server.LocalServer` (both models, short poll
hold) for tests that only add their own sessions; ``fresh_server(**settings)`` starts a private
one for tests that need their own settings, faults or clock. ``RawApi`` is a thin ``requests``
client that speaks the wire protocol directly (the SDK is not used here).
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest
import requests

from tinkex.server import LocalServer
from tinkex.server.models import DEFAULT_MODEL, ECHO_MODEL

API = "/api/v1/"
PROTOBUF = "application/x-protobuf"


class FakeClock:
    """A monotonic clock the test moves by hand. Thread-safe (a float read and a locked add)."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


class RawApi:
    """Wire-level calls to a server with one API key over a keep-alive ``requests.Session``."""

    def __init__(self, server: LocalServer, key: Optional[str] = None) -> None:
        self.server = server
        self.base = server.base_url + API
        self.key = server.api_key if key is None else key
        self.http = requests.Session()

    def close(self) -> None:
        self.http.close()

    def headers(self, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        out = {"X-API-Key": self.key} if self.key else {}
        out.update(extra or {})
        return out

    def post(
        self, route: str, body: Any = None, *, headers: Optional[Dict[str, str]] = None, **kw: Any
    ) -> requests.Response:
        return self.http.post(self.base + route, json=body, headers=self.headers(headers), timeout=30, **kw)

    def get(self, route: str, **kw: Any) -> requests.Response:
        return self.http.get(self.base + route, headers=self.headers(kw.pop("headers", None)), timeout=30, **kw)

    def ok(self, route: str, body: Any = None, **kw: Any) -> Any:
        response = self.post(route, body, **kw)
        assert response.status_code == 200, (route, response.status_code, response.text)
        return response.json()

    def session(self) -> str:
        body = {"tags": [], "user_metadata": {}, "sdk_version": "test", "type": "create_session"}
        return self.ok("create_session", body)["session_id"]

    def sampler(self, model: str = ECHO_MODEL, session_id: Optional[str] = None, seq: int = 0) -> str:
        body = {
            "session_id": session_id or self.session(),
            "sampling_session_seq_id": seq,
            "base_model": model,
            "type": "create_sampling_session",
        }
        return self.ok("create_sampling_session", body)["sampling_session_id"]

    def asample(self, body: Dict[str, Any], **kw: Any) -> requests.Response:
        return self.post("asample", body, headers={"X-Tinker-Sampling-Backpressure": "1"}, **kw)

    def retrieve(
        self, request_id: str, *, protobuf: bool = True, allow_metadata_only: bool = False
    ) -> requests.Response:
        headers = {"Accept": PROTOBUF} if protobuf else {}
        body = {"request_id": request_id, "allow_metadata_only": allow_metadata_only}
        return self.post("retrieve_future", body, headers=headers)

    def result(self, request_id: str, *, protobuf: bool = True, polls: int = 50) -> requests.Response:
        """Poll until the answer is not try_again."""
        for _ in range(polls):
            response = self.retrieve(request_id, protobuf=protobuf)
            if response.status_code != 200 or PROTOBUF in response.headers.get("Content-Type", ""):
                return response
            if response.json().get("type") != "try_again":
                return response
        raise AssertionError(f"{request_id} still pending after {polls} polls")


def sample_body(
    sampling_session_id: Optional[str],
    seq_id: Optional[int],
    tokens: Optional[List[int]] = None,
    **overrides: Any,
) -> Dict[str, Any]:
    """An asample body as the official SDK sends it, with ``overrides`` on top."""
    params = {"max_tokens": 8, "seed": 7, "temperature": 1.0, "top_k": -1, "top_p": 1.0}
    params.update(overrides.pop("sampling_params", {}))
    body: Dict[str, Any] = {
        "num_samples": 1,
        "prompt": {"chunks": [{"tokens": tokens if tokens is not None else list(b"Hello"), "type": "encoded_text"}]},
        "sampling_params": params,
        "sampling_session_id": sampling_session_id,
        "seq_id": seq_id,
        "prompt_logprobs": False,
        "topk_prompt_logprobs": 0,
        "topk_sample_logprobs": 0,
        "prompt_alt_tokens_k": 0,
        "record_stability_info": False,
        "type": "sample",
    }
    body.update(overrides)
    return {key: value for key, value in body.items() if value is not None}


@pytest.fixture(scope="session")
def local_server() -> Iterator[LocalServer]:
    """One server for the whole run: both models, 0.5 s poll hold."""
    with LocalServer(models=(DEFAULT_MODEL, ECHO_MODEL), poll_hold_s=0.5) as server:
        yield server


@pytest.fixture
def api(local_server: LocalServer) -> Iterator[RawApi]:
    client = RawApi(local_server)
    yield client
    client.close()


@pytest.fixture
def fresh_server() -> Iterator[Callable[..., LocalServer]]:
    """Factory: ``fresh_server(**LocalServer kwargs)`` starts a private server, stopped after the test."""
    started: List[LocalServer] = []

    def start(**kwargs: Any) -> LocalServer:
        kwargs.setdefault("models", (ECHO_MODEL,))
        kwargs.setdefault("poll_hold_s", 0.5)
        server = LocalServer(**kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
