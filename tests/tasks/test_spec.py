"""tasks.spec: parsing, every kind of bad spec named by field, fuzzing, validate_spec."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.settings import load_settings
from tasks.spec import SpecError, SweepSpec, validate_spec

GOOD = """
name = "mlp-teacher"
[model]
arch = "mlp"
width = 16
depth = 3
[data]
dataset = "teacher"
input_dim = 8
[train]
steps = 10
batch_size = 8
[grid]
gamma = [0.01, 0.1, 1.0]
eta = { from = 1e-4, to = 10.0, per_decade = 2 }
seeds = [0, 1]
"""


def test_parse_good_spec_and_log_range() -> None:
    spec = SweepSpec.from_toml(GOOD)
    assert spec.grid.gammas == (0.01, 0.1, 1.0)
    assert len(spec.grid.etas) == 11  # 5 decades × 2 per decade + both ends
    assert spec.grid.etas[0] == pytest.approx(1e-4) and spec.grid.etas[-1] == pytest.approx(10.0)
    ratios = [b / a for a, b in zip(spec.grid.etas, spec.grid.etas[1:], strict=False)]
    assert all(r == pytest.approx(math.sqrt(10)) for r in ratios)
    cells = spec.cells()
    assert len(cells) == 3 * 11 * 2 == spec.grid.n_cells
    assert len({c.run_id for c in cells}) == len(cells)


def test_toml_and_dict_round_trip() -> None:
    spec = SweepSpec.from_toml(GOOD)
    assert SweepSpec.from_toml(spec.to_toml()) == spec
    assert SweepSpec.from_dict(spec.to_dict()) == spec
    weird = SweepSpec.from_dict({**spec.to_dict(), "name": 'quote " back\\slash ünï \u2028 ✓'})
    assert SweepSpec.from_toml(weird.to_toml()).name == weird.name


@pytest.mark.parametrize("char", ["\x00", "\x07", "\t", "\n", "\x1b", "\x7f", "\x9b"])
@pytest.mark.parametrize(
    ("path", "field"),
    [
        (("name",), "name"),
        (("model", "arch"), "model.arch"),
        (("model", "activation"), "model.activation"),
        (("data", "dataset"), "data.dataset"),
        (("train", "loss"), "train.loss"),
        (("train", "dtype"), "train.dtype"),
    ],
)
def test_control_characters_are_refused_at_their_field(char: str, path: tuple[str, ...], field: str) -> None:
    d = SweepSpec.from_toml(GOOD).to_dict()
    target = d
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = "abc" + char + "def"
    with pytest.raises(SpecError) as info:
        SweepSpec.from_dict(d)
    assert info.value.lines() == [f"{field}: must not contain control characters (got {char!r} at position 3)"]


def test_control_characters_in_a_data_path_metric_or_unknown_key() -> None:
    base = SweepSpec.from_toml(GOOD).to_dict()
    with pytest.raises(SpecError) as info:
        SweepSpec.from_dict({**base, "data": {"dataset": "npz", "path": "sets/a\x00.npz"}})
    assert info.value.lines() == ["data.path: must not contain control characters (got '\\x00' at position 6)"]
    with pytest.raises(SpecError) as info:
        SweepSpec.from_dict({**base, "train": {**base["train"], "metrics": ["test", "te\x00st"]}})
    assert any(e.field == "train.metrics" and "control characters" in e.message for e in info.value.errors)
    with pytest.raises(SpecError) as info:
        SweepSpec.from_dict({**base, "na\x1bme": 1})
    assert info.value.lines()[0].startswith("na\\x1bme: unknown field")  # escaped: never sent to a terminal raw


def test_grid_sizes_are_counted_before_any_cell_is_built(tmp_path: Path) -> None:
    s = load_settings(data_dir=tmp_path)
    spec = SweepSpec.from_dict({"grid": {"gamma": [float(i + 1) for i in range(10_000)],
                                         "eta": {"from": 1e-4, "to": 1.0, "per_decade": 249.75}, "seeds": 1}})
    assert spec.grid.n_cells == 10_000 * 1_000
    with pytest.raises(SpecError) as info:
        validate_spec(spec, s)
    assert info.value.errors[0].field == "grid" and "max_cells=10000" in info.value.errors[0].message
    for eta in ({"from": 1e-300, "to": 1e300, "per_decade": 1e308}, {"from": 1e-3, "to": 1.0, "per_decade": 1e9}):
        with pytest.raises(SpecError) as info:
            SweepSpec.from_dict({"grid": {"eta": eta}})
        assert info.value.lines()[0].startswith("grid.eta: log range gives")


def test_seed_count_and_single_number() -> None:
    spec = SweepSpec.from_dict({"grid": {"gamma": 2, "eta": 0.5, "seeds": 3}})
    assert spec.grid.gammas == (2.0,) and spec.grid.etas == (0.5,) and spec.grid.seeds == (0, 1, 2)


BAD = [
    ({"grid": {"gamma": [0.1, -1.0]}}, "grid.gamma", "> 0"),
    ({"grid": {"gamma": [float("nan")]}}, "grid.gamma", "finite"),
    ({"grid": {"eta": [float("inf")]}}, "grid.eta", "finite"),
    ({"grid": {"eta": []}}, "grid.eta", "must not be empty"),
    ({"grid": {"eta": {"from": 1.0, "to": 0.1}}}, "grid.eta", "from <= to"),
    ({"grid": {"eta": {"from": 0.0, "to": 1.0}}}, "grid.eta.from", "> 0"),
    ({"grid": {"eta": {"from": 1e-3, "to": 1.0, "per_decade": 1e9}}}, "grid.eta", "at most"),
    ({"grid": {"eta": {"from": 1e-3, "to": 1.0, "step": 2}}}, "grid.eta.step", "unknown field"),
    ({"grid": {"seeds": [-1]}}, "grid.seeds", "integers"),
    ({"grid": {"adaptive": "yes"}}, "grid.adaptive", "true or false"),
    ({"grid": {"below_max_decades": 0}}, "grid.below_max_decades", "(0, 20]"),
    ({"grid": {"colour": 1}}, "grid.colour", "unknown field"),
    ({"model": {"arch": "transformer"}}, "model.arch", "mlp, cnn, resnet, vit"),
    ({"model": {"activation": "gelu"}}, "model.activation", "relu, tanh, linear"),
    ({"model": {"width": 0}}, "model.width", "between 1"),
    ({"model": {"widht": 64}}, "model.widht", "unknown field"),
    ({"data": {"dataset": "imagenet"}}, "data.dataset", "teacher"),
    ({"data": {"dataset": "npz"}}, "data.path", "data folder"),
    ({"data": {"dataset": "npz", "path": "../../etc/passwd"}}, "data.path", "inside the data folder"),
    ({"data": {"dataset": "npz", "path": "/etc/passwd"}}, "data.path", "inside the data folder"),
    ({"train": {"loss": "hinge"}}, "train.loss", "mse, xent"),
    ({"train": {"dtype": "float16"}}, "train.dtype", "auto, float32, float64"),
    ({"train": {"steps": 0}}, "train.steps", "between 1"),
    ({"model": {"arch": "cnn", "depth": 4}, "data": {"dataset": "teacher"}}, "data.dataset", "needs images"),
    ({"nmae": "x"}, "nmae", "unknown field"),
    ({"name": ""}, "name", "non-empty"),
    ({"model": "mlp"}, "model", "table"),
]


@pytest.mark.parametrize(("raw", "field", "words"), BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_every_kind_of_bad_spec_is_named(raw: dict, field: str, words: str) -> None:
    with pytest.raises(SpecError) as info:
        SweepSpec.from_dict(raw)
    matching = [e for e in info.value.errors if e.field == field]
    assert matching, f"no error for {field}: {info.value.lines()}"
    assert any(words in e.message for e in matching), info.value.lines()


def test_all_problems_reported_at_once() -> None:
    raw = {"model": {"width": -1, "activation": "gelu"}, "train": {"loss": "hinge"},
           "grid": {"gamma": [0], "eta": "x"}, "extra": 1}
    with pytest.raises(SpecError) as info:
        SweepSpec.from_dict(raw)
    fields = {e.field for e in info.value.errors}
    assert {"model.width", "model.activation", "train.loss", "grid.gamma", "grid.eta", "extra"} <= fields


def test_bad_toml_text() -> None:
    with pytest.raises(SpecError) as info:
        SweepSpec.from_toml("name = [unclosed")
    assert "not valid TOML" in str(info.value)


@pytest.mark.parametrize("text", ["", "\n# only a comment\n   \n"])
def test_empty_spec_is_refused_not_one_default_cell(text: str) -> None:
    # A user saw an empty spec file queue a one-cell sweep of every default setting.
    with pytest.raises(SpecError) as info:
        SweepSpec.from_toml(text)
    assert info.value.errors[0].field == "spec" and "empty" in str(info.value)


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.npz"])
def test_escaping_npz_path_gives_one_clear_message(path: str) -> None:
    # A user saw three contradictory lines ("give a path" and "only file-backed datasets take a
    # path") for `dataset = "npz"` with an absolute path: each context field was tried alone.
    with pytest.raises(SpecError) as info:
        SweepSpec.from_dict({"data": {"dataset": "npz", "path": path}})
    assert info.value.lines() == [f"data.path: must be relative and stay inside the data folder (got {path!r})"]


# -- fuzzing: nothing but SpecError ever escapes

_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                  st.text(max_size=12))
_keys = st.sampled_from(["name", "model", "data", "train", "grid", "gamma", "eta", "seeds", "from", "to",
                         "per_decade", "arch", "width", "depth", "dataset", "path", "steps", "loss", "dtype",
                         "adaptive", "below_max_decades", "metrics", "activation", "x"])
_tree = st.recursive(_leaf, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                   st.dictionaries(_keys, kids, max_size=5)), max_leaves=20)


def _accepted(spec: SweepSpec) -> None:
    """What an accepted spec promises: at least one cell, and its own TOML (the Runs page shows it, a
    relaunch reads it) reads back as the same spec, hence the same cells."""
    assert spec.grid.n_cells >= 1
    assert SweepSpec.from_toml(spec.to_toml()).to_dict() == spec.to_dict()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_keys, _tree, max_size=6))
def test_fuzz_dicts_only_raise_spec_error(raw: dict) -> None:
    try:
        spec = SweepSpec.from_dict(raw)
    except SpecError as exc:
        assert exc.errors and all(e.field for e in exc.errors)
        return
    _accepted(spec)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_text_only_raises_spec_error(text: str) -> None:
    try:
        spec = SweepSpec.from_toml(text)
    except SpecError as exc:
        assert exc.errors and all(e.field for e in exc.errors)
        return
    _accepted(spec)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(GOOD.splitlines()), st.text(max_size=30))
def test_fuzz_mutated_good_spec(line: str, junk: str) -> None:
    try:
        spec = SweepSpec.from_toml(GOOD.replace(line, line + junk, 1))
    except SpecError as exc:
        assert exc.errors and all(e.field for e in exc.errors)
        return
    _accepted(spec)


# -- checks that need the data folder


def test_validate_spec_max_cells_and_files(tmp_path: Path) -> None:
    s = load_settings(data_dir=tmp_path, max_cells=10)
    spec = SweepSpec.from_toml(GOOD)
    with pytest.raises(SpecError) as info:
        validate_spec(spec, s)
    assert any(e.field == "grid" and "max_cells=10" in e.message for e in info.value.errors)

    missing = SweepSpec.from_dict({"data": {"dataset": "npz", "path": "nothing-here.npz"}})
    with pytest.raises(SpecError) as info:
        validate_spec(missing, load_settings(data_dir=tmp_path))
    assert any(e.field.startswith("data") for e in info.value.errors)

    outside = tmp_path.parent / "outside.npz"
    outside.write_bytes(b"")
    (tmp_path / "link.npz").symlink_to(outside)
    linked = SweepSpec.from_dict({"data": {"dataset": "npz", "path": "link.npz"}})
    with pytest.raises(SpecError) as info:
        validate_spec(linked, load_settings(data_dir=tmp_path))
    assert any(e.field == "data.path" and "outside" in e.message for e in info.value.errors)

    assert isinstance(validate_spec(SweepSpec.from_dict({"data": {"dataset": "teacher"}}),
                                    load_settings(data_dir=tmp_path)), list)
