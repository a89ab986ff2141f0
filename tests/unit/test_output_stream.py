"""sockvisor's own stdout as `prefix` output sees it: never blocking, never
making the shared file description non-blocking, bounded, and draining again
once the reader reads.  A real pipe; the event loop of asyncio.run."""

from __future__ import annotations

import asyncio
import fcntl
import os

from sockvisor.output import StreamWriter


def test_a_stalled_pipe_costs_a_bounded_buffer_then_drops():
    read_end, write_end = os.pipe()
    try:
        async def scenario() -> None:
            writer = StreamWriter(write_end, "stdout", limit=256 * 1024)
            # Whoever else holds the pipe (the shell, `inherit` workers) still
            # gets a blocking fd: O_NONBLOCK lives on the shared description.
            assert not fcntl.fcntl(write_end, fcntl.F_GETFL) & os.O_NONBLOCK
            line = b"x" * 1023 + b"\n"
            accepted = [writer.write(line * 16) for _ in range(100)]   # 1.6 MB
            # 64 kB fit the pipe, 256 kB the buffer; the rest was dropped, whole.
            assert accepted.count(True) == (64 + 256) // 16
            assert writer.dropped.lines == 16 * accepted.count(False)
            # The reader comes back: what was held is written, in order, when the
            # loop gets to it.
            received = bytearray()
            os.set_blocking(read_end, False)
            while len(received) < (64 + 256) * 1024:
                try:
                    received += os.read(read_end, 1 << 16)
                except BlockingIOError:
                    await asyncio.sleep(0.001)   # let the loop run the writer
            assert received == line * 16 * accepted.count(True)
        asyncio.run(asyncio.wait_for(scenario(), 10))
    finally:
        os.close(read_end)
        os.close(write_end)
