"""Who may cancel, archive, purge and edit a sweep (tasks.access through tasks.api), and the audit rows
each action leaves, on an SQLite and a PostgreSQL registry: the launcher or an admin may, anyone else
is refused with the launcher named and nothing changes; with auth "none" anyone may."""

from __future__ import annotations

import dataclasses

import pytest

from engine.config import ConfigError
from storage import audit
from storage.accounts import Accounts
from storage.registry import Registry
from storage.settings import Settings
from tasks import api
from tasks.access import Actor, NotAllowed, local_actor, why_not
from tests.storage.conftest import _make_configs
from tests.storage.test_purge import _two_sweeps
from tests.storage.test_purge import lab as lab  # the fixture: SQLite or PostgreSQL registry, auth local

REFUSED = r"only the launcher (of a sweep holding run \w+ )?\(bob\) or an admin"
ALICE, BOB, ROOT = Actor("alice", False, True), Actor("bob", False, True), Actor("root", True, True)


def _queued_sweep(settings: Settings, owner: str) -> tuple[str, list[str]]:
    """A sweep of `owner` with two queued runs (seed 7, never trained)."""
    configs = _make_configs(gammas=(0.5,), etas=(0.1, 1.0), seeds=(7,))
    with Registry(settings.registry_url) as reg:
        sid = reg.create_sweep("queued", owner, {})
        reg.add_runs(sid, configs)
    return sid, [c.run_id for c in configs]


def _state(settings: Settings, sweep_id: str) -> tuple:
    """What the refused actions must leave as it was: the sweep's fields, its runs, its audit rows."""
    with Registry(settings.registry_url) as reg:
        s = reg.get_sweep(sweep_id)
        runs = [(r["run_id"], r["status"], r["cancel_requested"]) for r in reg.list_runs(sweep_id)]
        return (s["name"], s["tags"], s["notes"], s["archived"], runs, audit.trail(reg, target=sweep_id))


def _trail(settings: Settings, sweep_id: str) -> list[tuple[str, str]]:
    with Registry(settings.registry_url) as reg:
        return [(r["actor"], r["action"]) for r in reversed(audit.trail(reg, target=sweep_id))]


def test_only_the_launcher_or_an_admin_may(lab: Settings) -> None:
    c, runs = _queued_sweep(lab, "bob")
    before = _state(lab, c)
    refused = {
        "cancel": lambda who: api.cancel(lab, c, actor=who),
        "archive": lambda who: api.archive(lab, c, actor=who),
        "restore": lambda who: api.restore(lab, c, actor=who),
        "purge": lambda who: api.purge(lab, c, confirm=c, actor=who),
        "rename": lambda who: api.rename(lab, c, "mine now", actor=who),
        "tags": lambda who: api.set_tags(lab, c, ["x"], actor=who),
        "notes": lambda who: api.set_notes(lab, c, "hi", actor=who),
        "cancel a run": lambda who: api.cancel(lab, runs[0], actor=who),
    }
    for action, call in refused.items():
        with pytest.raises(NotAllowed, match=REFUSED) as err:
            call(ALICE)
        assert "\n" not in str(err.value) and str(err.value).endswith("you are alice"), action
    assert _state(lab, c) == before  # nothing changed, nothing audited

    api.rename(lab, c, "  renamed by bob ", actor=BOB)
    api.set_tags(lab, c, ["lr-scan", "v1.2", "a:b", "lr-scan"], actor=ROOT)  # an admin may; repeats dropped
    api.set_notes(lab, c, "line one\nline two", actor=BOB)
    api.archive(lab, c, actor=ROOT)
    with Registry(lab.registry_url) as reg:
        s = reg.get_sweep(c)
        assert (s["name"], s["notes"]) == ("renamed by bob", "line one\nline two")
        assert s["tags"] == ["lr-scan", "v1.2", "a:b"]
        assert s["archived"] is not None and c not in [x["id"] for x in reg.list_sweeps()]
        assert [x["id"] for x in reg.list_sweeps(archived=True)] == [c]
        assert c in [x["id"] for x in reg.list_sweeps(archived=None)]
    api.restore(lab, c, actor=BOB)
    assert api.cancel(lab, runs[0], actor=BOB) == 1  # a run of a sweep bob launched
    assert api.cancel(lab, c, actor=ROOT) == 1
    with Registry(lab.registry_url) as reg:
        assert reg.get_sweep(c)["archived"] is None and c in [x["id"] for x in reg.list_sweeps()]
        assert [r["status"] for r in reg.list_runs(c)] == ["cancelled", "cancelled"]
    assert _trail(lab, c) == [("bob", "rename"), ("root", "tags"), ("bob", "notes"), ("root", "archive"),
                              ("bob", "restore"), ("root", "cancel")]
    assert _trail(lab, runs[0]) == [("bob", "cancel")]


def test_a_shared_run_is_anyones_who_launched_a_sweep_holding_it(lab: Settings) -> None:
    a, b, ids = _two_sweeps(lab, _make_configs)  # alice's a: runs 0-5, bob's b: runs 4-7
    api.cancel(lab, ids[4], actor=ALICE)
    with pytest.raises(NotAllowed, match=f"run {ids[6]} \\(bob\\)"):
        api.cancel(lab, ids[6], actor=ALICE)
    assert _trail(lab, ids[4]) == [("alice", "cancel")] and _trail(lab, ids[6]) == []
    c, _ = _queued_sweep(lab, "bob")
    with Registry(lab.registry_url) as reg:
        ran, waits = reg.get_sweep(a), reg.get_sweep(c)
    assert ran["started"] <= ran["finished"] and ran["duration_s"] == ran["finished"] - ran["started"]
    assert (waits["started"], waits["finished"], waits["duration_s"]) == (None, None, None)


def test_the_cli_user_is_an_admin_when_the_users_table_says_so_and_auth_none_checks_nobody(lab: Settings) -> None:
    c, _ = _queued_sweep(lab, "bob")
    with Registry(lab.registry_url) as reg:
        Accounts(reg).add_user("root", "correct horse", admin=True)
        Accounts(reg).add_user("carol", "correct horse")
    assert local_actor(dataclasses.replace(lab, user="root")) == ROOT
    carol = local_actor(dataclasses.replace(lab, user="carol"))
    assert carol == Actor("carol", False, True) and "launcher (bob)" in (why_not(carol, {"id": c, "owner": "bob"},
                                                                                  "archive") or "")
    with pytest.raises(NotAllowed):
        api.archive(dataclasses.replace(lab, user="carol"), c)  # actor None: the CLI's local user
    laptop = dataclasses.replace(lab, auth="none", user="carol")
    assert local_actor(laptop) == Actor("carol", False, False)
    api.archive(laptop, c)
    api.rename(laptop, c, "carol's now")
    assert _trail(lab, c) == [("carol", "archive"), ("carol", "rename")]


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda s, c: api.rename(s, c, ""), "name"),
        (lambda s, c: api.rename(s, c, "two\nlines"), "name"),
        (lambda s, c: api.rename(s, c, "x" * 201), "name"),
        (lambda s, c: api.set_tags(s, c, [f"t{i}" for i in range(21)]), "tags"),
        (lambda s, c: api.set_tags(s, c, ["has space"]), "tags"),
        (lambda s, c: api.set_tags(s, c, ["x" * 41]), "tags"),
        (lambda s, c: api.set_tags(s, c, "one-string"), "tags"),
        (lambda s, c: api.set_notes(s, c, "x" * 10_001), "notes"),
        (lambda s, c: api.set_notes(s, c, "nul\x00"), "notes"),
    ],
)
def test_bad_values_are_one_line_naming_the_field(tmp_path, call, field) -> None:  # noqa: ANN001
    from storage.settings import load_settings

    settings = load_settings(data_dir=tmp_path / "data", auth="none")
    settings.ensure_dirs()
    c, _ = _queued_sweep(settings, "bob")
    with pytest.raises(ConfigError) as err:
        call(settings, c)
    assert err.value.field == field and "\n" not in str(err.value)
    assert _trail(settings, c) == []


def test_an_archived_sweeps_queued_runs_are_still_the_brokers(lab: Settings) -> None:
    """Archive hides a sweep from lists, not from what settles work: a broker restart that lost the
    queue still finds its queued runs (storage.broker_loss)."""
    from storage.broker_loss import queued_celery_runs

    configs = _make_configs(gammas=(0.5,), etas=(0.1,), seeds=(3,))
    with Registry(lab.registry_url) as reg:
        sid = reg.create_sweep("celery", "bob", {}, executor="celery")
        reg.add_runs(sid, configs)
    api.archive(lab, sid, actor=BOB)
    with Registry(lab.registry_url) as reg:
        assert reg.list_sweeps() == [] and queued_celery_runs(reg) == {configs[0].run_id: (0, sid)}


@pytest.mark.slow
def test_launch_rerun_and_added_seeds_are_anyones_and_audited(tmp_path) -> None:  # noqa: ANN001
    import time

    from storage.recorder import Recorder
    from storage.settings import load_settings
    from tasks.spec import SweepSpec

    settings = load_settings(data_dir=tmp_path / "data", workers=1, heartbeat_s=1, lost_after_s=30, auth="local")
    spec = SweepSpec.from_dict({
        "model": {"width": 8, "depth": 2}, "data": {"dataset": "teacher", "input_dim": 4, "n_classes": 2},
        "train": {"steps": 20, "batch_size": 8, "eval_points": 2, "metrics": ["test"]},
        "grid": {"gamma": [1.0], "eta": [0.01], "seeds": [0]},
    })

    def settle(sweep_id: str) -> None:
        while not api.is_settled(settings, sweep_id):
            time.sleep(0.3)

    with Recorder(settings).start():
        sid = api.submit(spec, settings, actor=ALICE)  # the launcher: the actor
        settle(sid)
        assert len(api.add_seeds(settings, sid, [1], actor=BOB)) == 1
        settle(sid)
        assert len(api.rerun(settings, sid, everything=True, actor=BOB)) == 2
        settle(sid)
    with Registry(settings.registry_url) as reg:
        assert reg.get_sweep(sid)["owner"] == "alice"
    assert _trail(settings, sid) == [("alice", "launch"), ("bob", "add-seeds"), ("bob", "rerun")]
