"""A sweep remembers the device it was launched on: its reruns and added seeds go back to the same
queue. Before, a sweep launched with --device cuda (the Celery `gpu` queue) was rerun, from the Runs
page or `gamma-lab rerun` without --device, and given extra seeds on the `cpu` queue, where a GPU-only
lab has no worker: those runs sat queued for ever.

Real parts: a real redis-server (the Celery broker; no worker, so every task stays in its queue and
the test reads it there), a real SQLite registry, the real CLI and the real Runs page (AppTest)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from engine.config import ConfigError
from storage.recorder import Recorder
from storage.registry import Registry
from storage.settings import Settings, load_settings
from tasks import api
from tasks.planner import WorkUnit
from tasks.spec import SweepSpec

MAIN = str(Path(__file__).resolve().parents[2] / "app" / "main.py")


def _spec(seeds: list[int] | None = None) -> SweepSpec:
    return SweepSpec.from_dict(
        {
            "name": "device-test",
            "model": {"width": 16, "depth": 3},
            "data": {"dataset": "teacher", "input_dim": 8, "n_classes": 2},
            "train": {"steps": 20, "batch_size": 16, "eval_points": 3, "metrics": ["test"]},
            "grid": {"gamma": [1.0], "eta": [0.01, 0.1], "seeds": seeds or [0]},
        }
    )


def _take_queued(redis_url: str) -> dict[str, list[WorkUnit]]:
    """Pop every Celery message waiting in the broker: {queue name: the work units it carries}.
    (kombu's Redis transport keeps a queue as a list under the queue's name.)"""
    import redis

    client = redis.Redis.from_url(redis_url)
    out: dict[str, list[WorkUnit]] = {}
    for queue in ("cpu", "gpu"):
        while (raw := client.rpop(queue)) is not None:
            message = json.loads(raw)
            args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            out.setdefault(queue, []).append(WorkUnit.from_json(args[0]))
    return out


def _fail_all(settings: Settings, sweep_id: str) -> None:
    """What a dead GPU worker leaves behind: every run of the sweep ended without a result."""
    with Registry(settings.registry_url) as reg:
        for r in reg.list_runs(sweep_id):
            assert reg.finish(r["run_id"], r["attempt"], "failed", error="worker died")


@pytest.fixture
def celery_settings(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    from tasks.executors import CeleryExecutor

    # The "no worker consumes this queue" hint (a broadcast that costs ~1 s to close) is not under test:
    # no worker runs here, so every unit stays in the queue it was sent to.
    monkeypatch.setattr(CeleryExecutor, "_warn_if_unserved", staticmethod(lambda *_: None))
    settings = load_settings(data_dir=tmp_path / "data", broker_url=redis_url)
    settings.ensure_dirs()
    return settings


def test_rerun_and_added_seeds_go_back_to_the_gpu_queue(celery_settings: Settings, redis_url: str) -> None:
    settings = celery_settings
    sweep_id = api.submit(_spec(), settings, executor="celery", device="cuda")
    with Registry(settings.registry_url) as reg:
        assert reg.get_sweep(sweep_id)["device"] == "cuda"
        run_ids = sorted(r["run_id"] for r in reg.list_runs(sweep_id))
    launched = _take_queued(redis_url)
    assert set(launched) == {"gpu"} and {u.device for u in launched["gpu"]} == {"cuda"}

    # `gamma-lab rerun SWEEP` / the Runs page's button: no device given
    _fail_all(settings, sweep_id)
    assert sorted(api.rerun(settings, sweep_id)) == run_ids
    queued = _take_queued(redis_url)
    assert set(queued) == {"gpu"} and {u.device for u in queued["gpu"]} == {"cuda"}
    assert sorted(rid for u in queued["gpu"] for rid in (c.run_id for c in u.configs)) == run_ids

    # one run by its id: the device of the sweep it belongs to
    _fail_all(settings, sweep_id)
    assert api.rerun(settings, run_ids[0]) == [run_ids[0]]
    queued = _take_queued(redis_url)
    assert set(queued) == {"gpu"} and [c.run_id for u in queued["gpu"] for c in u.configs] == [run_ids[0]]

    # added seeds
    new = api.add_seeds(settings, sweep_id, [7])
    queued = _take_queued(redis_url)
    assert len(new) == 2 and set(queued) == {"gpu"} and {u.device for u in queued["gpu"]} == {"cuda"}

    # an explicit device still wins, for this rerun only: the sweep keeps its launch device
    _fail_all(settings, sweep_id)
    api.rerun(settings, sweep_id, device="cpu")
    queued = _take_queued(redis_url)
    assert set(queued) == {"cpu"} and {u.device for u in queued["cpu"]} == {"cpu"}
    with Registry(settings.registry_url) as reg:
        assert reg.get_sweep(sweep_id)["device"] == "cuda"


def test_a_cpu_launch_stays_on_the_cpu_queue(celery_settings: Settings, redis_url: str) -> None:
    sweep_id = api.submit(_spec(), celery_settings, executor="celery")  # no --device: cpu
    with Registry(celery_settings.registry_url) as reg:
        assert reg.get_sweep(sweep_id)["device"] == "cpu"
    _take_queued(redis_url)
    api.add_seeds(celery_settings, sweep_id, [3])
    assert set(_take_queued(redis_url)) == {"cpu"}


def test_runs_page_buttons_use_the_launch_device(
    celery_settings: Settings, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The Runs page's "Rerun unfinished" and "Add seeds" call tasks.api without a device, so they
    # reach the sweep's launch device too.
    sweep_id = api.submit(_spec(), celery_settings, executor="celery", device="cuda:1")
    _take_queued(redis_url)
    _fail_all(celery_settings, sweep_id)
    monkeypatch.setenv("GAMMA_LAB_DATA", str(celery_settings.data_dir))
    monkeypatch.setenv("GAMMA_LAB_BROKER_URL", redis_url)
    monkeypatch.setenv("GAMMA_LAB_AUTH", "none")  # a lab with a broker asks for a login; not what this tests
    at = AppTest.from_file(MAIN, default_timeout=60)
    with Recorder(celery_settings):  # ours, stopped at the end: the page in this process only reads
        at.switch_page("views/runs.py").run()
        assert not at.exception, at.exception
        next(b for b in at.button if b.label == "Rerun unfinished").click().run()
        assert not at.exception and not at.error, (at.exception, at.error)
        queued = _take_queued(redis_url)
        assert set(queued) == {"gpu"} and {u.device for u in queued["gpu"]} == {"cuda:1"}
        assert sum(len(u.configs) for u in queued["gpu"]) == 2
        at.text_input(key="runs.seeds").set_value("5")
        next(b for b in at.button if b.label == "Add seeds").click().run()
        assert not at.exception and not at.error, (at.exception, at.error)
    queued = _take_queued(redis_url)
    assert set(queued) == {"gpu"} and {u.device for u in queued["gpu"]} == {"cuda:1"}


@pytest.fixture
def gpu_sweep_here(tmp_path: Path) -> tuple[Settings, str]:
    """A sweep recorded as launched on cuda:99 with local workers (no machine we test on has it),
    every run failed. (submit refuses that device here, so it is written through the registry.)"""
    settings = load_settings(data_dir=tmp_path / "data", workers=1)
    settings.ensure_dirs()
    with Registry(settings.registry_url) as reg:
        sweep_id = reg.create_sweep("gpu-here", "t", _spec().to_dict(), executor="local", device="cuda:99")
        reg.add_runs(sweep_id, _spec().cells())
    _fail_all(settings, sweep_id)
    return settings, sweep_id


def _untouched(settings: Settings, sweep_id: str) -> None:
    with Registry(settings.registry_url) as reg:
        assert [(r["status"], r["attempt"]) for r in reg.list_runs(sweep_id)] == [("failed", 0)] * 2
    assert not list((Path(settings.data_dir) / "queue").rglob("*.json"))  # no unit handed to local workers


def test_local_rerun_on_a_gpu_this_machine_lacks_is_refused(gpu_sweep_here: tuple[Settings, str]) -> None:
    # The stored device meets the same check as an explicit one: refused, naming the sweep, before
    # any run is reset or any seed is stored.
    settings, sweep_id = gpu_sweep_here
    says = f"cuda:99 (sweep {sweep_id} was launched on it): "
    with pytest.raises(ConfigError, match=rf"^device: cuda:99 \(sweep {sweep_id} was launched on it\)"):
        api.rerun(settings, sweep_id)
    with Registry(settings.registry_url) as reg:
        one = reg.list_runs(sweep_id)[0]["run_id"]
    with pytest.raises(ConfigError, match="cuda:99"):
        api.rerun(settings, one)
    with pytest.raises(ConfigError, match="cuda:99"):
        api.add_seeds(settings, sweep_id, [4])
    _untouched(settings, sweep_id)

    env = {k: v for k, v in os.environ.items() if not k.startswith("GAMMA_LAB_")}
    env["GAMMA_LAB_DATA"] = str(settings.data_dir)
    res = subprocess.run(
        [sys.executable, "-m", "app.cli", "rerun", sweep_id], env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 2 and res.stderr.startswith(f"error: device: {says}"), res.stderr
    assert "--device cpu" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    _untouched(settings, sweep_id)


def test_runs_page_shows_the_refusal_in_one_line(
    gpu_sweep_here: tuple[Settings, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, sweep_id = gpu_sweep_here
    for k in list(os.environ):
        if k.startswith("GAMMA_LAB_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("GAMMA_LAB_DATA", str(settings.data_dir))
    at = AppTest.from_file(MAIN, default_timeout=60)
    with Recorder(settings):
        at.switch_page("views/runs.py").run()
        next(b for b in at.button if b.label == "Rerun unfinished").click().run()
        assert not at.exception, at.exception
        assert at.error and at.error[0].value.startswith(f"device: cuda:99 (sweep {sweep_id} was launched on it)")
        at.text_input(key="runs.seeds").set_value("4")
        next(b for b in at.button if b.label == "Add seeds").click().run()
        assert not at.exception, at.exception
        assert at.error and at.error[0].value.startswith("device: cuda:99")
    _untouched(settings, sweep_id)


def test_added_seeds_of_a_celery_sweep_without_a_broker_go_to_local_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a rerun already did: with no broker set here, a Celery sweep's added seeds are trained by local
    # workers. Before, the seeds' runs were stored `queued`, then handing them to Celery failed
    # ("celery needs a broker") and they stayed queued for ever.
    from tasks import local_queue

    monkeypatch.setattr(local_queue, "ensure_workers", lambda *a, **k: 0)  # the units stay pending, to be read
    settings = load_settings(data_dir=tmp_path / "data", workers=1)
    settings.ensure_dirs()
    with Registry(settings.registry_url) as reg:
        sweep_id = reg.create_sweep("lab", "t", _spec().to_dict(), executor="celery", device="cpu")
        reg.add_runs(sweep_id, _spec().cells())
    new = api.add_seeds(settings, sweep_id, [9])
    units = [WorkUnit.from_json(p.read_text()) for p in local_queue.pending_units(settings)]
    assert sorted(c.run_id for u in units for c in u.configs) == sorted(new) and len(new) == 2
    assert {u.device for u in units} == {"cpu"}


def test_rerun_and_added_seeds_with_the_broker_down_change_nothing(tmp_path: Path) -> None:
    # `gamma-lab rerun` of a Celery sweep while Redis was down reset every run to a new `queued` attempt,
    # then failed with a raw redis ConnectionError: the runs stayed queued for ever. Now refused first.
    from tests.conftest import free_port

    settings = load_settings(data_dir=tmp_path / "data", broker_url=f"redis://127.0.0.1:{free_port()}/0")
    settings.ensure_dirs()
    with Registry(settings.registry_url) as reg:
        sweep_id = reg.create_sweep("down", "t", _spec().to_dict(), executor="celery", device="cuda")
        reg.add_runs(sweep_id, _spec().cells())
    _fail_all(settings, sweep_id)
    with pytest.raises(ConfigError, match=r"^executor: cannot reach the broker redis://127\.0\.0\.1:\d+/0 "):
        api.rerun(settings, sweep_id)
    with pytest.raises(ConfigError, match="cannot reach the broker"):
        api.add_seeds(settings, sweep_id, [3])
    with Registry(settings.registry_url) as reg:
        assert [(r["status"], r["attempt"]) for r in reg.list_runs(sweep_id)] == [("failed", 0)] * 2
