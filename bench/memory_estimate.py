"""The memory estimate (engine/memory.py) against what a real unit takes, per architecture.

    python bench/memory_estimate.py                 # CPU: resident memory a unit grows by (VmHWM)
    python bench/memory_estimate.py --device cuda   # GPU: torch.cuda.max_memory_allocated

Each row trains one small unit (a few steps, the costly metrics at two eval points) and prints the
estimate, the measurement and their ratio. On CPU each unit runs in its own process, so the
allocator's and the libraries' start-up are not in the growth; on CUDA the peak of tensor memory is
exact, without the context and the caching allocator's slack (which memory_fraction leaves room for).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.config import DataConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402
from engine.memory import describe, unit_bytes  # noqa: E402

IMAGES = DataConfig(dataset="teacher", image_size=32, channels=3)
CASES: dict[str, tuple[ModelConfig, DataConfig, int, int]] = {  # model, data, batch, members
    "mlp": (ModelConfig(width=512, depth=3), DataConfig(dataset="teacher", input_dim=64), 512, 32),
    "cnn": (ModelConfig(arch="cnn", width=16, depth=4), IMAGES, 64, 8),
    "resnet": (ModelConfig(arch="resnet", width=8, depth=2), IMAGES, 64, 8),
    "vit": (ModelConfig(arch="vit", width=64, depth=2, patch=4, heads=4), IMAGES, 64, 8),
}

MEASURE = """
import json, sys
import torch
torch.set_num_threads(1)
from engine.config import RunConfig
from engine.trainer import train_ensemble
configs = [RunConfig.from_dict(c) for c in json.loads(sys.argv[1])]
device = sys.argv[2]
def rss(field):  # /proc's VmHWM is this process image's peak; ru_maxrss is kept across fork and exec
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(field + ":"))
if device == "cpu":
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # the peak back to the current size
        before = rss("VmRSS")
    except OSError:
        before = rss("VmHWM")
else:
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
train_ensemble(configs, device=device, flush_every=10)
if device == "cpu":
    peak = rss("VmHWM")
else:
    peak = torch.cuda.max_memory_allocated()
print(json.dumps({"measured": peak - before}))
"""


def unit(arch: str, metrics: tuple[str, ...]) -> list[RunConfig]:
    model, data, batch, k = CASES[arch]
    train = TrainConfig(steps=3, batch_size=batch, eval_points=2, metrics=metrics, probe_size=64)
    seeds = 4
    return [RunConfig(model=model, data=data, train=train, gamma=1.0, eta=0.001 * (1 + i // seeds), seed=i % seeds)
            for i in range(k)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--arch", nargs="*", default=list(CASES))
    args = ap.parse_args()
    print(f"{'unit':<24} {'estimate':>10} {'measured':>10} {'ratio':>6}")
    for arch in args.arch:
        for label, metrics in (("training", ()), ("+ test, sharpness", ("test", "sharpness", "movement"))):
            configs = unit(arch, metrics)
            done = subprocess.run(
                [sys.executable, "-c", MEASURE, json.dumps([c.to_dict() for c in configs]), args.device],
                capture_output=True, text=True, cwd=ROOT, timeout=900,
            )
            if done.returncode != 0:
                print(f"{arch} {label}: failed: {done.stderr.strip().splitlines()[-1:]}")
                continue
            measured = json.loads(done.stdout.strip().splitlines()[-1])["measured"]
            est = unit_bytes(configs)
            ratio = est / max(measured, 1)
            print(f"{arch + ' ' + label:<24} {describe(est):>10} {describe(measured):>10} {ratio:6.2f}")


if __name__ == "__main__":
    main()
