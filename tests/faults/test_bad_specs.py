"""Specs that must be refused before anything is stored (issue #9 items 6 and 7), through real
`gamma-lab` processes and the Launch form.

- A 10^7-cell grid (10^4 γ × 10^3 η, a log range that explodes, seeds = 10^7) is refused naming
  `grid` (and max_cells) from the axes' sizes: `gamma-lab sweep` used to list every cell first
  (1.8 GB and growing). The CLI runs under a 2 GB address-space limit, so the old behaviour ends in a
  MemoryError traceback instead of filling the machine; the test asserts exit 2, the message, the
  peak RSS, and that nothing was stored — no timed assertion.
- A control character (NUL, ESC, DEL, ...) in any string field is refused at that field, with the
  character and its position, before anything is stored.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.faults.conftest import base_env, small_spec

pytestmark = pytest.mark.slow

AS_LIMIT = 2 * 1024**3  # bytes of address space for the CLI (torch imports well inside it)

# Runs `gamma-lab ARGS` under an address-space limit and prints its exit code, stderr and peak RSS
# (RUSAGE_CHILDREN of this wrapper: the CLI is its only child) as one JSON line.
_WRAPPER = """
import json, resource, subprocess, sys
limit = int(sys.argv[1])
def cap():
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
r = subprocess.run([sys.executable, "-m", "app.cli", *sys.argv[2:]], capture_output=True, text=True,
                   preexec_fn=cap, timeout=240)
print(json.dumps({"rc": r.returncode, "stderr": r.stderr, "stdout": r.stdout,
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def bounded_cli(env: dict[str, str], *args: str) -> dict:
    res = subprocess.run(
        [sys.executable, "-c", _WRAPPER, str(AS_LIMIT), *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def stored_sweeps(data: Path) -> list[dict]:
    if not (data / "registry.sqlite").exists():
        return []
    from storage.registry import Registry

    with Registry(f"sqlite:///{data / 'registry.sqlite'}") as reg:
        return reg.list_sweeps()


def huge_spec(kind: str) -> str:
    spec = small_spec("huge")
    if kind == "grid":  # 10,000 γ × 1,000 η = 10^7 cells, every axis within its own limit
        gammas = ", ".join(f"{1e-3 * (1 + i / 1000):.9g}" for i in range(10_000))
        return spec.replace("gamma = [1.0]", f"gamma = [{gammas}]").replace(
            "eta = [0.01, 0.1]", "eta = { from = 1e-4, to = 1.0, per_decade = 249.75 }"
        )
    if kind == "range":  # one axis that would hold 3·10^9 values
        return spec.replace("eta = [0.01, 0.1]", "eta = { from = 1e-3, to = 1.0, per_decade = 1e9 }")
    assert kind == "seeds"
    return spec.replace("seeds = [0]", "seeds = 10000000")


@pytest.mark.parametrize(
    ("kind", "wanted"),
    [
        ("grid", ["grid: 10,000 γ × 1,000 η × 1 seeds = 10,000,000 cells", "max_cells=10000"]),
        ("range", ["grid.eta: log range gives", "at most 10,000 values per grid axis"]),
        ("seeds", ["grid.seeds:", "(got 10000000)"]),
    ],
)
def test_a_ten_million_cell_spec_is_refused_naming_grid(tmp_path: Path, kind: str, wanted: list[str]) -> None:
    data = tmp_path / "data"
    data.mkdir()
    env = base_env(data)
    path = tmp_path / f"{kind}.toml"
    path.write_text(huge_spec(kind))
    for args in (["sweep", str(path)], ["sweep", str(path), "--wait"], ["sweep", str(path), str(path)]):
        got = bounded_cli(env, *args)
        assert got["rc"] == 2, (args, got["stderr"][-3000:])
        assert "Traceback" not in got["stderr"] and "MemoryError" not in got["stderr"], got["stderr"][-3000:]
        for text in wanted:
            assert text in got["stderr"], (args, got["stderr"][-3000:])
        assert "nothing was queued" in got["stderr"]
        assert got["maxrss_kb"] < 1_000_000, got["maxrss_kb"]  # KB: the cells were never listed
        assert got["stdout"] == ""  # no sweep id
    assert stored_sweeps(data) == []
    assert not (data / "queue" / "pending").exists() or not any((data / "queue" / "pending").iterdir())


def test_api_submit_add_seeds_and_the_launch_form_refuse_a_huge_grid(tmp_path: Path) -> None:
    """The other paths, in-process: api.submit and add_seeds refuse at `grid` without building cells
    (add_seeds used to list every new cell before comparing with max_cells), and so does the Launch
    form's logic (app.logic.launch.check_form with the settings' max_cells)."""
    from app.logic.launch import check_form, spec_to_form
    from engine.config import ConfigError
    from storage.registry import Registry
    from storage.settings import load_settings
    from tasks import api
    from tasks.spec import SpecError, SweepSpec

    settings = load_settings(data_dir=tmp_path / "data")
    settings.ensure_dirs()
    spec = SweepSpec.from_toml(huge_spec("grid"))
    with pytest.raises(SpecError) as info:
        api.submit(spec, settings)
    assert info.value.errors[0].field == "grid" and "max_cells=10000" in info.value.errors[0].message
    assert stored_sweeps(settings.data_dir) == []

    small = SweepSpec.from_toml(small_spec("few"))
    with Registry(settings.registry_url) as reg:  # a stored sweep (no worker needed: nothing is queued)
        sid = reg.create_sweep(small.name, "me", small.to_dict())
        reg.add_runs(sid, small.cells())
    for seeds in (range(10_000_000), list(range(6_000)) * 2):
        with pytest.raises(ConfigError) as err:
            api.add_seeds(settings, sid, seeds)
        assert err.value.field == "grid" and "max_cells=10000" in err.value.message
    with Registry(settings.registry_url) as reg:
        assert len(reg.list_runs(sid)) == 2  # nothing added

    form = spec_to_form(small.to_dict())
    form.update({"grid.gamma": "1e-4 .. 10 / 1999", "grid.eta": "1e-4 .. 1 / 249.75"})  # 9,996 × 1,000
    got, errors = check_form(form, max_cells=settings.max_cells)
    assert got is None
    assert [(e.field, "max_cells=10000" in e.message) for e in errors] == [("grid", True)]
    form.update({"grid.eta": "1e-4 .. 1 / 1e9"})
    got, errors = check_form(form, max_cells=settings.max_cells)
    assert got is None and [e.field for e in errors] == ["grid.eta"]


CONTROL_CASES = [
    (
        'name = "fault"',
        'name = "abc\\u0000def"',
        "name: must not contain control characters (got '\\x00' at position 3)",
    ),
    (
        'dataset = "teacher"',
        'dataset = "tea\\u001bcher"',
        "data.dataset: must not contain control characters (got '\\x1b' at position 3)",
    ),
    (
        "width = 16",
        'width = 16\narch = "ml\\u007fp"',
        "model.arch: must not contain control characters (got '\\x7f' at position 2)",
    ),
    (
        "width = 16",
        'width = 16\nactivation = "relu\\n"',
        "model.activation: must not contain control characters (got '\\n' at position 4)",
    ),
    (
        "steps = 200",
        'steps = 200\nloss = "\\u0085mse"',
        "train.loss: must not contain control characters (got '\\x85' at position 0)",
    ),
    (
        'dataset = "teacher"',
        'dataset = "npz"\npath = "sets/x\\u0000.npz"',
        "data.path: must not contain control characters (got '\\x00' at position 6)",
    ),
]


@pytest.mark.parametrize(("old", "new", "line"), CONTROL_CASES)
def test_control_characters_are_refused_at_the_field_by_the_cli(tmp_path: Path, old: str, new: str, line: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    spec = small_spec()
    assert old in spec
    path = tmp_path / "bad.toml"
    path.write_text(spec.replace(old, new, 1))
    got = bounded_cli(base_env(data), "sweep", str(path), "--wait")
    assert got["rc"] == 2, got["stderr"][-3000:]
    assert f"  {line}" in got["stderr"].splitlines(), got["stderr"][-3000:]
    assert "\x00" not in got["stderr"] and "\x1b" not in got["stderr"] and "Traceback" not in got["stderr"]
    assert got["stdout"] == ""
    assert stored_sweeps(data) == []


def test_control_characters_are_refused_by_the_launch_form_and_the_registry(tmp_path: Path) -> None:
    from app.logic.launch import check_form, errors_by_field, spec_to_form
    from storage.registry import Registry, RegistryError
    from tasks.spec import SweepSpec

    form = spec_to_form(SweepSpec.from_toml(small_spec()).to_dict())
    form["name"] = "my\x00sweep"
    got, errors = check_form(form, max_cells=10_000)
    assert got is None
    assert errors_by_field(errors) == {"name": ["must not contain control characters (got '\\x00' at position 2)"]}
    form.update({"name": "ok", "data.dataset": "npz", "data.path": "a\tb.npz"})
    got, errors = check_form(form, max_cells=10_000)
    assert got is None
    assert errors_by_field(errors)["data.path"] == ["must not contain control characters (got '\\t' at position 1)"]

    with Registry(f"sqlite:///{tmp_path / 'registry.sqlite'}") as reg:  # the last line of defence
        for name, owner, field in (("a\x00b", "me", "name"), ("ok", "m\x1be", "owner")):
            with pytest.raises(RegistryError, match=f"^{field}: must not contain control characters"):
                reg.create_sweep(name, owner, {})
        assert reg.list_sweeps() == []


def test_the_launch_page_shows_both_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real Launch page (AppTest): a NUL in the name and a 10^7-cell grid are shown as errors, and
    nothing is stored when Launch is pressed."""
    from streamlit.testing.v1 import AppTest

    from app import ui

    monkeypatch.setenv("GAMMA_LAB_DATA", str(tmp_path))
    at = AppTest.from_file(str(Path(__file__).resolve().parents[2] / "app" / "main.py"), default_timeout=60)
    try:
        at.run()
        at.text_input(key="launch.name").set_value("abc\x00")
        at.text_input(key="launch.grid.gamma").set_value("1e-4 .. 10 / 1999")
        at.text_input(key="launch.grid.eta").set_value("1e-4 .. 1 / 249.75")
        next(b for b in at.button if b.label == "Launch").click().run()
        assert not at.exception, at.exception
        shown = " | ".join(e.value for e in at.error)
        assert "must not contain control characters (got '\\x00' at position 3)" in shown, shown
        at.text_input(key="launch.name").set_value("fine")
        next(b for b in at.button if b.label == "Launch").click().run()
        shown = " | ".join(e.value for e in at.error)
        assert "max_cells=10000" in shown and "grid" in shown, shown
        assert stored_sweeps(tmp_path) == []
    finally:
        ui.shutdown()
