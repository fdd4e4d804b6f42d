"""`gamma-lab rename|tag|note|archive|restore|purge`: a sweep's name, tags and notes, hiding it, deleting it.

    gamma-lab rename SWEEP NAME
    gamma-lab tag SWEEP [+TAG | -TAG | TAG ...]    +TAG (or a bare TAG) adds, -TAG removes; none: show them
    gamma-lab note SWEEP TEXT                      TEXT "-" reads the notes from standard input; "" clears them
    gamma-lab archive SWEEP | restore SWEEP        hide a sweep from `status` and the dashboard's lists / show it
    gamma-lab purge SWEEP [--yes]                  delete the sweep, its unshared runs and their points

The CLI acts as settings.user (GAMMA_LAB_USER, default the login name). Where the lab is shared
(settings.auth_mode() is not "none") only the sweep's launcher or an admin may do these (tasks.access):
anyone else gets one line naming the launcher, exit 2, and nothing changes. Every change is audited.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from app.cli import UserError, _err, _settings, resolve_id
from app.cli_wait import catch_up

SHOWN_RUNS = 10  # run ids a purge's confirmation lists before "and N more"


def _target(args: argparse.Namespace, command: str) -> tuple[Any, str]:
    """The settings (the data folder writable) and the full id of the sweep SWEEP names."""
    settings = _settings(writes=f"`gamma-lab {command}`")
    return settings, resolve_id(settings, args.sweep, command, kinds=("sweep",))


def cmd_rename(args: argparse.Namespace) -> int:
    from tasks import api

    settings, sweep_id = _target(args, "rename")
    api.rename(settings, sweep_id, args.name)
    _err(f"sweep {sweep_id} is now named {api.check_name(args.name)!r}")
    return 0


def tag_changes(current: list[str], changes: list[str]) -> list[str]:
    """The tags after `changes`, in order: +TAG (or a bare TAG) adds, -TAG removes."""
    tags = list(current)
    for change in changes:
        adding, tag = not change.startswith("-"), change[1:] if change[:1] in "+-" else change
        if adding and tag not in tags:
            tags.append(tag)
        elif not adding and tag in tags:
            tags.remove(tag)
        elif not adding:
            raise UserError(f"tags: sweep has no tag {tag!r} to remove (it has: {', '.join(current) or 'none'})")
    return tags


def cmd_tag(args: argparse.Namespace) -> int:
    from storage.registry import Registry
    from tasks import api

    settings, sweep_id = _target(args, "tag")
    with Registry(settings.registry_url) as reg:
        current = list((reg.get_sweep(sweep_id) or {}).get("tags", []))
    if args.changes:
        tags = tag_changes(current, args.changes)
        api.set_tags(settings, sweep_id, tags)
        current = api.check_tags(tags)
    print(" ".join(current))
    return 0


def cmd_note(args: argparse.Namespace) -> int:
    from tasks import api

    settings, sweep_id = _target(args, "note")
    text = sys.stdin.read() if args.text == "-" else args.text
    api.set_notes(settings, sweep_id, text)
    _err(f"sweep {sweep_id}: notes {'cleared' if not text else f'set ({len(text)} characters)'}")
    return 0


def cmd_archive(args: argparse.Namespace) -> int:
    from tasks import api

    settings, sweep_id = _target(args, "archive")
    api.archive(settings, sweep_id)
    _err(f"sweep {sweep_id} archived: hidden from `status` and the dashboard (`gamma-lab restore {sweep_id}`)")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from tasks import api

    settings, sweep_id = _target(args, "restore")
    api.restore(settings, sweep_id)
    _err(f"sweep {sweep_id} restored: shown in lists again")
    return 0


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(at))


def organization_lines(sweep: dict[str, Any]) -> list[str]:
    """`status SWEEP`'s lines about the sweep itself: when it ran, tags, archived, notes."""
    lines = []
    if sweep.get("started") is not None:
        end = f"finished {_when(sweep['finished'])}" if sweep.get("finished") else "not finished"
        lines.append(f"started {_when(sweep['started'])}, {end}, {sweep['duration_s']:.0f} s")
    if sweep.get("tags"):
        lines.append("tags: " + " ".join(sweep["tags"]))
    if sweep.get("archived"):
        lines.append(f"archived {_when(sweep['archived'])} (`gamma-lab restore {sweep['id']}` shows it again)")
    if sweep.get("notes"):
        lines += ["notes:", *(f"  {line}" for line in sweep["notes"].splitlines())]
    return lines


def describe_plan(plan: Any, sweep: dict[str, Any]) -> list[str]:
    """What a purge deletes and keeps, in lines a person confirms."""
    def ids(run_ids: list[str]) -> str:
        more = len(run_ids) - SHOWN_RUNS
        return " ".join(run_ids[:SHOWN_RUNS]) + (f" and {more} more" if more > 0 else "")

    points = "an unknown number of" if plan.points is None else f"{plan.points:,}"
    lines = [f"purge sweep {plan.sweep_id} ({plan.name!r}, launched by {sweep['owner']}, {sweep['n_runs']} run(s)):"]
    lines.append(f"  deletes {len(plan.runs_deleted)} run(s) and their {points} metric point(s)")
    if plan.runs_deleted:
        lines.append(f"    {ids(plan.runs_deleted)}")
    if plan.runs_kept:
        others = sorted({s for sweeps in plan.runs_kept.values() for s in sweeps})
        lines.append(f"  keeps {len(plan.runs_kept)} run(s) shared with sweep(s) {', '.join(others)}:")
        shown = list(plan.runs_kept.items())[:SHOWN_RUNS]
        lines += [f"    {rid} (also in {', '.join(sweeps)})" for rid, sweeps in shown]
    return lines


def _confirmation(sweep_id: str, yes: bool) -> str:
    """The text to pass as purge's confirm: the id itself with --yes, else what the person types."""
    if yes:
        return sweep_id
    if not sys.stdin.isatty():
        raise UserError("purge: nothing was deleted; stdin is not a terminal to confirm on: add --yes to purge")
    try:
        return input(f"type the sweep id {sweep_id} to delete all this for good: ")
    except EOFError:
        return ""


def cmd_purge(args: argparse.Namespace) -> int:
    from storage.purge import PurgeError
    from storage.registry import Registry
    from tasks import api
    from tasks.access import local_actor, require

    settings, sweep_id = _target(args, "purge")
    catch_up(settings)  # statuses as they are now, and the runs' last points recorded before they go
    actor = local_actor(settings)
    with Registry(settings.registry_url) as reg:
        sweep = reg.get_sweep(sweep_id)
    if sweep is None:  # purged meanwhile
        raise UserError(f"purge: no sweep {sweep_id!r}")
    require(actor, sweep, "purge")  # before counting or asking anything
    active = sum(sweep["counts"].get(s, 0) for s in api.ACTIVE_STATUSES)
    if active:
        raise UserError(f"purge: {active} run(s) of sweep {sweep_id} are queued or running; cancel it first")
    try:
        plan = api.purge_plan(settings, sweep_id)
    except PurgeError as exc:
        raise UserError(f"purge: nothing was deleted: {exc}") from None
    print("\n".join(describe_plan(plan, sweep)))
    confirm = _confirmation(sweep_id, args.yes)
    if confirm.strip() != sweep_id:
        raise UserError(f"purge: you typed {confirm.strip()!r}, not {sweep_id}; nothing was deleted")
    try:
        done = api.purge(settings, sweep_id, confirm=confirm, actor=actor)
    except PurgeError as exc:
        raise UserError(f"purge: sweep {sweep_id} and its runs left the registry, but {exc}") from None
    points = "not confirmed (no recorder answered; it waits on the bus)" if done.points is None else f"{done.points:,}"
    print(f"purged sweep {sweep_id}: {len(done.runs_deleted)} run(s) deleted, {len(done.runs_kept)} shared run(s) "
          f"kept, points deleted: {points}")
    return 0


def add_parsers(sub: Any) -> None:
    """Register rename, tag, note, archive, restore and purge on the main parser's subcommands."""
    sweep_help = "a sweep id, or a unique prefix of one (4+ characters)"
    s = sub.add_parser("rename", help="give a sweep a new name (1-200 characters)")
    s.add_argument("sweep", help=sweep_help)
    s.add_argument("name")
    s.set_defaults(fn=cmd_rename)

    s = sub.add_parser("tag", help="add (+TAG) or remove (-TAG) a sweep's tags; none given: show them")
    s.add_argument("sweep", help=sweep_help)
    # REMAINDER: -TAG is a change, not an option
    s.add_argument("changes", nargs=argparse.REMAINDER,
                   help="+TAG or TAG adds, -TAG removes (tags: 1-40 letters, digits, - _ . :; at most 20)")
    s.set_defaults(fn=cmd_tag)

    s = sub.add_parser("note", help="set a sweep's notes (TEXT '-' reads standard input)")
    s.add_argument("sweep", help=sweep_help)
    s.add_argument("text", help="the notes (up to 10,000 characters; '' clears them; '-' reads stdin)")
    s.set_defaults(fn=cmd_note)

    s = sub.add_parser("archive", help="hide a sweep from status and the dashboard's lists (restorable)")
    s.add_argument("sweep", help=sweep_help)
    s.set_defaults(fn=cmd_archive)

    s = sub.add_parser("restore", help="show an archived sweep again")
    s.add_argument("sweep", help=sweep_help)
    s.set_defaults(fn=cmd_restore)

    s = sub.add_parser("purge", help="delete a sweep, its unshared runs and their points for good")
    s.add_argument("sweep", help=sweep_help)
    s.add_argument("--yes", action="store_true", help="do not ask to type the sweep id (scripts)")
    s.set_defaults(fn=cmd_purge)
