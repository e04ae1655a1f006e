"""A stream's writes coalesced per interval (serve_app.core.stream.coalesced)."""

import asyncio

import pytest

from serve_app.core.stream import coalesced


async def ticking(n, every_s, fail_after=None, closed=None):
    try:
        for i in range(n):
            if fail_after is not None and i == fail_after:
                raise RuntimeError("upstream broke")
            yield f"[{i}]"
            await asyncio.sleep(every_s)
    finally:
        if closed is not None:
            closed.append(True)


async def writes(items, interval_s):
    loop = asyncio.get_running_loop()
    started, out = loop.time(), []
    async for write in coalesced(items, interval_s):
        out.append((loop.time() - started, write))
    return out


def test_the_first_item_goes_at_once_then_one_write_per_interval_holding_all_ready():
    out = asyncio.run(writes(ticking(30, 0.005), 0.05))
    assert out[0][1] == "[0]"
    assert "".join(w for _, w in out) == "".join(f"[{i}]" for i in range(30))
    # at most one write per interval, except the last, which goes as soon as the items end
    assert len(out) < 30 and all(b - a >= 0.045 for (a, _), (b, _) in zip(out[:-1], out[1:-1], strict=False))


def test_the_last_write_is_not_held_for_the_interval():
    async def run():
        loop = asyncio.get_running_loop()
        started = loop.time()
        out = [w async for w in coalesced(ticking(2, 0.0), 5.0)]
        return out, loop.time() - started

    out, seconds = asyncio.run(run())
    assert "".join(out) == "[0][1]" and seconds < 5.0  # the second item went when the source ended


def test_without_an_interval_every_item_is_its_own_write():
    assert [w for _, w in asyncio.run(writes(ticking(5, 0.0), 0.0))] == [f"[{i}]" for i in range(5)]


def test_an_upstream_error_comes_after_the_items_before_it():
    async def run():
        got = []
        with pytest.raises(RuntimeError, match="upstream broke"):
            async for write in coalesced(ticking(10, 0.001, fail_after=4), 0.02):
                got.append(write)
        return "".join(got)

    assert asyncio.run(run()) == "[0][1][2][3]"


def test_closing_the_writes_closes_the_upstream():
    async def run():
        closed = []
        writes_ = coalesced(ticking(1000, 0.001, closed=closed), 0.02)
        await anext(writes_)
        await anext(writes_)
        await writes_.aclose()
        await asyncio.sleep(0)
        return closed

    assert asyncio.run(run()) == [True]
