"""The node's batch width after a batch ran out of the device's memory: halved, then tried wider again once a
while has passed, each try after twice as long as the last (inference_node/batch_limit.py)."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import pytest

from inference_node.batch_limit import BACKOFF_CAP_S, BatchLimit


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_limit_halves_then_doubles_back_to_its_ceiling_one_wait_at_a_time():
    clock = Clock()
    limit = BatchLimit(16, backoff_s=600, clock=clock)
    assert limit.regrow() is None and limit.value == 16  # nothing ran out: nothing to grow back
    assert limit.shrink(16) == 8
    assert limit.shrink(16) is None and limit.value == 8  # the other rows of the same batch say the same
    clock.now += 599
    assert limit.regrow() is None and limit.value == 8
    clock.now += 1
    assert limit.regrow() == 16 and limit.value == 16 and limit.next_try is None
    # a batch narrower than the limit that runs out halves its own width: two waits to get back
    assert limit.shrink(6) == 3
    clock.now += 1200
    assert limit.regrow() == 6
    assert limit.regrow() is None  # one doubling per wait
    clock.now += 1200
    assert limit.regrow() == 12
    clock.now += 1200
    assert limit.regrow() == 16 and limit.regrow() is None


def test_each_time_it_runs_out_again_the_wait_doubles_up_to_a_day():
    clock = Clock()
    limit = BatchLimit(8, backoff_s=600, clock=clock)
    waits = []
    for _ in range(10):
        limit.shrink(8)
        waits.append(limit.next_try - clock.now)
        clock.now = limit.next_try
        assert limit.regrow() == 8
    assert waits[:4] == [600, 1200, 2400, 4800] and waits[-1] == BACKOFF_CAP_S and max(waits) == BACKOFF_CAP_S
    assert limit.shortages == 10


def test_after_as_long_at_full_width_as_its_last_wait_the_next_shortage_starts_over():
    clock = Clock()
    limit = BatchLimit(8, backoff_s=600, clock=clock)
    for _ in range(3):  # three shortages in a row: 600, 1200, 2400 s
        limit.shrink(8)
        clock.now = limit.next_try
        limit.regrow()
    assert limit.wait_s == 2400
    clock.now += 2399  # back at 8 rows for less than the last wait: the next wait doubles
    limit.shrink(8)
    assert limit.wait_s == 4800
    clock.now = limit.next_try
    limit.regrow()
    clock.now += 4800  # and for as long as it: the next starts over
    limit.shrink(8)
    assert limit.wait_s == 600 and limit.next_try == clock.now + 600


def test_a_backoff_of_zero_keeps_the_halved_limit_for_good():
    clock = Clock()
    limit = BatchLimit(8, backoff_s=0, clock=clock)
    assert limit.shrink(8) == 4 and limit.next_try is None
    clock.now += 10 * BACKOFF_CAP_S
    assert limit.regrow() is None and limit.value == 4
    assert limit.shrink(3) == 1 and limit.shrink(1) is None and limit.value == 1  # never below one row


def batch_limit(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return float(re.search(r"^peakpilot_batch_limit (\S+)$", text, re.M).group(1))


def test_a_node_that_ran_out_of_memory_for_a_while_batches_as_wide_as_before_once_it_is_over(node_factory, tmp_path,
                                                                                           monkeypatch):
    """Another process takes half of the GPU for a while: the batch that runs out of memory is answered busy
    and the node batches fewer rows; once the memory is back and --oom-backoff-s has passed, it batches as
    wide as it started (it used to stay at half until restarted: half the requests/s the controller plans
    it for). Running out again makes the next wait twice as long, and the log says when it will try again."""
    squeeze = tmp_path / "squeeze"
    monkeypatch.setenv("PEAKPILOT_TEST_SQUEEZE", str(squeeze))
    n = node_factory("--model", "tests.node_models:squeezed_memory", "--max-batch", "4", "--max-prompt-tokens", "20",
                     "--max-new-tokens", "20", "--oom-backoff-s", "1")
    assert n.wait_ready()["max_batch"] == 4  # 4 rows of 40 positions: the 160 the device holds

    async def flood() -> list[int]:
        async with httpx.AsyncClient(base_url=n.url, timeout=60) as client:
            answers = await asyncio.gather(*(client.post("/v1/completions", json={
                "prompt": "x" * 10, "max_tokens": 20, "ignore_eos": True, "temperature": 0}) for _ in range(4)))
        return [r.status_code for r in answers]

    squeeze.touch()  # 4 rows of 30 positions no longer fit in 80
    assert 503 in asyncio.run(flood())
    halved = batch_limit(n.url)
    assert halved < 4 and "trying" in n.output() and "again in 1 s" in n.output()
    squeeze.unlink()
    deadline = time.time() + 20
    while batch_limit(n.url) < 4 and time.time() < deadline:
        httpx.post(f"{n.url}/v1/completions", json={"prompt": "x", "max_tokens": 1}, timeout=30)  # the batcher looks
        time.sleep(0.2)
    assert batch_limit(n.url) == 4 and httpx.get(f"{n.url}/ready").json()["max_batch"] == 4
    assert "batching at most 4 rows again, after 1 s without running out of the device's memory" in n.output()
    assert asyncio.run(flood()) == [200] * 4
    squeeze.touch()
    assert 503 in asyncio.run(flood())
    assert batch_limit(n.url) < 4 and "again in 2 s" in n.output()  # out of memory again: twice the wait


@pytest.mark.parametrize("value", ["-1", "soon"])
def test_a_bad_oom_backoff_is_refused(value):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "peakpilot.cli", "serve", "--oom-backoff-s", value],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--oom-backoff-s" in out.stderr
