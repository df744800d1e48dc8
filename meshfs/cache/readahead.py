"""Fetch-window decisions for read misses: sequential detection and the small-read economy.

Owns only the decision of *which bytes to fetch*; pure logic with no I/O, no clock and no imports
from the rest of meshfs (the vfs feeds it offsets and does the fetching through cs3.transfer).

Policy (one `Readahead` per open handle):
  * The first read of a handle, and any read that does not continue the previous one, is *random*:
    the fetch covers just the `block`-aligned blocks the read touches (64 KiB by default), so a 64 KiB
    read of a 4 GiB file fetches 64-128 KiB, and the header/footer reads of ROOT, HDF5, NetCDF and
    GeoTIFF files stay small.
  * A read starting where the previous one ended (or up to `tolerance` after it; or up to `tolerance`
    before it inside a sequential run, for requests the kernel issued in parallel arriving out of
    order) is *sequential*: the window starts at `min_window` (128 KiB) and doubles on
    every sequential read up to `max_window` (`readahead_max` in the config, 64 MiB by default); the
    fetch is the read itself plus the window after it, aligned to `block`.
  * Files of at most `whole_file_below` bytes are fetched whole on the first miss (one request is
    cheaper than several).
The result separates what the read needs now (`need`) from the speculative part (`fetch` ⊇ need):
the vfs fetches the missing parts of `need` before answering and may fetch the rest in the background.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FetchPlan", "Readahead", "ReadaheadPolicy"]

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True, slots=True)
class ReadaheadPolicy:
    """Tunables (sizes in bytes)."""

    block: int = 64 * KiB
    min_window: int = 128 * KiB
    max_window: int = 8 * MiB
    tolerance: int = 256 * KiB
    whole_file_below: int = 512 * KiB

    def __post_init__(self) -> None:
        if self.block <= 0 or self.min_window <= 0 or self.max_window < self.min_window:
            raise ValueError(f"readahead: inconsistent policy {self}")


@dataclass(frozen=True, slots=True)
class FetchPlan:
    """`need_*`: the block-aligned range the current read requires; `fetch_*`: the range worth
    fetching now (need plus readahead), both clipped to the file size. `sequential` says why."""

    need_off: int
    need_len: int
    fetch_off: int
    fetch_len: int
    sequential: bool

    @property
    def need_end(self) -> int:
        return self.need_off + self.need_len

    @property
    def fetch_end(self) -> int:
        return self.fetch_off + self.fetch_len


class Readahead:
    """Per-handle access history. Call `plan()` for every read (hits too: it keeps the history and
    lets the vfs prefetch ahead of a sequential reader). Not thread-safe; one handle, one task."""

    __slots__ = ("_next", "_policy", "_window")

    def __init__(self, policy: ReadaheadPolicy | None = None) -> None:
        self._policy = policy or ReadaheadPolicy()
        self._next: int | None = None  # where a sequential successor would start
        self._window = 0  # current sequential window; 0 = not in a sequential run

    @property
    def window(self) -> int:
        """The current readahead window in bytes (0 while access looks random)."""
        return self._window

    def plan(self, off: int, size: int, file_size: int) -> FetchPlan:
        """Record a read of [off, off+size) and say what to fetch for it."""
        p = self._policy
        end = min(off + max(size, 0), file_size)
        sequential = False
        if self._next is not None and off > 0:
            gap = off - self._next
            # forward: a continuation or a small skip; backward: only inside a sequential run
            # (requests the kernel issued in parallel arriving out of order)
            sequential = 0 <= gap <= p.tolerance or (self._window > 0 and -p.tolerance <= gap < 0)
        self._next = off + max(size, 0)
        if off >= file_size or end <= off:
            return FetchPlan(off, 0, off, 0, sequential)
        need_off = off - off % p.block
        need_end = min(_round_up(end, p.block), file_size)
        if file_size <= p.whole_file_below:
            self._window = 0
            return FetchPlan(need_off, need_end - need_off, 0, file_size, sequential)
        if sequential:
            self._window = min(max(self._window * 2, p.min_window), p.max_window)
            fetch_end = min(_round_up(end + self._window, p.block), file_size)
        else:
            self._window = 0
            fetch_end = need_end
        return FetchPlan(need_off, need_end - need_off, need_off, fetch_end - need_off, sequential)


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit
