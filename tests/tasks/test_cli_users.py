"""`gamma-lab user ...` and `gamma-lab audit` through the real console script (subprocesses), on an
SQLite registry in the data folder and on a PostgreSQL registry (its own schema on the local server)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from storage.accounts import Accounts, LoginRefused
from storage.registry import Registry


def _cli(tmp_path: Path, url: str, *args: str, stdin: str = "", user: str = "root") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAMMA_LAB_")}
    env.update(GAMMA_LAB_DATA=str(tmp_path / "data"), GAMMA_LAB_REGISTRY_URL=url, GAMMA_LAB_USER=user)
    exe = [sys.executable, "-m", "app.cli"] if os.environ.get("GAMMA_LAB_CLI_MODULE") else ["gamma-lab"]
    return subprocess.run([*exe, *args], env=env, input=stdin, capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # about 15 CLI processes per registry
def test_user_add_list_remove_passwd_and_the_audit(tmp_path: Path, registry_url: str) -> None:
    added = _cli(tmp_path, registry_url, "user", "add", "alice", "--admin", stdin="s3cret-pass\n", user="root")
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip().splitlines() == ["added user alice (admin): logs in with a password"]
    ext = _cli(tmp_path, registry_url, "user", "add", "bob@lab.org", "--external", user="alice")
    assert ext.returncode == 0 and "identity provider" in ext.stdout

    for args, stdin, text in [
        (("user", "add", "alice"), "another-pass\n", "error: name: user 'alice' exists"),
        (("user", "add", "carol"), "short\n", "error: password: must be 8 to 1024 characters (got 5)"),
        (("user", "add", "carol"), "", "error: password: must be 8"),  # nothing on stdin
        (("user", "add", "no spaces"), "", "error: name: must be 1-64 characters"),
        (("user", "remove", "nobody"), "", "error: name: no user 'nobody'"),
        (("audit", "--limit", "0"), "", "error: limit: must be an integer >= 1"),
    ]:
        res = _cli(tmp_path, registry_url, *args, stdin=stdin)
        assert (res.returncode, res.stderr.strip()[: len(text)]) == (2, text), res.stderr
        assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1

    listed = _cli(tmp_path, registry_url, "user", "list").stdout.splitlines()
    assert [line.split()[:3] for line in listed] == [
        ["name", "admin", "kind"],
        ["alice", "yes", "local"],
        ["bob@lab.org", "no", "external"],
    ]

    with Registry(registry_url) as reg:  # the hash the CLI stored lets alice log in, and only her password
        accounts = Accounts(reg)
        assert accounts.login("alice", "s3cret-pass").is_admin
        with pytest.raises(LoginRefused):
            accounts.login("bob@lab.org", "s3cret-pass")
    passwd = _cli(tmp_path, registry_url, "user", "passwd", "alice", stdin="new-pass-1\n", user="bob@lab.org")
    assert passwd.returncode == 0 and passwd.stdout.strip() == "changed the password of alice"
    with Registry(registry_url) as reg:
        assert Accounts(reg).login("alice", "new-pass-1").name == "alice"
    removed = _cli(tmp_path, registry_url, "user", "remove", "bob@lab.org", user="alice")
    assert removed.returncode == 0 and removed.stdout.startswith("removed user bob@lab.org")
    assert "bob@lab.org" not in _cli(tmp_path, registry_url, "user", "list").stdout

    trail = _cli(tmp_path, registry_url, "audit")
    assert trail.returncode == 0, trail.stderr
    rows = [line.split()[2:5] for line in trail.stdout.splitlines()[1:]]  # after the date and time
    assert rows == [
        ["alice", "user-remove", "bob@lab.org"],
        ["alice", "login", "alice"],
        ["bob@lab.org", "user-passwd", "alice"],
        ["bob@lab.org", "login-failed", "bob@lab.org"],
        ["alice", "login", "alice"],
        ["alice", "user-add", "bob@lab.org"],
        ["root", "user-add", "alice"],
    ]
    mine = _cli(tmp_path, registry_url, "audit", "--user", "alice", "--limit", "2").stdout.splitlines()[1:]
    assert [line.split()[3] for line in mine] == ["user-remove", "login"]
    about_bob = _cli(tmp_path, registry_url, "audit", "bob@lab.org").stdout.splitlines()[1:]
    assert [line.split()[3] for line in about_bob] == ["user-remove", "login-failed", "user-add"]
