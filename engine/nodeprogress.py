"""What a running node reports from inside its loops, and the cooperative stop that rides on it.

Operators call `ctx.progress(done, total, note)` (engine/context.py) once per batch, training
step or chunk of rows. Each call

1. raises `Interrupted` when a stop was requested (Ctrl-C, SIGTERM, `request_stop()`): the
   engine then commits nothing for that node and `study run` exits with code 130;
2. records a `ProgressEvent` (the latest one per node is in `latest()`) and hands it to every
   subscriber, at most every `min_interval` seconds per node (the first report and the last,
   done == total, always get through). `study run` subscribes and turns them into its
   "progress" events (engine/progress.py shows them: a live bar, plain lines or JSON).

Helpers deep inside an operator that were not handed the context (a training loop, a tokeniser)
call `here(done, total, note)`, which reports for the node this thread is computing.

A call costs a few microseconds. Subscribers run in the operator's thread: they must be quick,
and an exception in one is ignored (a display never breaks a computation).

>>> seen = []
>>> unsubscribe = subscribe(seen.append)
>>> report("0123456789abcdef0123456789abcdef", "dataset", 5, 10, "rows tokenised")
>>> report("0123456789abcdef0123456789abcdef", "dataset", 10, 10)
>>> [(e.node, e.done, e.total, e.note) for e in seen]
[('dataset-0123456789abcdef', 5, 10, 'rows tokenised'), ('dataset-0123456789abcdef', 10, 10, '')]
>>> unsubscribe()
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator


class Interrupted(BaseException):
    """A stop was requested (Ctrl-C, SIGTERM). Derives from BaseException, like
    KeyboardInterrupt, so that an operator's `except Exception` cannot swallow it."""


@dataclass(frozen=True)
class ProgressEvent:
    key: str  # the node's key (32 hex digits; "" outside a run)
    op: str  # its operator
    done: int
    total: int
    note: str  # what the units are, or a short status ("loss 0.031")
    time: float  # time.monotonic() when reported

    @property
    def node(self) -> str:
        """The node as Dask and the progress lines name it: "op-0123456789abcdef"."""
        return f"{self.op}-{self.key[:16]}"

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total > 0 else 0.0


_STOP = threading.Event()
_LOCK = threading.Lock()
_LATEST: dict[str, ProgressEvent] = {}
_SENT: dict[str, float] = {}
_SUBSCRIBERS: list[Callable[[ProgressEvent], None]] = []
_CURRENT = threading.local()
min_interval = 0.25  # seconds between two events of one node handed to subscribers


def request_stop() -> None:
    """Ask every running node to stop at its next progress report (and the engine to commit no
    node that finishes after this)."""
    _STOP.set()


def stop_requested() -> bool:
    return _STOP.is_set()


def clear_stop() -> None:
    """Forget a stop request (the start of a new run in the same process)."""
    _STOP.clear()


def check() -> None:
    """Raise `Interrupted` if a stop was requested."""
    if _STOP.is_set():
        raise Interrupted("stop requested")


def subscribe(fn: Callable[[ProgressEvent], None]) -> Callable[[], None]:
    """Call `fn(event)` for progress events; returns a function that unsubscribes it."""
    with _LOCK:
        _SUBSCRIBERS.append(fn)

    def unsubscribe() -> None:
        with _LOCK:
            if fn in _SUBSCRIBERS:
                _SUBSCRIBERS.remove(fn)

    return unsubscribe


def latest() -> dict[str, ProgressEvent]:
    """The last event of every node still running, by key."""
    with _LOCK:
        return dict(_LATEST)


def report(key: str, op: str, done: int, total: int, note: str = "") -> None:
    """Record progress of node `key` (the body of `Context.progress`); raises `Interrupted` when a
    stop was requested."""
    check()
    now = time.monotonic()
    ev = ProgressEvent(key, op, int(done), int(total), str(note), now)
    with _LOCK:
        _LATEST[key] = ev
        last = _SENT.get(key)
        send = last is None or now - last >= min_interval or ev.done >= ev.total
        if send:
            _SENT[key] = now
        subs = list(_SUBSCRIBERS) if send else []
    for fn in subs:
        try:
            fn(ev)
        except Exception:  # noqa: BLE001 - a display must never break a computation
            pass


@contextmanager
def running(key: str, op: str) -> Iterator[None]:
    """Mark node `key` as the one this thread computes (for `here`); the engine wraps every
    operator in it, and forgets the node's progress when it ends."""
    before = getattr(_CURRENT, "node", ("", ""))
    _CURRENT.node = (key, op)
    try:
        yield
    finally:
        _CURRENT.node = before
        with _LOCK:
            _LATEST.pop(key, None)
            _SENT.pop(key, None)


def here(done: int, total: int, note: str = "") -> None:
    """`report` for the node this thread is computing (("", "") outside a run): for helpers that
    have no context at hand. Raises `Interrupted` when a stop was requested."""
    key, op = getattr(_CURRENT, "node", ("", ""))
    report(key, op, done, total, note)
