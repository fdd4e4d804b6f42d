"""Query side: heatmap statuses, M4 trajectories, overlays, seed bands, safe grammar, reads during ingest."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from storage import queries
from storage.bus import open_publisher
from storage.expression import ExpressionError, evaluate, parse
from storage.recorder import Recorder
from storage.registry import Registry
from storage.settings import Settings


def _fill(settings: Settings, make_configs) -> tuple[str, list]:
    """2 γ × 2 η × 2 seeds: cell (0.1, 0.1) done, (0.1, 1) one diverged + one done,
    (1, 0.1) both diverged, (1, 1) one running + one queued."""
    configs = make_configs()
    reg = Registry(settings.registry_url)
    sid = reg.create_sweep("q", "t", {})
    reg.add_runs(sid, configs)
    pub = open_publisher(settings)
    steps = np.arange(1000)
    for i, c in enumerate(configs[:6]):
        pub.started(c.run_id, 0, "w")
        value = (1.0 + c.seed) * np.exp(-steps / 200.0)  # seed 0 ends ~0.0067, seed 1 twice that
        diverged = i in (3, 4, 5)
        if diverged:
            value[600:] = np.inf
        for k in range(0, 1000, 250):
            pub.points(c.run_id, 0, steps[k:k + 250], ["train_loss"] * 250, value[k:k + 250])
        pub.finished(c.run_id, 0, "diverged" if diverged else "done", steps_done=1000,
                     diverged_step=600 if diverged else None)
    pub.started(configs[6].run_id, 0, "w")
    pub.points(configs[6].run_id, 0, steps[:10], ["train_loss"] * 10, np.ones(10))
    return sid, configs


def test_heatmap_reports_every_cell(settings: Settings, make_configs) -> None:
    sid, _ = _fill(settings, make_configs)
    with Recorder(settings) as rec:
        rec.drain()
        hm = queries.heatmap(settings, sid).set_index(["gamma", "eta"])
        final = np.exp(-999 / 200.0)
        assert hm.loc[(0.1, 0.1), "value"] == pytest.approx(1.5 * final)  # mean of seeds 1x and 2x
        assert hm.loc[(0.1, 0.1), "cell_status"] == "ok" and hm.loc[(0.1, 0.1), "n_done"] == 2
        assert hm.loc[(0.1, 1.0), "value"] == pytest.approx(final)  # only the finished seed counts
        assert hm.loc[(0.1, 1.0), "n_diverged"] == 1
        assert hm.loc[(1.0, 0.1), "cell_status"] == "diverged" and np.isnan(hm.loc[(1.0, 0.1), "value"])
        assert hm.loc[(1.0, 1.0), "cell_status"] == "running" and hm.loc[(1.0, 1.0), "n_running"] == 2
        assert np.isnan(hm.loc[(1.0, 1.0), "value"])  # nothing final yet ...
        # ... but the running seed's provisional value (the queued one has none) and how far it got
        assert hm.loc[(1.0, 1.0), "live_value"] == 1.0 and hm.loc[(1.0, 1.0), "live_step"] == 9
        assert hm.drop(index=(1.0, 1.0))[["live_value", "live_step"]].isna().all().all()  # finished cells
        assert (hm["n_seeds"] == 2).all()
        mins = queries.heatmap(settings, sid, agg="min").set_index(["gamma", "eta"])
        assert mins.loc[(0.1, 0.1), "value"] == pytest.approx(final)
        # at a step before divergence, the diverged cell has values
        at = queries.heatmap(settings, sid, stat="at_step", step=100).set_index(["gamma", "eta"])
        assert at.loc[(1.0, 0.1), "cell_status"] == "ok"
        assert at.loc[(1.0, 0.1), "value"] == pytest.approx(1.5 * np.exp(-0.5))
        assert at["live_value"].isna().all()  # at_step counts running runs directly: nothing provisional
        to = queries.heatmap(settings, sid, stat="steps_to", threshold=0.5, agg="min").set_index(["gamma", "eta"])
        assert to.loc[(0.1, 0.1), "value"] == pytest.approx(np.ceil(200 * np.log(2)))
        with pytest.raises(queries.QueryError, match="stat"):
            queries.heatmap(settings, sid, stat="median")
        with pytest.raises(queries.QueryError, match="step"):
            queries.heatmap(settings, sid, stat="at_step")


def test_trajectories_m4_and_markers(settings: Settings, make_configs) -> None:
    sid, configs = _fill(settings, make_configs)
    with Recorder(settings) as rec:
        rec.drain()
        ids = [configs[0].run_id, configs[3].run_id]
        full = queries.trajectories(settings, ids, max_points=2000)
        assert (full[full.run_id == ids[0]]["kind"] == "point").all() and (full.run_id == ids[0]).sum() == 1000
        small = queries.trajectories(settings, ids, max_points=40, log_x=True)
        for rid in ids:
            rows = small[(small.run_id == rid) & small.kind.isin(["point", "min", "max"])]
            assert 0 < len(rows) <= 40
            ref = full[(full.run_id == rid) & np.isfinite(full.value)]
            # min/max preserving: the global extremes survive downsampling
            assert rows["value"].max() == ref["value"].max() and rows["value"].min() == ref["value"].min()
            assert rows["step"].is_monotonic_increasing
        div = small[small.run_id == ids[1]]
        assert list(div[div.kind == "diverged"]["step"]) == [600]
        assert list(div[div.kind == "nan"]["step"]) == [600] and np.isinf(div[div.kind == "nan"]["value"]).all()
        assert list(dict.fromkeys(small.run_id)) == ids  # order asked


def test_overlay_and_seed_bands(settings: Settings, make_configs) -> None:
    sid, configs = _fill(settings, make_configs)
    with Recorder(settings) as rec:
        rec.drain()
        c = configs[2]  # γ=0.1, η=1.0
        ov = queries.overlay(settings, [c.run_id], x="eta_t_over_gamma_2_over_L", max_points=5000)
        ov = ov[ov.kind == "point"]
        steps = np.arange(len(ov))
        assert np.allclose(ov["x"], c.eta * steps / c.gamma ** (2 / 3))
        custom = queries.overlay(settings, [c.run_id], x="log(1 + t) * N / 2", max_points=5000)
        assert np.allclose(custom[custom.kind == "point"]["x"], np.log1p(steps) * 8 / 2)
        with pytest.raises(ExpressionError):
            queries.overlay(settings, [c.run_id], x="t.__class__")
        bands = queries.seed_bands(settings, sid, 0.1, 0.1, max_points=5000)
        assert len(bands) == 1000 and (bands["n"] == 2).all()
        expected = 1.5 * np.exp(-np.arange(1000) / 200.0)
        assert np.allclose(bands["mean"], expected)
        assert np.allclose(bands["max"] - bands["min"], np.exp(-np.arange(1000) / 200.0))
        thin = queries.seed_bands(settings, sid, 0.1, 0.1, max_points=100)
        assert 0 < len(thin) <= 100


def test_queries_while_ingesting_never_fail(settings: Settings, make_configs) -> None:
    configs = make_configs()
    reg = Registry(settings.registry_url)
    sid = reg.create_sweep("live", "t", {})
    reg.add_runs(sid, configs)
    rec = Recorder(settings, max_events=20).start()
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                queries.heatmap(settings, sid)
                queries.trajectories(settings, [c.run_id for c in configs], max_points=50)
                queries.seed_bands(settings, sid, 0.1, 0.1)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
                return

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    pub = open_publisher(settings)
    for k in range(30):
        for c in configs:
            pub.points(c.run_id, 0, np.arange(k * 20, k * 20 + 20), ["train_loss"] * 20, np.ones(20))
    rec.drain(timeout_s=60)
    stop.set()
    for t in threads:
        t.join()
    assert rec.store.count_points() == 30 * 20 * len(configs)
    rec.stop()
    assert not errors, errors[0]


def test_malformed_events_set_aside(settings: Settings, make_configs) -> None:
    configs = make_configs()[:1]
    reg = Registry(settings.registry_url)
    reg.add_runs(reg.create_sweep("m", "t", {}), configs)
    rid = configs[0].run_id
    pub = open_publisher(settings)
    pub.points(rid, 0, [0, 1], ["train_loss"] * 2, [1.0, 0.5])
    (settings.spool_dir / "00000000000000000001-1-000000000-aaaaaa.evt").write_bytes(b'{"type": "points", "ru')
    pub.publish({"type": "points", "run_id": rid, "attempt": 0, "seq": 7, "step": ["a"], "metric": ["x"],
                 "value": [1.0]})
    pub.publish({"type": "points", "run_id": "ffffffffffffffff", "attempt": 0, "seq": 0, "step": [0],
                 "metric": ["x"], "value": [1.0]})
    pub.points(rid, 0, [2], ["train_loss"], [0.25])
    with Recorder(settings) as rec:
        rec.drain()
        assert rec.store.count_points() == 3
        assert rec.stats["rejected"] == 3
    reasons = sorted(p.read_text() for p in (settings.spool_dir / "rejected").glob("*.reason"))
    assert len(reasons) == 3
    assert any("truncated" in r for r in reasons) and any("step" in r for r in reasons)
    assert any("unknown run" in r for r in reasons)


def test_malformed_redis_events_go_to_dead_letters(redis_settings: Settings, make_configs) -> None:
    import redis

    from storage.bus import DEAD_LETTER_STREAM, STREAM

    configs = make_configs()[:1]
    reg = Registry(redis_settings.registry_url)
    reg.add_runs(reg.create_sweep("m", "t", {}), configs)
    client = redis.Redis.from_url(redis_settings.broker_url)
    client.xadd(STREAM, {"data": b"{not json"})
    pub = open_publisher(redis_settings)
    pub.points(configs[0].run_id, 0, [0], ["train_loss"], [1.0])
    with Recorder(redis_settings) as rec:
        rec.drain()
        assert rec.store.count_points() == 1
    dead = client.xrange(DEAD_LETTER_STREAM)
    assert len(dead) == 1 and b"not valid JSON" in dead[0][1][b"reason"]


def test_second_recorder_is_refused(settings: Settings) -> None:
    from storage.recorder import RecorderBusy

    with Recorder(settings):
        with pytest.raises(RecorderBusy, match=r"a recorder is already running \(pid \d+\)"):
            Recorder(settings)
    Recorder(settings).close()  # free again once the first stopped


# --------------------------------------------------------------------------- the safe grammar

ALLOWED = ["t", "eta", "gamma", "L", "N", "2", "0.5", "1e-3"]


@st.composite
def good_expressions(draw: st.DrawFn, depth: int = 0) -> str:
    if depth > 3 or draw(st.booleans()):
        return draw(st.sampled_from(ALLOWED))
    kind = draw(st.sampled_from(["bin", "fn", "neg", "par"]))
    if kind == "bin":
        op = draw(st.sampled_from(["+", "-", "*", "/", "^", "**"]))
        return f"{draw(good_expressions(depth + 1))} {op} {draw(good_expressions(depth + 1))}"
    if kind == "fn":
        return f"{draw(st.sampled_from(['log', 'exp', 'sqrt']))}({draw(good_expressions(depth + 1))})"
    if kind == "neg":
        return f"-{draw(good_expressions(depth + 1))}"
    return f"({draw(good_expressions(depth + 1))})"


@hyp_settings(max_examples=150, deadline=None)
@given(good_expressions())
def test_grammar_accepts_and_evaluates(expr: str) -> None:
    env = {"t": np.arange(4.0), "eta": 0.1, "gamma": 2.0, "L": 3.0, "N": 8.0}
    out = evaluate(parse(expr), env)
    assert out.shape in ((), (4,))


@hyp_settings(max_examples=200, deadline=None)
@given(good_expressions(), st.sampled_from([
    ".__class__", "[0]", "(1)(2)", " if t else 1", ", 1", " lambda", "'x'", "; import os", " t", "@t",
]))
def test_grammar_rejects_anything_else(expr: str, suffix: str) -> None:
    with pytest.raises(ExpressionError):
        parse(expr + suffix)


@hyp_settings(max_examples=200, deadline=None)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8))
def test_grammar_rejects_other_names_and_functions(name: str) -> None:
    if name not in ("t", "eta", "gamma"):
        with pytest.raises(ExpressionError, match="unknown name|unknown function"):
            parse(name)
    if name not in ("log", "exp", "sqrt"):
        with pytest.raises(ExpressionError, match="unknown function|unknown name"):
            parse(f"{name}(t)")


def test_grammar_known_values_and_errors() -> None:
    assert float(evaluate(parse("-2^2"), {})) == -4.0
    assert float(evaluate(parse("2^3^2"), {})) == 512.0
    assert float(evaluate(parse("sqrt(16) / 2 * 3"), {})) == 6.0
    for bad in ("__import__('os')", "eval(t)", "t.real", "", "(t", "t +", "x" * 300):
        with pytest.raises(ExpressionError):
            parse(bad)


def test_failed_step_is_retried_from_pending(redis_settings: Settings, make_configs) -> None:
    """A registry hiccup after ingest: nothing acked, the loop rereads its own pending entries."""
    import time

    configs = make_configs()[:1]
    reg = Registry(redis_settings.registry_url)
    reg.add_runs(reg.create_sweep("r", "t", {}), configs)
    rid = configs[0].run_id
    pub = open_publisher(redis_settings)
    pub.started(rid, 0, "w")
    pub.points(rid, 0, [0, 1], ["train_loss"] * 2, [1.0, 0.5])
    pub.finished(rid, 0, "done", steps_done=2)
    rec = Recorder(redis_settings)
    # the recorder applies a batch's transitions with one registry.apply_events call
    real_apply, calls = rec.registry.apply_events, []

    def flaky_apply(*args, **kwargs):
        if kwargs.get("finished"):
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("database is locked")
        return real_apply(*args, **kwargs)

    rec.registry.apply_events = flaky_apply  # type: ignore[method-assign]
    rec.start()
    deadline = time.monotonic() + 30
    while reg.get_run(rid)["status"] != "done" and time.monotonic() < deadline:
        time.sleep(0.1)
    rec.stop()
    assert reg.get_run(rid)["status"] == "done" and len(calls) == 2
    with Recorder(redis_settings) as again:
        assert again.store.count_points() == 2 and again.consumer.pending_count() == 0
