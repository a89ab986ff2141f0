"""The watcher's ring of recent output lines (output.OutputRing): numbered,
bounded per stream, filtered by pid, and awaited by `logs -f`."""

from __future__ import annotations

import asyncio

from sockvisor import journal
from sockvisor.output import OutputRing


def test_numbers_bound_and_filter():
    ring = OutputRing(size=3)
    ring.append("stdout", [(1.0, 10, "a"), (2.0, 11, "b")])
    ring.append("stderr", [(3.0, 10, "c")])
    ring.append("stdout", [(4.0, 10, "d"), (5.0, 10, "e")])
    assert ring.seq == 5
    # stdout keeps its last 3 (b, d, e); stderr its own: one stream cannot evict the other.
    assert [(seq, text) for seq, _, _, _, text in ring.lines()] == [
        (2, "b"), (3, "c"), (4, "d"), (5, "e")]
    assert [text for *_, text in ring.lines(after=3)] == ["d", "e"]
    assert [text for *_, text in ring.lines(pid=11)] == ["b"]
    assert {stream for _, _, stream, _, _ in ring.lines()} == {"stdout", "stderr"}


def test_wait_returns_on_a_new_line_or_at_the_timeout():
    async def scenario() -> tuple[float, float, float]:
        ring = OutputRing()
        loop = asyncio.get_running_loop()
        started = loop.time()
        await ring.wait(0, 0.05)                      # nothing comes: the timeout
        timed_out = loop.time() - started
        loop.call_later(0.02, ring.append, "stdout", [(0.0, 1, "x")])
        started = loop.time()
        await ring.wait(0, 5)                         # woken by the line
        woken = loop.time() - started
        started = loop.time()
        await ring.wait(0, 5)                         # already there: at once
        return timed_out, woken, loop.time() - started
    timed_out, woken, at_once = asyncio.run(scenario())
    assert 0.04 <= timed_out < 1
    assert woken < 1
    assert at_once < 0.01


def test_journal_entry_native_format():
    data = journal.entry(b"two\nlines", 3, "web", 1234, "stderr")
    assert data.startswith(b"MESSAGE\n" + (9).to_bytes(8, "little") + b"two\nlines\n")
    assert data.endswith(b"PRIORITY=3\nSYSLOG_IDENTIFIER=web\nSYSLOG_PID=1234\n"
                         b"SOCKVISOR_STREAM=stderr\n")
    assert journal.field(b"MESSAGE", b"plain") == b"MESSAGE=plain\n"
