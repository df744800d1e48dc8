"""`python -m bench.own_rc RC_PORT [bench args...]`: `python -m bench` with rclone's remote-control
port moved off the fixed default (bench.targets.Rclone.RC_PORT = 5592), so two engineers' bench runs
with rclone rows on one machine do not collide ("bind: address already in use").

Owns nothing else; imports only bench.
"""

from __future__ import annotations

import sys

from . import targets
from .__main__ import main
from .sysutil import BenchError

if __name__ == "__main__":
    if len(sys.argv) < 2 or not sys.argv[1].isdigit():
        raise SystemExit("usage: python -m bench.own_rc RC_PORT [bench arguments...]")
    targets.Rclone.RC_PORT = int(sys.argv[1])
    try:
        sys.exit(main(sys.argv[2:]))
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        sys.exit(1)
