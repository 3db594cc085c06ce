"""The node's admission (inference_node/batcher.py): what it expects a request to wait, and when that refuses
it busy. Driven through an engine the test scripts, so the times are the test's, not the machine's."""

from __future__ import annotations

import asyncio
import time

import pytest

from inference_node.batcher import Batcher, QueueFull


class ScriptedEngine:
    """Takes rows as the batcher hands them over; the test says when a row's first tokens come and when it
    ends, as the real engine tells them from its thread."""

    def __init__(self):
        self.rows: list[int] = []
        self.tell = None

    def listen(self, fn) -> None:
        self.tell = fn

    def submit(self, key, prompt, max_tokens, sampling, watch) -> None:
        self.rows.append(key)

    def drop(self, key) -> None:
        pass


async def joined(engine: ScriptedEngine, count: int) -> int:
    """The key of the ``count``-th row the engine was handed, once it has been."""
    deadline = time.perf_counter() + 5
    while len(engine.rows) < count:
        assert time.perf_counter() < deadline, "the batcher never handed the row over"
        await asyncio.sleep(0.005)
    return engine.rows[count - 1]


async def serve_one(batcher: Batcher, engine: ScriptedEngine, nth: int, prefill_s: float, rest_s: float):
    """Admit a streamed request, and play its row: its first tokens ``prefill_s`` after it joins, its end
    ``rest_s`` later."""
    admission = batcher.admit([[1] * 8], 4, watch=True)
    key = await joined(engine, nth)
    await asyncio.sleep(prefill_s)
    engine.tell("tokens", None, {key: [5]})
    await asyncio.sleep(rest_s)
    engine.tell("row", key, [5, 6])
    await asyncio.sleep(0.01)
    return admission


@pytest.mark.parametrize("slo_on_first_token", [True, False])
def test_a_first_token_target_counts_the_time_from_joining_to_a_first_token(slo_on_first_token):
    """Streamed rows whose first tokens come 0.3 s after they join (a long prompt's prefill) and which end 0.1 s
    later: with the one row taken, a request would wait 0.4 s for it and 0.3 s more for its first token, 0.7 s
    against a 0.5 s first-token target: busy (counting the wait alone, 0.4 s, it was admitted, and late).
    The whole-answer target (0.5 s) refuses it too, on the wait and its own answer (0.8 s)."""
    async def scenario():
        engine = ScriptedEngine()
        batcher = Batcher(engine, max_batch=1, max_wait_ms=0, slo_ms=500, slo_on_first_token=slo_on_first_token)
        batcher.start()
        (await serve_one(batcher, engine, 1, 0.3, 0.1)).close()
        if slo_on_first_token:
            assert batcher.first_token_seconds == pytest.approx(0.3, abs=0.1)
        holding = batcher.admit([[1] * 8], 4, watch=True)  # the row is free: admitted, whatever the times
        await joined(engine, 2)
        with pytest.raises(QueueFull) as refused:
            batcher.admit([[1] * 8], 4, watch=True)
        holding.close()
        await batcher.stop()
        return batcher, str(refused.value)

    batcher, message = asyncio.run(scenario())
    assert ("first-token latency target" if slo_on_first_token else "over the 0.5 s latency target") in message
    expected = float(message.split("expected wait ")[1].split(" s")[0])
    assert expected == pytest.approx(0.7 if slo_on_first_token else 0.8, abs=0.15)


def test_a_short_prefill_leaves_a_first_token_target_to_the_wait():
    """The same, with first tokens at once: 0.4 s of wait against 0.5 s, admitted."""
    async def scenario():
        engine = ScriptedEngine()
        batcher = Batcher(engine, max_batch=1, max_wait_ms=0, slo_ms=500, slo_on_first_token=True)
        batcher.start()
        (await serve_one(batcher, engine, 1, 0.0, 0.4)).close()
        holding = batcher.admit([[1] * 8], 4, watch=True)
        await joined(engine, 2)
        expected = batcher.expected_wait()
        waiting = batcher.admit([[1] * 8], 4, watch=True)  # not refused
        waiting.close()
        holding.close()
        await batcher.stop()
        return expected

    assert asyncio.run(scenario()) == pytest.approx(0.4, abs=0.1)


def test_a_request_asking_for_fewer_tokens_is_expected_to_take_less_of_a_row():
    """Rows that generated 100 tokens in 0.4 s: with the one row taken, a request asking for 100 tokens would
    wait 0.4 s for it and take 0.4 s more, 0.8 s against a 0.5 s whole-answer target: busy. One asking for 10
    would take a tenth of a row, 0.44 s in all: admitted (counted as a whole row's answer, it was refused
    too, and a node of chat answers said "busy" to every short request behind one long answer)."""
    async def scenario():
        engine = ScriptedEngine()
        batcher = Batcher(engine, max_batch=1, max_wait_ms=0, slo_ms=500)
        batcher.start()
        first = batcher.admit([[1] * 8], 100)
        await joined(engine, 1)
        await asyncio.sleep(0.4)
        engine.tell("row", engine.rows[0], [5] * 100)
        await first.answers()
        first.close()
        holding = batcher.admit([[1] * 8], 100)  # the row is free: admitted, whatever the times
        await joined(engine, 2)
        long_wait, short_wait = batcher.expected_wait(max_tokens=100), batcher.expected_wait(max_tokens=10)
        with pytest.raises(QueueFull) as refused:
            batcher.admit([[1] * 8], 100)
        short = batcher.admit([[1] * 8], 10)  # not refused
        short.close()
        holding.close()
        await batcher.stop()
        return long_wait, short_wait, str(refused.value)

    long_wait, short_wait, message = asyncio.run(scenario())
    assert long_wait == pytest.approx(0.8, abs=0.15) and short_wait == pytest.approx(0.44, abs=0.1)
    assert "over the 0.5 s latency target" in message
