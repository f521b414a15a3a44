"""Headless chromium for the report tests: the rendered DOM, console messages, screenshots.

Chromium prints every console message (log, warning, error, uncaught exception) on stderr as
`INFO:CONSOLE ... "text", source: URL (line)` when run with --enable-logging=stderr; the tests
require there are none. Screenshots are cropped per chart with a small PNG codec (zlib only).
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

# Screenshots the browser tests leave for people to look at (git-ignored: /out/).
SHOTS = Path(__file__).resolve().parent.parent / "out" / "screenshots"


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def run(page: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    exe = chromium()
    if exe is None:
        reason = "no chromium binary found (install it: apt-get install -y chromium)"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-extensions", "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
           "--enable-logging=stderr", "--v=0",
           # Every host name fails to resolve: a report that needed the network would break here.
           "--host-resolver-rules=MAP * ~NOTFOUND",
           f"--user-data-dir={tmp / 'profile'}", "--virtual-time-budget=8000", *extra, page.as_uri()]
    # On a machine shared by several test runs chromium has been seen to hang once in a while
    # (load average 12 on 2 cores); a second attempt, with a fresh profile, is what a person would do.
    for attempt in range(2):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=150)
        except subprocess.TimeoutExpired:
            if attempt:
                raise
            cmd[cmd.index(f"--user-data-dir={tmp / 'profile'}")] = f"--user-data-dir={tmp / 'profile-2'}"
    raise AssertionError("unreachable")


def console(stderr: str) -> list[str]:
    """The page's console messages (any level), from chromium's log."""
    return re.findall(r"INFO:CONSOLE[^\]]*\] (.*)", stderr)


@dataclass
class Box:
    id: str
    rendered: str
    x: int
    y: int
    width: int
    height: int


def chart_boxes(dom: str) -> list[Box]:
    """Every chart container with its rendered state and its SVG's page box (set by the report's
    embed script after vega-embed finished)."""
    out = []
    for tag in re.findall(r'<div [^>]*id="chart-\d+"[^>]*>', dom):
        attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', tag))
        out.append(Box(attrs.get("id", ""), attrs.get("data-rendered", ""), int(attrs.get("data-x", -1)),
                       int(attrs.get("data-y", -1)), int(attrs.get("data-width", 0)), int(attrs.get("data-height", 0))))
    return out


def page_height(dom: str) -> int:
    m = re.search(r'data-page-height="(\d+)"', dom)
    return int(m.group(1)) if m else 2000


# ---------------------------------------------------------------------------- PNG


def png_decode(data: bytes) -> tuple[int, int, int, list[bytes]]:
    """Decode an 8-bit, non-interlaced RGB/RGBA PNG (what chromium writes): (w, h, bpp, rows)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, hdr = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            hdr = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + n
    w, h, depth, ctype, _, _, interlace = hdr
    assert depth == 8 and ctype in (2, 6) and interlace == 0
    bpp = 3 if ctype == 2 else 4
    raw, stride, rows, prev = zlib.decompress(idat), w * bpp, [], bytearray(w * bpp)
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if f == 1:
            for x in range(bpp, stride):
                line[x] = (line[x] + line[x - bpp]) & 255
        elif f == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev))
        elif f == 3:
            for x in range(stride):
                a = line[x - bpp] if x >= bpp else 0
                line[x] = (line[x] + (a + prev[x]) // 2) & 255
        elif f == 4:
            for x in range(stride):
                a = line[x - bpp] if x >= bpp else 0
                b, c = prev[x], prev[x - bpp] if x >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return w, h, bpp, rows


def png_encode(width: int, bpp: int, rows: list[bytes]) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, len(rows), 8, 2 if bpp == 3 else 6, 0, 0, 0)
    raw = b"".join(b"\x00" + r for r in rows)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def crop(png: tuple[int, int, int, list[bytes]], x: int, y: int, w: int, h: int) -> bytes:
    W, H, bpp, rows = png
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(W, x + w), min(H, y + h)
    return png_encode(x1 - x0, bpp, [r[x0 * bpp:x1 * bpp] for r in rows[y0:y1]])


def count(png: tuple[int, int, int, list[bytes]], test, box: tuple[int, int, int, int] | None = None) -> int:
    """Pixels for which test(r, g, b), in box (x, y, w, h) or the whole image."""
    W, H, bpp, rows = png
    x, y, w, h = box or (0, 0, W, H)
    return sum(bool(test(r[i], r[i + 1], r[i + 2])) for r in rows[max(0, y):min(H, y + h)]
               for i in range(max(0, x) * bpp, min(W, x + w) * bpp, bpp))
