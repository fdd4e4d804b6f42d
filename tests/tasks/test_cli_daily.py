"""What a researcher trips on using the `gamma-lab` command line every day (real console script,
real local worker processes, a real data folder)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.config import ConfigError

LONG = """
name = "long-cli"
[model]
width = 16
[data]
dataset = "teacher"
input_dim = 8
n_classes = 2
[train]
steps = 5000000
batch_size = 16
eval_points = 3
metrics = ["test"]
[grid]
gamma = [1.0]
eta = [0.01]
seeds = [0]
"""


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Path]:
    """A data folder whose local workers are killed at the end, even when the test failed midway."""
    yield tmp_path
    for folder in (tmp_path / "queue" / "workers", tmp_path / "queue" / "claimed"):
        for f in folder.glob("*") if folder.is_dir() else []:
            pid = f.name.split(".")[1] if "." in f.name else f.name
            if pid.isdigit():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _env(data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAMMA_LAB_")}
    env.update(GAMMA_LAB_DATA=str(data), GAMMA_LAB_HEARTBEAT_S="1", GAMMA_LAB_LOST_AFTER_S="5", GAMMA_LAB_WORKERS="1")
    return env


def _exe() -> list[str]:
    return [sys.executable, "-m", "app.cli"] if os.environ.get("GAMMA_LAB_CLI_MODULE") else ["gamma-lab"]


def _cli(data: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_exe(), *args], env=_env(data), capture_output=True, text=True, timeout=timeout)


def _settle(data: Path, sweep_id: str) -> str:
    """Poll `status` until nothing of the sweep is queued or running; returns its last output."""
    for _ in range(600):
        out = _cli(data, "status", sweep_id).stdout
        if "queued" not in out and "running" not in out:
            return out
        time.sleep(0.2)
    raise AssertionError(f"sweep {sweep_id} never settled:\n{out}")


@pytest.mark.slow
def test_ctrl_c_during_wait_says_the_sweep_goes_on_and_prints_its_id(lab: Path) -> None:
    # A user pressed Ctrl-C during `sweep --wait`: the bar vanished without a word, no sweep id was
    # printed, and the runs trained on in the background with nothing saying so.
    spec = lab / "long.toml"
    spec.write_text(LONG)
    proc = subprocess.Popen(
        [*_exe(), "sweep", str(spec), "--wait"], env=_env(lab), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stderr is not None
    seen = b""
    while b"step/s" not in seen and b"s/step" not in seen:  # the progress bar is up: we are waiting
        chunk = proc.stderr.read1(4096)
        assert chunk, seen.decode(errors="replace")
        seen += chunk
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    err = (seen + err).decode(errors="replace")
    assert proc.returncode == 130, err
    sweep_id = out.decode().strip().splitlines()[-1]
    assert len(sweep_id) == 12 and sweep_id.isalnum()
    assert f"sweep {sweep_id} keeps running in the background" in err
    assert f"gamma-lab cancel {sweep_id}" in err and "Traceback" not in err

    status = _cli(lab, "status", sweep_id)
    assert "queued" in status.stdout or "running" in status.stdout  # it really does go on
    assert _cli(lab, "cancel", sweep_id).returncode == 0
    assert "cancelled" in _settle(lab, sweep_id)


def test_cancel_after_the_runs_ended_unrecorded_flags_nothing(lab: Path) -> None:
    # After a plain `gamma-lab sweep` (nobody recording), `cancel` said "cancel requested for 2
    # run(s)" of a sweep whose runs had all finished: it read the unrecorded `queued` statuses.
    spec = lab / "short.toml"
    spec.write_text(LONG.replace("steps = 5000000", "steps = 20").replace("eta = [0.01]", "eta = [0.01, 0.1]"))
    res = _cli(lab, "sweep", str(spec))
    assert res.returncode == 0, res.stderr
    sweep_id = res.stdout.strip().splitlines()[-1]
    queue = lab / "queue"
    for _ in range(1200):  # the worker took the unit, trained it and exited
        if not [f for d in ("pending", "claimed", "workers") for f in (queue / d).glob("*")]:
            break
        time.sleep(0.05)
    res = _cli(lab, "cancel", sweep_id)
    assert res.returncode == 0 and "cancel requested for 0 run(s)" in res.stderr, res.stderr
    assert "cancelled" not in _cli(lab, "status", sweep_id).stdout


@pytest.mark.slow
def test_cancelling_a_sweep_says_which_other_sweeps_lose_shared_runs(lab: Path) -> None:
    # A re-launched spec shares its cells' runs with the first sweep: cancelling either stops them for
    # both, which happened without a word. The cancel now names the other sweep and how many it loses.
    spec = lab / "long.toml"
    spec.write_text(LONG.replace("eta = [0.01]", "eta = [0.01, 0.02]"))
    first = _cli(lab, "sweep", str(spec))
    assert first.returncode == 0, first.stderr
    first_id = first.stdout.strip().splitlines()[-1]
    again = _cli(lab, "sweep", str(spec))
    assert again.returncode == 0, again.stderr
    again_id = again.stdout.strip().splitlines()[-1]
    res = _cli(lab, "cancel", again_id)
    assert res.returncode == 0, res.stderr
    assert "cancel requested for 2 run(s)" in res.stderr
    assert f"this also stops 2 run(s) of sweep {first_id}" in res.stderr
    assert "cancelled" in _settle(lab, first_id)  # they really stopped there too
    # where each sweep trains (its reruns go back there) shows in both status views
    listing = _cli(lab, "status").stdout
    assert "where" in listing.splitlines()[0] and listing.count("local/cpu") == 2
    assert f"sweep {first_id} (long-cli, " in _cli(lab, "status", first_id).stdout
    assert ", local on cpu): " in _cli(lab, "status", first_id).stdout
    # nothing active is left to share: a second cancel says nothing about other sweeps
    res = _cli(lab, "cancel", first_id)
    assert res.returncode == 0 and "shared" not in res.stderr, res.stderr


def _claimed_worker(data: Path) -> int:
    """The pid of the local worker training the (one) unit, once it has claimed it."""
    claimed = data / "queue" / "claimed"
    for _ in range(600):
        files = list(claimed.glob("*.json")) if claimed.is_dir() else []
        if files:
            return int(files[0].name.split(".")[1])
        time.sleep(0.05)
    raise AssertionError("no worker claimed the unit")


@pytest.mark.slow
def test_rerun_after_a_killed_worker_marks_its_runs_lost_and_queues_them(lab: Path) -> None:
    # A worker was killed (SIGKILL, OOM) mid-sweep. After the heartbeat timeout the user ran
    # `gamma-lab rerun SWEEP` and got "0 run(s) queued": nobody had recorded the worker's silence,
    # so its runs still read `running` until some `gamma-lab status` caught up.
    spec = lab / "long.toml"
    spec.write_text(LONG)
    res = _cli(lab, "sweep", str(spec))
    assert res.returncode == 0, res.stderr
    sweep_id = res.stdout.strip().splitlines()[-1]
    pid = _claimed_worker(lab)
    for _ in range(600):  # wait until the registry says running (status records the started event)
        if "running" in _cli(lab, "status", sweep_id).stdout:
            break
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    killed = time.time()
    time.sleep(max(0.0, killed + 5 + 1 - time.time()))  # past GAMMA_LAB_LOST_AFTER_S=5 of silence

    res = _cli(lab, "rerun", sweep_id)
    assert res.returncode == 0, res.stderr
    assert "1 run(s) queued again" in res.stderr, res.stderr
    status = _cli(lab, "status", sweep_id).stdout
    assert "lost" not in status and ("queued" in status or "running" in status), status

    # nothing left to rerun while it trains: the reason is said, not just "0"
    res = _cli(lab, "rerun", sweep_id)
    assert "0 run(s) queued again" in res.stderr and "nothing to rerun: 1 running" in res.stderr, res.stderr
    assert _cli(lab, "cancel", sweep_id).returncode == 0
    assert "cancelled" in _settle(lab, sweep_id)


@pytest.mark.slow
def test_relaunching_a_spec_says_its_cells_were_reused_not_queued(lab: Path) -> None:
    # The same spec launched twice said "2 cells queued" both times, though the second time every
    # cell was reused from the first sweep and nothing trained: the user thought it had trained again.
    spec = lab / "short.toml"
    spec.write_text(LONG.replace("steps = 5000000", "steps = 20").replace("eta = [0.01]", "eta = [0.01, 0.1]"))
    first = _cli(lab, "sweep", str(spec), "--wait")
    assert first.returncode == 0 and "2 cells queued on the local executor" in first.stderr, first.stderr
    again = _cli(lab, "sweep", str(spec), "--wait")
    assert again.returncode == 0, again.stderr
    assert "2 cells: 0 queued, 2 reused from earlier sweeps (--rerun trains them again)" in again.stderr
    rerun = _cli(lab, "sweep", str(spec), "--wait", "--rerun")
    assert rerun.returncode == 0 and "2 cells queued on the local executor" in rerun.stderr, rerun.stderr


@pytest.mark.slow
def test_several_specs_at_once_all_checked_before_any_is_queued(lab: Path) -> None:
    # `gamma-lab sweep specs/*.toml --wait` stopped with "unrecognized arguments" at the second file.
    short = LONG.replace("steps = 5000000", "steps = 20")
    (lab / "a.toml").write_text(short)
    (lab / "b.toml").write_text(short.replace('name = "long-cli"', 'name = "b"').replace("[0.01]", "[0.1]"))
    (lab / "c_bad.toml").write_text(short.replace("gamma = [1.0]", "gamma = [-1.0]"))

    bad = _cli(lab, "sweep", str(lab / "a.toml"), str(lab / "c_bad.toml"), "--wait")
    assert bad.returncode == 2 and not bad.stdout, bad.stderr
    assert f"error: {lab / 'c_bad.toml'}: 1 problem(s)" in bad.stderr and "grid.gamma" in bad.stderr
    assert len(_cli(lab, "status").stdout.strip().splitlines()) == 1  # the header alone: not even a.toml

    good = _cli(lab, "sweep", str(lab / "a.toml"), str(lab / "b.toml"), "--wait")
    assert good.returncode == 0, good.stderr
    ids = good.stdout.split()
    assert len(ids) == 2 and ids[0] != ids[1]
    for sweep_id in ids:
        assert "done" in _cli(lab, "status", sweep_id).stdout.splitlines()[0]


def _dead_broker() -> str:
    """A redis:// URL on a port where nothing listens (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"redis://:secret@127.0.0.1:{port}/0"


@pytest.mark.slow
def test_broker_down_is_one_line_nothing_stored_and_status_still_answers(lab: Path) -> None:
    # With redis-server down (or a typo in GAMMA_LAB_BROKER_URL) every command printed a redis
    # traceback, and a sweep launched from the dashboard was recorded `queued` for ever.
    spec = lab / "short.toml"
    spec.write_text(LONG.replace("steps = 5000000", "steps = 20"))
    assert _cli(lab, "sweep", str(spec), "--wait").returncode == 0  # one sweep stored, embedded mode
    env = {**_env(lab), "GAMMA_LAB_BROKER_URL": _dead_broker()}
    for args in (["sweep", str(spec)], ["sweep", str(spec), "--wait"], ["rerun", "x"], ["export", "x"]):
        res = subprocess.run([*_exe(), *args], env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and "Traceback" not in res.stderr, (args, res.stderr)
        assert "broker: cannot reach redis://:**@127.0.0.1:" in res.stderr, (args, res.stderr)
        assert "secret" not in res.stderr
    res = subprocess.run([*_exe(), "status"], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "warning: broker: cannot reach" in res.stderr, res.stderr
    assert len(res.stdout.strip().splitlines()) == 2  # the header and the one sweep: nothing more was stored

    from storage.registry import Registry
    from storage.settings import load_settings
    from tasks import api
    from tasks.spec import SweepSpec

    settings = load_settings(data_dir=str(lab), broker_url=env["GAMMA_LAB_BROKER_URL"])
    with pytest.raises(ConfigError, match="cannot reach the broker"):
        api.submit(SweepSpec.from_toml(LONG), settings, executor="celery")
    with Registry(settings.registry_url) as reg:
        assert len(reg.list_sweeps()) == 1


def test_unusable_data_folder_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    res = _cli(blocker / "data", "status")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.startswith(f"error: data folder: cannot use '{blocker / 'data'}'"), res.stderr


@pytest.mark.slow
def test_a_gpu_this_machine_lacks_is_refused_before_anything_is_stored(lab: Path) -> None:
    # `gamma-lab sweep spec.toml --device cuda` on a laptop queued every run to local workers, and
    # every run failed at once with a torch error. (cuda:99 is absent on any machine we run on.)
    spec = lab / "short.toml"
    spec.write_text(LONG.replace("steps = 5000000", "steps = 20"))
    for device, says in (("cuda:99", "device: cuda:99: "), ("cuda:x", "device: must be 'cpu', 'cuda' or 'cuda:N'")):
        res = _cli(lab, "sweep", str(spec), "--device", device)
        assert res.returncode == 2 and res.stderr.startswith(f"error: {says}"), res.stderr
        assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert len(_cli(lab, "status").stdout.strip().splitlines()) == 1  # the header alone: nothing stored

    from storage.registry import Registry
    from storage.settings import load_settings
    from tasks import api

    done = _cli(lab, "sweep", str(spec), "--wait")
    assert done.returncode == 0, done.stderr
    sweep_id = done.stdout.split()[-1]
    settings = load_settings(data_dir=str(lab))
    with pytest.raises(ConfigError, match="cuda:99"):
        api.rerun(settings, sweep_id, everything=True, device="cuda:99")
    with Registry(settings.registry_url) as reg:  # nothing was reset for a new attempt
        assert [(r["status"], r["attempt"]) for r in reg.list_runs(sweep_id)] == [("done", 0)]


@pytest.mark.slow
def test_rerun_takes_the_device(lab: Path) -> None:
    # A sweep launched with --device cuda (the gpu queue) could only be rerun to the cpu queue: the
    # launch device is not stored and `rerun` had no --device.
    spec = lab / "short.toml"
    spec.write_text(LONG.replace("steps = 5000000", "steps = 20"))
    done = _cli(lab, "sweep", str(spec), "--wait")
    assert done.returncode == 0, done.stderr
    res = _cli(lab, "rerun", done.stdout.split()[-1], "--all", "--device", "cuda:99")
    assert res.returncode == 2 and res.stderr.startswith("error: device: cuda:99: "), res.stderr


@pytest.mark.slow
def test_export_piped_into_head_is_not_an_error(lab: Path) -> None:
    # `gamma-lab export S --series | head` printed "error: export: cannot write None: Broken pipe"
    # and exited 2; `status | head` on a long list gave a BrokenPipeError traceback.
    spec = lab / "short.toml"
    spec.write_text(LONG.replace("steps = 5000000", "steps = 5000").replace("eta = [0.01]", "eta = [0.01, 0.02]"))
    done = _cli(lab, "sweep", str(spec), "--wait")
    assert done.returncode == 0, done.stderr
    proc = subprocess.Popen(
        [*_exe(), "export", done.stdout.split()[-1], "--series"],
        env=_env(lab),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().decode().strip() == "run_id,gamma,eta,seed,step,metric,value"
    proc.stdout.close()  # what `head -1` does: 10,000 rows (~400 kB) cannot all fit in the pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "error" not in err and "Traceback" not in err, err
