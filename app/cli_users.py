"""`gamma-lab user add|list|remove|passwd` and `gamma-lab audit`: local accounts and the audit trail.

    gamma-lab user add NAME [--admin] [--external]   the password from a prompt (twice), or one stdin line
    gamma-lab user list | remove NAME | passwd NAME
    gamma-lab audit [SWEEP] [--user NAME] [--limit N] newest first: time, user, action, target, detail

The accounts live in the registry (storage.accounts), so they serve every dashboard of the lab. The
CLI acts as settings.user (GAMMA_LAB_USER, default the login name): the audit names it.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from collections.abc import Callable
from typing import Any

from app.cli import UserError, _settings


def _time(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def read_password() -> str:
    """From a prompt asked twice when a person types it, else the first line of standard input (a
    script: `printf '%s\\n' "$PW" | gamma-lab user add bob`); never from the command line, where ps
    and the shell history would show it."""
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("password again: ") != first:
            raise UserError("password: the two entries differ; nothing was changed")
        return first
    return sys.stdin.readline().removesuffix("\n").removesuffix("\r")


def _accounts(settings: Any) -> Any:
    from storage.accounts import Accounts
    from storage.registry import Registry

    return Accounts(Registry(settings.registry_url))


def cmd_user_add(args: argparse.Namespace) -> int:
    from storage import audit
    from storage.accounts import check_name

    settings = _settings(writes="user add")
    check_name(args.name)  # before asking for a password
    password = None if args.external else read_password()
    accounts = _accounts(settings)
    with accounts.registry:
        user = accounts.add_user(args.name, password, admin=args.admin)
        detail = ("external" if user.external else "local") + (", admin" if user.is_admin else "")
        audit.record(accounts.registry, settings.user, "user-add", user.name, detail)
    how = "logs in through the identity provider only" if user.external else "logs in with a password"
    print(f"added user {user.name}{' (admin)' if user.is_admin else ''}: {how}")
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    accounts = _accounts(_settings())
    with accounts.registry:
        rows = accounts.list_users()
    print(f"{'name':<32}{'admin':<7}{'kind':<10}created")
    for u in rows:
        admin, kind = "yes" if u.is_admin else "no", "external" if u.external else "local"
        print(f"{u.name:<32}{admin:<7}{kind:<10}{_time(u.created)}")
    return 0


def _change_user(name: str, command: str, change: Callable[[Any], bool]) -> None:
    """Apply `change` (False: no such user, one line, exit 2) and record it as settings.user did it."""
    from storage import audit

    settings = _settings(writes=f"user {command}")
    accounts = _accounts(settings)
    with accounts.registry:
        if not change(accounts):
            raise UserError(f"name: no user {name!r} (gamma-lab user list shows them)")
        audit.record(accounts.registry, settings.user, f"user-{command}", name)


def cmd_user_remove(args: argparse.Namespace) -> int:
    _change_user(args.name, "remove", lambda accounts: accounts.remove_user(args.name))
    print(f"removed user {args.name}; their dashboard sessions ended")
    return 0


def cmd_user_passwd(args: argparse.Namespace) -> int:
    def change(accounts: Any) -> bool:
        if accounts.get_user(args.name) is None:  # before asking for a password
            return False
        accounts.set_password(args.name, read_password())
        return True

    _change_user(args.name, "passwd", change)
    print(f"changed the password of {args.name}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from storage import audit
    from storage.registry import AmbiguousId, Registry, UnknownId

    if args.limit < 1:
        raise UserError(f"limit: must be an integer >= 1 (got {args.limit})")
    settings = _settings()
    with Registry(settings.registry_url) as reg:
        target = args.target
        if target is not None:
            try:  # a sweep or run by a unique prefix; anything else (a user, a purged sweep) as written
                target = reg.resolve_prefix(target)[1]
            except UnknownId:
                pass
            except AmbiguousId as exc:
                raise UserError(f"audit: {exc}") from None
        rows = audit.trail(reg, target=target, actor=args.user, limit=args.limit)
    print(f"{'time':<21}{'user':<20}{'action':<14}{'target':<18}detail")
    for r in rows:
        print(f"{_time(r['at']):<21}{r['actor'][:19]:<20}{r['action']:<14}{r['target'][:17]:<18}{r['detail']}")
    return 0


def add_parsers(sub: Any) -> None:
    """Register `user` and `audit` on the main parser's subcommands."""
    user = sub.add_parser("user", help="local dashboard accounts (kept in the registry)")
    users = user.add_subparsers(dest="user_command", required=True)
    s = users.add_parser("add", help="a new account; the password from a prompt or one line of stdin")
    s.add_argument("name", help="1-64 characters: letters, digits and . _ @ - (an e-mail address works)")
    s.add_argument("--admin", action="store_true", help="may cancel, archive and purge anyone's sweeps")
    s.add_argument("--external", action="store_true", help="no password: logs in through the identity provider")
    s.set_defaults(fn=cmd_user_add)
    s = users.add_parser("list", help="name, admin, kind, created")
    s.set_defaults(fn=cmd_user_list)
    s = users.add_parser("remove", help="delete an account and end its sessions")
    s.add_argument("name")
    s.set_defaults(fn=cmd_user_remove)
    s = users.add_parser("passwd", help="set a new password (prompt or one line of stdin)")
    s.add_argument("name")
    s.set_defaults(fn=cmd_user_passwd)

    s = sub.add_parser("audit", help="who did what and when, newest first")
    s.add_argument("target", nargs="?", help="a sweep or run id (or a unique prefix), or a user name")
    s.add_argument("--user", default=None, help="only what this user did")
    s.add_argument("--limit", type=int, default=50)
    s.set_defaults(fn=cmd_audit)
