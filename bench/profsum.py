"""Summarise py-spy raw (collapsed-stack) profiles of the meshfs daemon written by
`python -m bench --profile`: `python -m bench.profsum FILE... [--top N] [--filter TEXT]`.

Prints, over all samples of the files: the functions holding the CPU themselves (self) and the
functions under which the samples fall (inclusive), as a share of all non-idle samples.
Owns: reading collapsed stacks. Must not import: meshfs.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

_LINE = re.compile(r" \((.*):\d+\)$")


def frame_name(frame: str) -> str:
    """'read (meshfs/vfs/ops.py:712)' -> 'read (meshfs/vfs/ops.py)'; line numbers dropped."""
    return _LINE.sub(r" (\1)", frame.strip())


def load(paths: list[Path], contains: str = "") -> tuple[Counter[str], Counter[str], int]:
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for p in paths:
        for line in p.read_text(errors="replace").splitlines():
            stack, _, n = line.rpartition(" ")
            if not stack or not n.isdigit():
                continue
            if contains and contains not in stack:
                continue
            count = int(n)
            frames = [frame_name(f) for f in stack.split(";") if f]
            if not frames:
                continue
            total += count
            own[frames[-1]] += count
            for f in set(frames):
                incl[f] += count
    return own, incl, total


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.profsum", description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--filter", default="", help="only stacks containing TEXT")
    a = ap.parse_args(argv)
    missing = [str(f) for f in a.files if not f.is_file()]
    if missing:
        print(f"profsum: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    own, incl, total = load(a.files, a.filter)
    if not total:
        print("profsum: no samples", file=sys.stderr)
        return 1
    print(f"{total} samples (py-spy --nonblocking, idle threads excluded)")
    for title, c in (("self", own), ("inclusive", incl)):
        print(f"\n{title}:")
        for name, n in c.most_common(a.top):
            print(f"  {100 * n / total:5.1f}%  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
