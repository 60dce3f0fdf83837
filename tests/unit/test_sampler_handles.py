"""Sampler handles that decode to something else, and the stand-in for a client that could not be restored."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest

from tinkex._sampling.pickling import UnrestoredClient, decode_handle
from tinkex.errors import ValidationError


@pytest.mark.parametrize("payload", [["s:sample:0"], {"base_url": "http://x"}, {"sampling_session_id": 7}])
def test_valid_base64_json_that_is_not_a_handle_is_refused(payload: Any) -> None:
    handle = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()
    with pytest.raises(ValidationError, match="not a sampler handle") as caught:
        decode_handle(handle)
    assert caught.value.field == "handle" and caught.value.value == handle[:40]


def test_the_stand_in_answers_protocol_lookups_as_a_plain_object() -> None:
    """copy, pickle and hasattr probe dunder names: those must not raise the restore error."""
    stand_in = UnrestoredClient(ValidationError("no key", field="api_key"))
    assert not hasattr(stand_in, "__len__") and not hasattr(stand_in, "__getstate_manager__")
    assert isinstance(copy.copy(stand_in), UnrestoredClient)
    stand_in.close()
    with pytest.raises(ValidationError, match="could not be restored in this process: no key") as caught:
        stand_in.sample  # noqa: B018
    assert caught.value.field == "api_key"
