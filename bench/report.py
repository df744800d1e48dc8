"""Turning samples into the markdown table, the ratios and the goal check of issues 4, 6 and 9.

Owns: medians/ranges, ratios meshfs/peer and meshfs/limit, the goal list, the markdown page.
`python -m bench.report RESULT.json` re-renders RESULT.md from the JSON (e.g. after a report change).
Must not import: meshfs.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

ORDER = ["meshfs", "rclone", "davfs2", "local", "curl"]
# revad runs the data gateway, the data provider and ocdav in one process, so every byte a client
# downloads is written to a socket more than once inside it: data gateway path (meshfs, curl) twice
# (provider -> gateway -> client), WebDAV path (rclone, davfs2) three times (provider -> gateway ->
# ocdav -> client). Calibrated in the quick run of 25 Nov: davfs2 fetching a whole 1 GiB file made
# revad write 3221 MB (3.0x); meshfs's own counter 11.4 MB vs revad 23.4 MB (2.05x).
SERVER_HOPS = {"meshfs": 2, "curl": 2, "rclone": 3, "davfs2": 3}
METADATA = ("meta.", "ls.")


def group(samples: list[dict[str, Any]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """{"row.phase": {target: [samples]}} in first-seen order."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for s in samples:
        out.setdefault(f"{s['row']}.{s['phase']}", defaultdict(list))[s["target"]].append(s)
    return out


def med(xs: list[dict[str, Any]], key: str = "seconds") -> float | None:
    vals = [float(x[key]) for x in xs if key in x and x[key] is not None]
    return statistics.median(vals) if vals else None


def _fmt_s(x: float) -> str:
    if x >= 100:
        return f"{x:.0f}"
    if x >= 1:
        return f"{x:.2f}"
    if x >= 0.01:
        return f"{x:.3f}"
    return f"{x * 1000:.2f}ms"


def cell(xs: list[dict[str, Any]], nbytes: int | None) -> str:
    if not xs:
        return "–"
    secs = [float(x["seconds"]) for x in xs]
    m = statistics.median(secs)
    s = _fmt_s(m)
    if len(secs) > 1:
        s += f" [{_fmt_s(min(secs))}–{_fmt_s(max(secs))}]"
    if nbytes and m > 0:
        s += f" ({nbytes / m / 1e6:.0f} MB/s)"
    return s


def ratio(peer: float | None, ours: float | None) -> float | None:
    """Speed ratio meshfs/peer: >1 means meshfs is faster (takes less time)."""
    if peer is None or ours is None or ours <= 0:
        return None
    return peer / ours


def _r(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}×"


def limit_of(key: str, by: dict[str, list[dict[str, Any]]]) -> str | None:
    """The limit a row is compared with: the network (curl) for transfers, else the local disk."""
    if by.get("curl") and key != "seq_write.return":
        return "curl"
    if by.get("local"):
        return "local"
    return None


def table(samples: list[dict[str, Any]], nbytes: dict[str, int]) -> str:
    g = group(samples)
    targets = [t for t in ORDER if any(t in by for by in g.values())]
    head = [
        "row",
        *targets,
        "meshfs/rclone",
        "meshfs/davfs2",
        "meshfs/limit",
        "CPU s meshfs",
        "CPU s rclone",
        "CPU s revad (meshfs)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, by in g.items():
        row = [key]
        for t in targets:
            row.append(cell(by.get(t, []), nbytes.get(key)))
        ours = med(by.get("meshfs", []))
        row.append(_r(ratio(med(by.get("rclone", [])), ours)))
        row.append(_r(ratio(med(by.get("davfs2", [])), ours)))
        lim = limit_of(key, by)
        row.append(f"{_r(ratio(med(by[lim]), ours))} ({lim})" if lim else "–")
        for t, k in (("meshfs", "cpu"), ("rclone", "cpu"), ("meshfs", "srv_cpu")):
            c = med(by.get(t, []), k)
            row.append("–" if c is None else f"{c:.2f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def extras(samples: list[dict[str, Any]]) -> str:
    """Bytes fetched in the sparse row, ops/s of the metadata row."""
    g = group(samples)
    lines = []
    sp = g.get("sparse.read", {})
    if sp:
        lines.append(
            "| sparse read | bytes asked | fetched (client's counter) | fetched (revad socket writes / hops) "
            "| fetched/asked (server) |"
        )
        lines.append("|---|---|---|---|---|")
        for t in ORDER:
            xs = sp.get(t)
            if not xs:
                continue
            asked = med(xs, "asked") or 0
            f = med(xs, "fetched")
            hops = SERVER_HOPS.get(t)
            srv = (med(xs, "srv_sent") or 0) / hops if hops else None
            best = srv if srv is not None else f  # the server is the neutral witness
            fr = best / asked if asked and best is not None else None
            lines.append(
                f"| {t} | {asked / 1e6:.1f} MB | {'–' if f is None else f'{f / 1e6:.1f} MB'} | "
                f"{'–' if srv is None else f'{srv / 1e6:.1f} MB (/{hops})'} | "
                f"{'–' if fr is None else f'{fr:.2f}'} |"
            )
    for ph in ("meta.create", "meta.stat", "meta.unlink"):
        by = g.get(ph, {})
        if by:
            if not lines or not lines[-1].startswith("| meta"):
                lines += [
                    "",
                    "| metadata ops/s | " + " | ".join(t for t in ORDER if t in by) + " |",
                    "|---|" + "---|" * sum(1 for t in ORDER if t in by),
                ]
            lines.append(
                f"| {ph} | " + " | ".join(f"{med(by[t], 'per_s') or 0:.0f}" for t in ORDER if t in by) + " |"
            )
    return "\n".join(lines)


def goals(samples: list[dict[str, Any]], nbytes: dict[str, int]) -> list[tuple[str, str, bool | None]]:
    """(goal, measured, met) — met None when not measured."""
    g = group(samples)
    out: list[tuple[str, str, bool | None]] = []

    def m(key: str, t: str, k: str = "seconds") -> float | None:
        return med(g.get(key, {}).get(t, []), k)

    for key, by in g.items():
        r = ratio(med(by.get("rclone", [])), med(by.get("meshfs", [])))
        if r is None:
            continue
        need = 2.0 if key.startswith(METADATA) else 1.0
        out.append((f"{key}: meshfs ≥ {need:.0f}× rclone", f"{r:.2f}×", r >= need))

    def add(goal: str, val: float | None, ok: Any, fmt: str) -> None:
        out.append(
            (goal, "not measured" if val is None else fmt.format(val), None if val is None else bool(ok(val)))
        )

    add(
        "seq_read.cold: meshfs ≥ 0.7× curl (to /dev/null)",
        ratio(m("seq_read.cold", "curl"), m("seq_read.cold", "meshfs")),
        lambda v: v >= 0.7,
        "{:.2f}×",
    )
    add(
        "seq_read.cold: meshfs ≥ 0.7× curl (to a file)",
        ratio(m("seq_read.cold_to_disk", "curl"), m("seq_read.cold", "meshfs")),
        lambda v: v >= 0.7,
        "{:.2f}×",
    )
    w = m("seq_read.warm", "meshfs")
    add(
        "seq_read.warm (cached re-read) ≥ 2 GB/s",
        None if not w else nbytes.get("seq_read.warm", 0) / w / 1e9,
        lambda v: v >= 2.0,
        "{:.2f} GB/s",
    )
    add("ls.10000.warm ≤ 0.3 s", m("ls.10000.warm", "meshfs"), lambda v: v <= 0.3, "{:.3f} s")
    add("ls.10000.cold ≤ 3 s", m("ls.10000.cold", "meshfs"), lambda v: v <= 3.0, "{:.3f} s")
    tt, tc = m("ttfb.cold", "meshfs"), m("ttfb.cold", "curl")
    add(
        "ttfb.cold ≤ 3× one Stat+GET (curl row)",
        None if tt is None or not tc else tt / tc,
        lambda v: v <= 3.0,
        "{:.2f}×",
    )
    add(
        "seq_write.return (dd) ≥ 0.8× local disk",
        ratio(m("seq_write.return", "local"), m("seq_write.return", "meshfs")),
        lambda v: v >= 0.8,
        "{:.2f}×",
    )
    d, c = m("seq_write.durable", "meshfs"), m("seq_write.durable", "curl")
    add(
        "seq_write.durable ≤ 1.2× curl upload",
        None if d is None or not c else d / c,
        lambda v: v <= 1.2,
        "{:.2f}× curl's time",
    )
    sp = g.get("sparse.read", {}).get("meshfs", [])
    asked, fetched = med(sp, "asked"), med(sp, "fetched")
    add(
        "sparse.read: bytes fetched ≤ 2× asked (meshfs bytes_down)",
        None if not asked or fetched is None else fetched / asked,
        lambda v: v <= 2.0,
        "{:.2f}×",
    )
    sent = med(sp, "srv_sent")
    add(
        "sparse.read: bytes fetched per the server (revad socket writes / 2 hops) ≤ 2× asked",
        None if not asked or sent is None else sent / SERVER_HOPS["meshfs"] / asked,
        lambda v: v <= 2.0,
        "{:.2f}×",
    )
    return out


def goals_md(gl: list[tuple[str, str, bool | None]]) -> str:
    lines = ["| goal | measured | met |", "|---|---|---|"]
    for goal, val, ok in gl:
        lines.append(f"| {goal} | {val} | {'–' if ok is None else ('yes' if ok else '**no**')} |")
    return "\n".join(lines)


def nbytes(doc: dict[str, Any]) -> dict[str, int]:
    """Bytes moved per phase (for MB/s), from the run's parameters."""
    p = doc["meta"]["params"]
    mb = 1 << 20
    big, r4, r256 = p["size_mb"] * mb, p["rand4k_mb"] * mb, p["rand256k_mb"] * mb
    out = {f"seq_write.{k}": big for k in ("return", "durable")}
    out.update({f"seq_read.{k}": big for k in ("cold", "warm", "cold_to_disk")})
    out.update({"rand4k.cold": r4, "rand4k.warm": r4, "rand256k.cold": r256, "rand256k.warm": r256})
    return out


def render_md(doc: dict[str, Any]) -> str:
    meta, samples, errors = doc["meta"], doc["samples"], doc["errors"]
    nb = nbytes(doc)
    pr = meta["params"]
    gl = goals(samples, nb)
    md = [
        f"# meshfs benchmark {meta['started']}{' (partial)' if meta.get('partial') else ''}",
        "",
        f"`{meta['command']}` — {pr['rounds']} round(s), big file {pr['size_mb']} MiB, "
        f"sparse file {pr['sparse_mb']} MiB, {pr['nfiles']} small files; "
        f"load average at start {meta['load_start']}, end {meta.get('load_end', '?')}; "
        f"versions {meta['versions']}.",
        "",
        "Seconds, median [min–max] over rounds; every sample on a fresh mount with an empty cache. "
        "Ratios are speed ratios (peer's time / meshfs's time): > 1 means meshfs is faster. "
        "CPU = utime+stime of the daemon during the phase.",
        "",
        table(samples, nb),
        "",
        extras(samples),
        "",
        "## Goals (issues 4, 6, 9)",
        "",
        goals_md(gl),
    ]
    if errors:
        md += ["", "## Errors", ""] + [f"- {e}" for e in errors]
    return "\n".join(md) + "\n"


def main(argv: list[str]) -> int:
    if not argv or any(not Path(a).is_file() for a in argv):
        print(
            "usage: python -m bench.report RESULT.json... (rewrites RESULT.md next to each)", file=sys.stderr
        )
        return 2
    for a in argv:
        doc = json.loads(Path(a).read_text())
        Path(a).with_suffix(".md").write_text(render_md(doc))
        print(Path(a).with_suffix(".md"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
