"""A buffered log handler for the access log, like nginx's ``access_log ... buffer= flush=``.

Writing each access-log line straight to stderr costs a ``write(2)`` per request and, when
stderr is a pipe, wakes the reader every time; at thousands of requests a second that is most
of a request's cost. This handler formats each record at once (so the line is exactly what an
unbuffered handler would print) and writes the buffer when it reaches ``max_bytes``, when a
record of WARNING or above arrives, every ``interval`` seconds (a daemon thread), and at
``close``/``flush`` (``logging.shutdown`` runs at exit).
"""

from __future__ import annotations

import logging
import threading
from typing import TextIO


class BufferedStreamHandler(logging.Handler):
    def __init__(self, stream: TextIO, *, interval: float = 1.0, max_bytes: int = 64 * 1024) -> None:
        super().__init__()
        self.stream = stream
        self.interval = interval
        self.max_bytes = max_bytes
        self._lines: list[str] = []
        self._size = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _start(self) -> None:
        # started lazily, by the first record, so that constructing a handler makes no thread
        self._thread = threading.Thread(target=self._tick, name="access-log-flush", daemon=True)
        self._thread.start()

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:
            self.handleError(record)
            return
        with self.lock:  # type: ignore[union-attr]
            self._lines.append(line)
            self._size += len(line)
            full = self._size >= self.max_bytes or record.levelno >= logging.WARNING
            if self._thread is None:
                self._start()
        if full:
            self.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            lines, self._lines, self._size = self._lines, [], 0
            if lines:
                try:
                    self.stream.write("".join(lines))
                    self.stream.flush()
                except (OSError, ValueError):
                    pass  # stderr gone (closed pipe at exit): nothing sensible to do

    def close(self) -> None:
        self._stop.set()
        self.flush()
        super().close()


__all__ = ["BufferedStreamHandler"]
