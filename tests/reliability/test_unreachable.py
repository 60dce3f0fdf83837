"""A wrong URL or a dead host: said at once, in words, with what happens next (issue 14 item 3).

The first connection retry of a call is a WARNING naming the URL, the cause and the next
step; later retries are DEBUG. ``APIConnectionError`` names the URL and the cause in words, not
urllib3 class names. A sample against a host that went away fails after the submit window
(``SubmitPolicy.window``, 60 s: about 30 s of refused connections), not after minutes.
"""

from __future__ import annotations

import logging
import time

import pytest

import tinkex
from tests.reliability.hostile_server import unused_port
from tinkex import errors, types
from tinkex.server import LocalServer

KEY = "tml-unreachable-2222"
LIBRARY_WORDS = ("urllib3", "NewConnectionError", "HTTPConnectionPool", "Max retries", "object at 0x", "Errno")


def test_the_first_connection_retry_warns_with_the_url_and_what_comes_next(caplog: pytest.LogCaptureFixture
                                                                           ) -> None:
    base_url = f"http://127.0.0.1:{unused_port()}"
    caplog.set_level(logging.DEBUG, logger="tinkex")
    with tinkex.ServiceClient(api_key=KEY, base_url=base_url, max_retries=3) as service, \
            pytest.raises(errors.APIConnectionError):
        service.create_sampling_client(base_model="m")
    retries = [r for r in caplog.records if r.name == "tinkex._http.transport" and "retrying in" in r.getMessage()]
    assert [r.levelno for r in retries] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    first = retries[0].getMessage()
    assert base_url + "/api/v1/client/config" in first
    assert "connection refused" in first and "retry 1 of 3" in first
    assert not any(word in first for word in LIBRARY_WORDS), first


@pytest.mark.parametrize("case", ["refused", "unresolvable"])
def test_a_connection_error_names_the_url_and_the_cause_in_words(case: str) -> None:
    base_url = f"http://127.0.0.1:{unused_port()}" if case == "refused" else "http://no-such-host.invalid"
    words = "connection refused" if case == "refused" else "could not be resolved"
    with tinkex.ServiceClient(api_key=KEY, base_url=base_url, max_retries=0) as service, \
            pytest.raises(errors.APIConnectionError) as caught:
        service.create_sampling_client(base_model="m")
    message = str(caught.value)
    assert caught.value.url == base_url + "/api/v1/client/config"
    assert base_url in message and words in message, message
    assert not any(word in message for word in LIBRARY_WORDS), message


@pytest.mark.slow
def test_a_sample_against_a_host_that_went_away_fails_within_the_submit_window(caplog: pytest.LogCaptureFixture
                                                                              ) -> None:
    caplog.set_level(logging.WARNING, logger="tinkex")
    with LocalServer(models=["tinkex/echo"]) as server, \
            tinkex.ServiceClient(api_key=KEY, base_url=server.base_url) as service:
        client = service.create_sampling_client(base_model="tinkex/echo")
        server.stop()
        started = time.monotonic()
        error = client.sample(types.ModelInput.from_ints([1]), 1, types.SamplingParams(max_tokens=2)).exception(90)
        elapsed = time.monotonic() - started
    assert isinstance(error, errors.APIConnectionError), repr(error)
    assert "connection refused" in str(error)
    assert 25.0 < elapsed < 45.0, f"failed after {elapsed:.1f}s"
    warned = [r.getMessage() for r in caplog.records if "resubmitting the sample" in r.getMessage()]
    assert len(warned) == 1 and server.base_url in warned[0], warned
