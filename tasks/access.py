"""Who may do what to a sweep: the launcher or an admin cancels, archives, purges and edits it.

The rules hold wherever the registry is shared (settings.auth_mode() is not "none"): the dashboard's
logged-in user and the CLI's local user (settings.user, GAMMA_LAB_USER) meet the same checks, so a
command line cannot do what the dashboard refuses. On one person's laptop (auth mode "none") nobody
is checked: there is no one else to protect a sweep from.

Anyone may launch, rerun and add seeds: those add work and change nobody's stored result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from storage.settings import Settings

OWNER_ONLY = ("cancel", "archive", "restore", "purge", "rename", "notes", "tags")
_VERBS = {"notes": "edit the notes of", "tags": "edit the tags of"}  # the others read as they are


@dataclass(frozen=True)
class Actor:
    """Who acts. `enforced` False when the auth mode is "none" (one person's laptop: no rules)."""

    name: str
    is_admin: bool = False
    enforced: bool = True


class NotAllowed(PermissionError):
    """The actor may not do this; str() is the one-line reason naming who may."""


def local_actor(settings: Settings) -> Actor:
    """The CLI's actor: settings.user, an admin when the registry's users table says so."""
    name = str(settings.user)
    if settings.auth_mode() == "none":
        return Actor(name, is_admin=False, enforced=False)
    from storage.accounts import Accounts
    from storage.registry import Registry

    with Registry(settings.registry_url) as reg:
        user = Accounts(reg).get_user(name)
    return Actor(name, is_admin=bool(user is not None and user.is_admin), enforced=True)


def _free(actor: Actor, action: str) -> bool:
    """True when no ownership check applies: an action anyone may take, no rules, or an admin."""
    return action not in OWNER_ONLY or not actor.enforced or actor.is_admin


def why_not(actor: Actor, sweep: Mapping[str, Any], action: str) -> str | None:
    """None when `actor` may take `action` on `sweep`, else the one-line reason (for a disabled
    button's tooltip or the CLI's error)."""
    if _free(actor, action) or sweep.get("owner") == actor.name:
        return None
    verb = _VERBS.get(action, action)
    owner, sweep_id = sweep.get("owner"), sweep.get("id")
    return f"only the launcher ({owner}) or an admin may {verb} sweep {sweep_id}; you are {actor.name}"


def require(actor: Actor, sweep: Mapping[str, Any], action: str) -> None:
    """Raise NotAllowed with why_not's reason unless `actor` may take `action` on `sweep`."""
    reason = why_not(actor, sweep, action)
    if reason is not None:
        raise NotAllowed(reason)


def require_for_run(actor: Actor, run_id: str, sweeps: Sequence[Mapping[str, Any]], action: str) -> None:
    """A run is the actor's to act on when the actor launched some sweep holding it (`sweeps`: those
    sweeps), or is an admin. Raises NotAllowed naming the launchers otherwise."""
    if _free(actor, action) or any(s.get("owner") == actor.name for s in sweeps):
        return
    owners = ", ".join(sorted({str(s.get("owner")) for s in sweeps})) or "nobody"
    verb = _VERBS.get(action, action)
    raise NotAllowed(
        f"only the launcher of a sweep holding run {run_id} ({owners}) or an admin may {verb} it; you are {actor.name}"
    )
