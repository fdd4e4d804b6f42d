"""bench/scaling.py --quick runs end to end: every table, the `gamma-lab sweep --wait` comparison and
the PNG (a smoke run: no timing is asserted)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch


@pytest.fixture
def threads_restored():
    """The benchmark sets torch's thread count (--threads 1): give the rest of the session its own back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _bench(monkeypatch):
    path = Path(__file__).resolve().parents[1] / "bench" / "scaling.py"
    spec = importlib.util.spec_from_file_location("bench_scaling", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_scaling", bench)  # its dataclass looks its module up there
    monkeypatch.setattr(sys, "path", list(sys.path))  # it puts the repository root first
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.slow
def test_scaling_bench_quick_prints_every_regime_and_draws_the_png(tmp_path, capsys, monkeypatch, threads_restored):
    png = tmp_path / "scaling.png"
    out = _bench(monkeypatch).main(["--quick", "--threads", "1", "--png", str(png)])
    printed = capsys.readouterr().out
    for title in ("against K (width 64", "against K (width 256", "against the width", "against the depth"):
        assert title in printed
    assert "matmul peak" in printed and "`gamma-lab sweep --wait`" in printed
    assert out["e2e_ratio"] > 0 and out["k_speedup_64"] > 0 and out["best_fraction"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
