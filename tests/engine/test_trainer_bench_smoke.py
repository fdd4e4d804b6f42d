"""bench/engine.py runs end to end in --quick mode (a smoke run: no timing is asserted)."""

import importlib.util
from pathlib import Path

import pytest
import torch


def _bench():
    path = Path(__file__).resolve().parents[2] / "bench" / "engine.py"
    spec = importlib.util.spec_from_file_location("bench_engine", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.slow
def test_engine_bench_quick_runs_and_both_ways_agree(capsys):
    out = _bench().main(["--quick", "--dataset", "teacher"])
    assert out["t_ref"] > 0 and out["t_ens"] > 0
    printed = capsys.readouterr().out
    assert "speed-up" in printed and "matmul peak" in printed
    gap = float(printed.rsplit("final losses", 1)[1].split()[0])
    assert gap < 1e-4  # the reference and the ensemble train the same networks to the same losses


@pytest.mark.slow
def test_engine_bench_on_cuda_runs_there_or_says_why_not(capsys):
    bench = _bench()
    if torch.cuda.is_available():  # on a GPU machine: both ways run there and agree
        out = bench.main(["--quick", "--dataset", "teacher", "--device", "cuda"])
        assert out["gap"] < 1e-4 and out["t_ens"] > 0
        return
    with pytest.raises(SystemExit) as exc:
        bench.main(["--quick", "--device", "cuda"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--device cuda" in err and "no CUDA device" in err
