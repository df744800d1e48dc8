"""A stand-in for `oidc-token`: prints the token stored in TOKEN_PATH, counts its runs.

Usage: tokencmd.py TOKEN_PATH COUNT_PATH [--fail | --sleep S]
Appends one line to COUNT_PATH per run; writes a diagnostic that includes the token to stderr (the
caller must redact it before logging). --fail: exit 3 after printing to stderr. --sleep S: wait first.
Imports nothing from meshfs.
"""

import sys
import time
from pathlib import Path

token_path, count_path, *rest = sys.argv[1:]
with open(count_path, "a", encoding="utf-8") as f:
    f.write("run\n")
if rest[:1] == ["--sleep"]:
    time.sleep(float(rest[1]))
token = Path(token_path).read_text(encoding="utf-8").strip()
if rest[:1] == ["--fail"]:
    print(f"tokencmd: agent refused to hand out {token}", file=sys.stderr)
    sys.exit(3)
print(f"tokencmd: issued {token}", file=sys.stderr)
print(token)
