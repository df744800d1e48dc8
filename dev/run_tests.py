"""Runs the test suites one pytest process per directory of tests/ and prints one total line.

Why one process per directory: each suite has its own conftest.py and helper modules imported by
plain name (pytest's default "prepend" import mode), which collide when collected together; separate
processes also keep one suite's leftovers (threads, mounts) from leaking into the next.
The dev Reva is started once up front (and stopped at the end only if this script started it), so
every suite shares it. Usage: run_tests.py [-m MARKEXPR] [SUITE ...] [-- PYTEST ARGS]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ORDER = ["unit", "cs3", "stack", "fuse", "daemon", "mount", "locks", "writeback", "shares", "auth", "metrics"]


def suites(selected: list[str]) -> list[Path]:
    found = sorted(p for p in (REPO / "tests").iterdir() if p.is_dir() and any(p.glob("test_*.py")))
    rank = {name: i for i, name in enumerate(ORDER)}
    found.sort(key=lambda p: (rank.get(p.name, len(ORDER)), p.name))
    if selected:
        found = [p for p in found if p.name in selected]
    return found


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", dest="mark", default="not long")
    ap.add_argument("suites", nargs="*")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = ap.parse_args(argv[:cut])  # everything after "--" goes to pytest as is (e.g. -k NAME)
    extra = argv[cut + 1 :]
    unknown = sorted(set(args.suites) - {p.name for p in suites([])})
    if unknown:
        ap.error(f"no such suite: {', '.join(unknown)} (suites are the directories of tests/)")
    revactl = REPO / "dev" / "reva" / "revactl"
    started = subprocess.run([str(revactl), "status"], capture_output=True).returncode != 0
    if subprocess.run([str(revactl), "up"]).returncode != 0:
        print("tests: the dev Reva did not start (see above)", file=sys.stderr)
        return 1
    totals = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    bad: list[str] = []
    t0 = time.monotonic()
    try:
        for suite in suites(args.suites):
            xml = REPO / ".cache" / "test-results" / f"{suite.name}.xml"
            xml.parent.mkdir(parents=True, exist_ok=True)
            xml.unlink(missing_ok=True)
            cmd = [sys.executable, "-m", "pytest", str(suite), "-m", args.mark, f"--junitxml={xml}", *extra]
            print(f"\n=== tests/{suite.name} ===", flush=True)
            t = time.monotonic()
            rc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "MESHFS_TEST_SUITE": suite.name}).returncode
            counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
            if xml.exists():
                root = ET.parse(xml).getroot()
                for ts in root.iter("testsuite"):
                    n = int(ts.get("tests", 0))
                    f, e, s = (int(ts.get(k, 0)) for k in ("failures", "errors", "skipped"))
                    counts["failed"] += f
                    counts["errors"] += e
                    counts["skipped"] += s
                    counts["passed"] += n - f - e - s
            for k, v in counts.items():
                totals[k] += v
            print(
                f"=== tests/{suite.name}: {counts['passed']} passed, {counts['failed']} failed, "
                f"{counts['errors']} errors, {counts['skipped']} skipped in {time.monotonic() - t:.0f}s",
                flush=True,
            )
            if rc not in (0, 5):
                bad.append(f"{suite.name} (pytest exit {rc})")
    finally:
        if started and not os.environ.get("MESHFS_KEEP_REVA"):
            subprocess.run([str(revactl), "down"])
    print(f"\nsuites with failures: {', '.join(bad)}" if bad else "\nall suites passed")
    print(f"total time {time.monotonic() - t0:.0f}s")
    # the last line, in the plain form CI reads: "tests: N passed, N failed, N skipped"
    failed = totals["failed"] + totals["errors"]
    print(f"tests: {totals['passed']} passed, {failed} failed, {totals['skipped']} skipped")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
