"""What `study run` shows while it runs: a live view on a terminal, plain lines otherwise,
nothing with --quiet, one JSON event per line with --json.

The run reports events (plain dicts, the same ones `--json` prints):

=========  ==============================================================================
event      fields
=========  ==============================================================================
start      study, nodes (in the plan), tasks (nodes to run or verify: the rest are not needed)
node       key, op, status ("computed" | "cached"), seconds, done, total
progress   key, op, done, total, note: a loop inside a node (batches, training steps)
warning    message
finish     computed, cached, seconds, report (path or null)
=========  ==============================================================================

`progress` events come from operators calling the context's progress hook; nodes that do not
loop simply finish. Every display takes the same events, so a new display is one class.

>>> events = []
>>> d = JsonLines(write=events.append)
>>> d({"event": "node", "key": "ab", "op": "patch", "status": "computed", "seconds": 0.5, "done": 1, "total": 2})
>>> events
['{"event": "node", "key": "ab", "op": "patch", "status": "computed", "seconds": 0.5, "done": 1, "total": 2}\\n']
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, Callable, TextIO

Event = dict[str, Any]


class Display:
    """Base display: receives events, shows nothing."""

    def __call__(self, event: Event) -> None:
        getattr(self, "on_" + event["event"], lambda e: None)(event)

    def close(self) -> None:
        pass

    def __enter__(self) -> "Display":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Quiet(Display):
    """--quiet: nothing but warnings (on stderr)."""

    def __init__(self, err: TextIO | None = None) -> None:
        self.err = err or sys.stderr

    def on_warning(self, e: Event) -> None:
        print(f"warning: {e['message']}", file=self.err)


class JsonLines(Display):
    """--json: each event as one JSON line (stdout), flushed at once."""

    def __init__(self, write: Callable[[str], Any] | None = None) -> None:
        self._write = write
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        line = json.dumps(event, default=str) + "\n"
        with self._lock:
            if self._write is not None:
                self._write(line)
                return
            try:
                sys.stdout.write(line)
                sys.stdout.flush()
            except BrokenPipeError:  # `study run --json | head`: the reader left; keep computing
                self._write = lambda s: None


class PlainLines(Quiet):
    """Not a terminal (a log file, CI): one line per computed node; a looping node reports at
    most every `every` seconds (and when it finishes)."""

    def __init__(self, err: TextIO | None = None, every: float = 5.0) -> None:
        super().__init__(err)
        self.every = every
        self._last: dict[str, float] = {}

    def on_start(self, e: Event) -> None:
        print(f"running {e['study']}: {e['tasks']} of {e['nodes']} nodes to run or check", file=self.err)

    def on_node(self, e: Event) -> None:
        if e["status"] == "computed":
            print(f"  [{e['done']}/{e['total']}] {e['op']}-{e['key'][:16]} computed in {e['seconds']:.2f} s",
                  file=self.err)

    def on_progress(self, e: Event) -> None:
        now = time.monotonic()
        last = self._last.get(e["key"])
        if e["done"] < e["total"] and last is not None and now - last < self.every:
            return
        self._last[e["key"]] = now
        note = f" {e['note']}" if e.get("note") else ""
        print(f"    {e['op']}-{e['key'][:16]}: {e['done']}/{e['total']}{note}", file=self.err)


class Live(Quiet):
    """A terminal: a live view (rich) of the nodes done / total with hits and misses, and a bar
    with its ETA for each node that reports progress while it loops."""

    def __init__(self, console: Any = None) -> None:
        super().__init__()
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.console = console or Console(stderr=True)
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[extra]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                            console=self.console, transient=False)
        self.nodes = None
        self.inner: dict[str, Any] = {}
        self.hits = self.misses = 0
        self._lock = threading.Lock()
        self.bar.start()

    def _extra(self) -> str:
        return f"{self.misses} computed \u00b7 {self.hits} cached"

    def on_start(self, e: Event) -> None:
        with self._lock:
            self.nodes = self.bar.add_task("nodes", total=max(e["tasks"], 1), extra=self._extra())

    def on_node(self, e: Event) -> None:
        with self._lock:
            if e["status"] == "computed":
                self.misses += 1
            else:
                self.hits += 1
            if self.nodes is None:
                self.nodes = self.bar.add_task("nodes", total=e["total"], extra="")
            self.bar.update(self.nodes, completed=e["done"], total=e["total"], extra=self._extra())
            task = self.inner.pop(e["key"], None)
            if task is not None:
                self.bar.remove_task(task)
            if e["status"] == "computed":
                self.console.print(f"  {e['op']}-{e['key'][:16]} computed in {e['seconds']:.2f} s",
                                   style="dim", highlight=False)

    def on_progress(self, e: Event) -> None:
        with self._lock:
            task = self.inner.get(e["key"])
            if task is None:
                task = self.inner[e["key"]] = self.bar.add_task(f"  {e['op']}-{e['key'][:8]}", total=e["total"],
                                                                extra="")
            self.bar.update(task, completed=e["done"], total=e["total"], extra=e.get("note") or "")

    def on_warning(self, e: Event) -> None:
        self.console.print(f"warning: {e['message']}", style="yellow", highlight=False)

    def close(self) -> None:
        self.bar.stop()


def display_for(mode: str, stream: TextIO | None = None) -> Display:
    """"quiet", "json", or "auto": a live view on a terminal, plain lines otherwise."""
    if mode == "quiet":
        return Quiet()
    if mode == "json":
        return JsonLines()
    stream = stream or sys.stderr
    if stream.isatty():
        return Live()
    return PlainLines()
