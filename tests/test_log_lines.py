"""The log writer (delivery_worker/logs.py): every line whole, once, in order, from many threads."""

from __future__ import annotations

import io
import threading

from delivery_worker.logs import LineWriter


class SlowFile(io.StringIO):
    """A stdout whose writes take a moment, so that lines queue behind the writing thread."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.gate = threading.Event()
        self.gate.set()

    def write(self, text: str) -> int:
        self.writes += 1
        self.gate.wait(10)
        return super().write(text)


def test_lines_from_many_threads_arrive_whole_once_and_in_each_threads_order():
    out = SlowFile()
    writer = LineWriter(out)

    def log(thread: int) -> None:
        for number in range(200):
            writer.msg(f'{{"thread": {thread}, "n": {number}, "pad": "{"x" * 300}"}}')

    threads = [threading.Thread(target=log, args=(t,)) for t in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.write_held_lines()

    lines = out.getvalue().splitlines()
    assert len(lines) == 16 * 200
    seen: dict[int, list[int]] = {}
    for line in lines:
        assert line.startswith('{"thread": ') and line.endswith('"}')
        thread, number = line.split(", ")[:2]
        seen.setdefault(int(thread.split(": ")[1]), []).append(int(number.split(": ")[1]))
    assert all(numbers == list(range(200)) for numbers in seen.values())
    assert out.writes <= len(lines)


def test_a_line_queued_behind_a_busy_writer_is_written_by_it_or_by_the_next_call():
    out = SlowFile()
    writer = LineWriter(out)
    out.gate.clear()  # the first write blocks, as on a full pipe
    first = threading.Thread(target=writer.msg, args=("first",))
    first.start()
    while out.writes == 0:
        threading.Event().wait(0.01)
    writer.msg("second")  # returns at once: the busy thread will write it
    assert out.getvalue() == ""
    out.gate.set()
    first.join(10)
    writer.write_held_lines()
    assert out.getvalue() == "first\nsecond\n"
