"""`gamma-lab rename|tag|note|archive|restore|purge` and `status --archived` as GAMMA_LAB_USER against
a shared registry (SQLite with GAMMA_LAB_AUTH=local, and PostgreSQL, shared by nature): another user's
sweep is refused in one line naming its launcher (exit 2, nothing changed); the launcher may."""

from __future__ import annotations

import io
import sys

import pytest

from app.cli import main
from storage import audit
from storage.registry import Registry
from storage.settings import Settings
from tests.storage.conftest import _make_configs
from tests.storage.test_purge import _points, _two_sweeps
from tests.storage.test_purge import lab as lab  # the fixture: SQLite or PostgreSQL registry, auth local


class _Terminal(io.StringIO):
    """Standard input that says it is a terminal (a person typing)."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def gl(lab: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """Run `gamma-lab ARGS` in this process as `user` (stdin: text; a terminal when tty); returns
    (exit code, stdout, stderr)."""
    monkeypatch.setenv("GAMMA_LAB_DATA", str(lab.data_dir))
    monkeypatch.setenv("GAMMA_LAB_REGISTRY_URL", lab.registry_url)
    monkeypatch.setenv("GAMMA_LAB_AUTH", "local")
    monkeypatch.delenv("GAMMA_LAB_BROKER_URL", raising=False)

    def run(user: str, *args: str, stdin: str = "", tty: bool = False) -> tuple[int, str, str]:
        monkeypatch.setenv("GAMMA_LAB_USER", user)
        monkeypatch.setattr(sys, "stdin", _Terminal(stdin) if tty else io.StringIO(stdin))
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _listed(out: str) -> set[str]:
    return {line.split()[0] for line in out.splitlines()[1:] if line.strip()}


def test_organize_as_the_launcher_and_refused_as_another_user(lab: Settings, gl) -> None:  # noqa: ANN001
    a, b, ids = _two_sweeps(lab, _make_configs)  # alice's a (runs 0-5), bob's b (runs 4-7)
    for args in (("archive", b[:6]), ("rename", b, "x"), ("tag", b, "+x"), ("note", b, "hi"), ("cancel", b[:5]),
                 ("purge", b, "--yes"), ("cancel", ids[6])):
        code, out, err = gl("alice", *args)
        assert code == 2 and out == "", args
        assert err.startswith("error: only the launcher") and "(bob)" in err and err.count("\n") == 1, err
    with Registry(lab.registry_url) as reg:
        s = reg.get_sweep(b)
        assert (s["name"], s["tags"], s["archived"], s["counts"]["done"]) == ("b", [], None, 4)
        assert audit.trail(reg, target=b) == []

    assert gl("bob", "rename", b[:6], "scan of eta")[0] == 0
    assert gl("bob", "tag", b, "+lr", "+v1", "wd")[1] == "lr v1 wd\n"
    assert gl("bob", "tag", b, "-v1")[1] == "lr wd\n"
    code, _, err = gl("bob", "tag", b, "-nope")
    assert code == 2 and "no tag 'nope'" in err
    assert gl("bob", "tag", b, "+bad tag")[0] == 2
    assert gl("bob", "note", b, "-", stdin="first line\nsecond line\n")[0] == 0
    code, out, _ = gl("bob", "status", b)
    assert "tags: lr wd" in out and "  second line" in out and "scan of eta" in out and "finished" in out

    assert gl("bob", "archive", b)[0] == 0
    assert _listed(gl("bob", "status")[1]) == {a}
    assert _listed(gl("bob", "status", "--archived")[1]) == {b}
    assert gl("bob", "restore", b)[0] == 0
    assert _listed(gl("bob", "status")[1]) == {a, b}
    with Registry(lab.registry_url) as reg:
        assert [r["action"] for r in reversed(audit.trail(reg, target=b))] == [
            "rename", "tags", "tags", "notes", "archive", "restore"]
        assert {r["actor"] for r in audit.trail(reg, target=b)} == {"bob"}


def test_purge_names_what_goes_and_asks_for_the_id(lab: Settings, gl) -> None:  # noqa: ANN001
    a, b, ids = _two_sweeps(lab, _make_configs)
    code, out, err = gl("alice", "purge", a)  # stdin is no terminal: refused, after saying what would go
    assert code == 2 and "add --yes" in err
    assert "deletes 4 run(s) and their 80 metric point(s)" in out
    assert f"keeps 2 run(s) shared with sweep(s) {b}" in out and f"{ids[4]} (also in {b})" in out
    code, out, err = gl("alice", "purge", a[:5], stdin="nope\n", tty=True)
    assert code == 2 and "nothing was deleted" in err
    assert _points(lab, ids) == [20] * 8
    code, out, err = gl("alice", "purge", a[:5], stdin=f"{a}\n", tty=True)
    assert code == 0, err
    assert f"purged sweep {a}: 4 run(s) deleted, 2 shared run(s) kept, points deleted: 80" in out
    assert _points(lab, ids) == [0] * 4 + [20] * 4
    assert _listed(gl("alice", "status")[1]) == {b}
    assert gl("bob", "purge", b, "--yes")[0] == 0
    assert _points(lab, ids) == [0] * 8
