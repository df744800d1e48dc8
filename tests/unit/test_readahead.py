"""Unit tests of meshfs.cache.readahead: fetch windows for random, sequential and header/footer reads."""

from __future__ import annotations

import pytest

from meshfs.cache.readahead import FetchPlan, Readahead, ReadaheadPolicy

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


def test_random_64k_read_of_a_4gib_file_fetches_about_that() -> None:
    ra = Readahead()
    plan = ra.plan(1234 * 64 * KiB, 64 * KiB, 4 * GiB)  # aligned
    assert (plan.fetch_off, plan.fetch_len) == (1234 * 64 * KiB, 64 * KiB)
    assert (plan.need_off, plan.need_len) == (plan.fetch_off, plan.fetch_len)
    assert not plan.sequential
    plan = ra.plan(3 * GiB + 100, 64 * KiB, 4 * GiB)  # unaligned: spans two blocks
    assert plan.fetch_len == 128 * KiB and plan.fetch_off == 3 * GiB
    assert ra.window == 0


def test_sequential_reads_double_the_window_up_to_the_max() -> None:
    ra = Readahead(ReadaheadPolicy(max_window=8 * MiB))
    size = 4 * GiB
    first = ra.plan(0, 128 * KiB, size)
    assert first.fetch_len == 128 * KiB and not first.sequential  # could be a header read
    windows = []
    off = 128 * KiB
    for _ in range(10):
        plan = ra.plan(off, 128 * KiB, size)
        assert plan.sequential and plan.fetch_off == off
        assert plan.fetch_end == off + 128 * KiB + ra.window
        windows.append(ra.window)
        off += 128 * KiB
    assert windows[:7] == [128 * KiB, 256 * KiB, 512 * KiB, 1 * MiB, 2 * MiB, 4 * MiB, 8 * MiB]
    assert windows[7:] == [8 * MiB] * 3


def test_a_jump_resets_the_window() -> None:
    ra = Readahead()
    size = GiB
    for i in range(6):
        ra.plan(i * 128 * KiB, 128 * KiB, size)
    assert ra.window > 0
    plan = ra.plan(500 * MiB, 4 * KiB, size)
    assert not plan.sequential and ra.window == 0 and plan.fetch_len == 64 * KiB


def test_slightly_out_of_order_kernel_reads_still_count_as_sequential() -> None:
    ra = Readahead()
    size = GiB
    ra.plan(0, 128 * KiB, size)
    ra.plan(128 * KiB, 128 * KiB, size)
    plan = ra.plan(384 * KiB, 128 * KiB, size)  # the 256 KiB request arrives after this one
    assert plan.sequential
    plan = ra.plan(256 * KiB, 128 * KiB, size)
    assert plan.sequential


def test_root_style_header_footer_and_cluster_reads_stay_small() -> None:
    ra = Readahead()
    size = 2 * GiB
    plans = [
        ra.plan(0, 300, size),  # header
        ra.plan(size - 10 * KiB, 10 * KiB, size),  # footer / directory
        ra.plan(size - 200 * KiB, 4 * KiB, size),  # streamer info
        ra.plan(700 * MiB + 17, 30 * KiB, size),  # one basket
    ]
    assert all(not p.sequential for p in plans)
    assert max(p.fetch_len for p in plans) <= 128 * KiB
    assert plans[1].fetch_end == size  # clipped to EOF


def test_small_files_are_fetched_whole_and_eof_is_clipped() -> None:
    ra = Readahead()
    plan = ra.plan(100, 10, 300 * KiB)
    assert (plan.fetch_off, plan.fetch_len) == (0, 300 * KiB)
    assert plan.need_off == 0 and plan.need_len == 64 * KiB
    assert ra.plan(400 * KiB, 10, 300 * KiB) == FetchPlan(400 * KiB, 0, 400 * KiB, 0, False)
    big = Readahead()
    plan = big.plan(10 * MiB - 10, 100, 10 * MiB)
    assert plan.fetch_end == plan.need_end == 10 * MiB


def test_policy_is_configurable_and_checked() -> None:
    ra = Readahead(ReadaheadPolicy(block=128 * KiB, min_window=1 * MiB, max_window=2 * MiB))
    size = GiB
    ra.plan(0, 4 * KiB, size)
    p1 = ra.plan(4 * KiB, 4 * KiB, size)
    p2 = ra.plan(8 * KiB, 4 * KiB, size)
    p3 = ra.plan(12 * KiB, 4 * KiB, size)
    assert (p1.fetch_len, p2.fetch_len, p3.fetch_len) == (
        1152 * KiB,
        2 * MiB + 128 * KiB,
        2 * MiB + 128 * KiB,
    )
    with pytest.raises(ValueError, match="inconsistent"):
        ReadaheadPolicy(min_window=2 * MiB, max_window=1 * MiB)
