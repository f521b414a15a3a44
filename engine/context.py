"""What an operator's `run(inputs, params, ctx)` may ask of the engine.

Only execution concerns live here (device, chunk budget, loaded-model memo, logging, progress):
nothing in a Context may change an operator's numbers, which is why none of it is keyed.

Long loops call `ctx.progress(done, total, note)` once per batch / step / chunk: it records a
progress event (engine/nodeprogress.py, which `study run` displays) and raises `Interrupted` when the
user asked the run to stop, so that Ctrl-C and SIGTERM stop a run within seconds even inside a
long node. The engine commits nothing for a node that raised it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from mechstudy.engine import nodeprogress, spec
from mechstudy.engine.spec import Artifact

_MODEL_MEMO: dict[tuple[str, str], Any] = {}
_MODEL_MEMO_LOCK = threading.Lock()


def auto_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover
        return "cpu"


# Forward sizes by device type, from measured throughput (benchmarks/bench_rows.py, BENCHMARKS.md):
# on one CPU thread a batched sweep's rows per second rise up to about 1024 tokens per forward (64
# IOI prompts) and then flatten or fall (the activations leave the core's cache); a GPU keeps
# gaining far beyond, so it is fed wide batches.
DEFAULT_ROWS = {"cpu": 64, "cuda": 1024}
DEFAULT_TOKENS = {"cpu": 1024, "cuda": 65536}


def device_type(device: str) -> str:
    return "cuda" if str(device).startswith("cuda") else "cpu"


@dataclass
class Context:
    """Execution context handed to every operator.

    Attributes:
        device: "cpu" or "cuda".
        max_rows: how many sequences one batched forward may hold (patch variants are
            chunked to this); None: the device's default (DEFAULT_ROWS).
        max_tokens: how many tokens (rows x positions) one forward may hold; None: the device's
            default (DEFAULT_TOKENS). `rows_for(width)` combines the two.
        log: a callable taking one line of text.
        key, op: the node being computed ("" outside a run).
    """

    device: str = field(default_factory=auto_device)
    max_rows: int | None = None
    log: Callable[[str], None] = lambda msg: None
    key: str = ""
    op: str = ""
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.max_rows is None:
            self.max_rows = DEFAULT_ROWS[device_type(self.device)]
        if self.max_tokens is None:
            self.max_tokens = DEFAULT_TOKENS[device_type(self.device)]

    def rows_for(self, width: int) -> int:
        """Sequences per forward for inputs `width` tokens long: max_rows, fewer for long inputs."""
        return max(1, min(int(self.max_rows), int(self.max_tokens) // max(1, int(width))))

    def progress(self, done: int, total: int, note: str = "") -> None:
        """Report that `done` of `total` units of this node's work are finished (`note`: what the
        units are, or a short status such as "loss 0.031"). Call it once per batch, step or chunk.

        Raises `engine.nodeprogress.Interrupted` when a stop was requested (Ctrl-C, SIGTERM): let
        it propagate; the engine commits nothing for this node and the run exits with code 130.
        The events go to `engine.nodeprogress` subscribers (`study run` displays them).
        """
        nodeprogress.report(self.key, self.op, done, total, note)

    def model(self, model_artifact: Artifact) -> Any:
        """The loaded model adapter for a `model` node's artifact; loaded once per process
        and device by its source's `ModelSource.load`."""
        data = model_artifact.data
        memo_key = (data["fingerprint"] + repr(sorted(data.get("options", {}).items())), self.device)
        with _MODEL_MEMO_LOCK:
            m = _MODEL_MEMO.get(memo_key)
            if m is None:
                m = spec.MODEL_SOURCES[data["source"]].load(data, self.device)
                _MODEL_MEMO[memo_key] = m
        return m
