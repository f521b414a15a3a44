"""Peak memory of streaming the activation store at 1x, 4x and 16x the corpus.

    .venv/bin/python benchmarks/bench_activation_store.py

Shards of 8,192 tokens x 64 float32 (2 MiB) as the store writes them (safetensors, re-opened
memory-mapped by path), a window of 2 shards, batches of 1,024, one epoch each; 4, 16 and 64 shards
(8, 32 and 128 MiB). Each size runs in a fresh process; printed: peak RSS (VmHWM) minus the RSS
before streaming, with glibc returning large blocks at once (MALLOC_MMAP_THRESHOLD_=65536) and with
its default allocator (which keeps up to ~30 MiB of freed blocks: a plateau, not growth).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    src = (ROOT / "tests/test_activation_store.py").read_text()
    code = re.search(r'_PEAK = textwrap.dedent\("""(.*?)"""\)', src, re.S).group(1)
    import textwrap

    code = textwrap.dedent(code)
    with tempfile.TemporaryDirectory() as d:
        for env_name, extra in (("MALLOC_MMAP_THRESHOLD_=65536", {"MALLOC_MMAP_THRESHOLD_": "65536"}), ("default malloc", {})):
            print(env_name)
            for mult, shards in ((1, 4), (4, 16), (16, 64)):
                subprocess.run([sys.executable, "-c", code, d, str(shards)], check=True, capture_output=True,
                               env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})  # write the shards first
                r = subprocess.run([sys.executable, "-c", code, d, str(shards)], check=True, capture_output=True, text=True,
                                   env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", **extra})
                o = json.loads(r.stdout)
                print(f"  {mult:>2}x ({shards} shards, {shards * 2} MiB, {o['tokens']:,} tokens): "
                      f"streaming raised peak RSS by {(o['peak_kib'] - o['base_kib']) / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
