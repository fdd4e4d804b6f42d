"""bench/engine.py --dead-half --quick runs end to end (a smoke run: no timing is asserted)."""

import importlib.util
from pathlib import Path

import pytest
import torch


@pytest.fixture
def threads_restored():
    """The benchmark sets torch's thread count (--threads 1): give the rest of the session its own back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
def test_dead_half_bench_compacts_without_changing_the_survivors(capsys, threads_restored):
    path = Path(__file__).resolve().parents[2] / "bench" / "engine.py"
    spec = importlib.util.spec_from_file_location("bench_engine_dead", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--dead-half", "--quick", "--threads", "1"])
    printed = capsys.readouterr().out
    assert "diverged: 2 of 4" in printed and "the survivors alone" in printed
    assert out["same"] == 1.0  # survivors' summaries identical with and without compaction
    assert 0 <= out["last_divergence"] < 0.05 * 200  # the doomed half dies in the first 5 % of the steps
    assert out["compacted_cpu"] > 0 and out["uncompacted_wall"] > 0
