"""A smoke run of the incoming benchmark at saturation (tether.bench.incoming): nginx in
a pod and locally, wrk for one second per path, one round. It checks that the bench runs
end to end and yields its ratios; it does not judge them (speed is `make bench`'s job)."""

from __future__ import annotations

import pytest
from tether.bench import BenchContext
from tether.bench.incoming import wrk_figures

pytestmark = pytest.mark.e2e


def test_the_saturation_bench_runs_and_reports_every_ratio(tmp_path):
    figures = wrk_figures(BenchContext(tmp_path), seconds=1, rounds=1)
    names = [f["name"] for f in figures]
    assert len(names) == 4
    assert any("passed through" in n and "requests/s" in n for n in names)
    assert any("stolen by the filter" in n for n in names)
    assert any("stolen (no filter)" in n for n in names)
    for f in figures:
        if f["unit"] == "req/s":
            # Every path answered requests: a session that routed nothing would be 0.
            assert f["tether"] > 0 and f["direct"] > 0 and f["ratio"] > 0, f
        assert "goal" in f, f
