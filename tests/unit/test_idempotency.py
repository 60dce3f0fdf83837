"""Idempotency keys: unique per call, and never shared between a process and its forked child."""

from __future__ import annotations

import os
import re

import pytest

from tinkex._http.idempotency import new_idempotency_key


def test_keys_have_the_prefix_and_128_bits_and_do_not_repeat() -> None:
    keys = [new_idempotency_key() for _ in range(10_000)]
    assert all(re.fullmatch(r"tinkex-retry-[0-9a-f]{32}", key) for key in keys)
    assert len(set(keys)) == len(keys)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_repeat_its_parents_keys() -> None:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send its next keys and leave at once
        os.close(read_end)
        os.write(write_end, " ".join(new_idempotency_key() for _ in range(5)).encode())
        os._exit(0)
    os.close(write_end)
    parents = {new_idempotency_key() for _ in range(5)}
    with os.fdopen(read_end, "rb") as pipe:
        childs = set(pipe.read().decode().split())
    os.waitpid(pid, 0)
    assert len(childs) == 5 and not parents & childs
