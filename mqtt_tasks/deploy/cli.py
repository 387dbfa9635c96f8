"""``mqtt-tasks deploy``: sign and roll out a task module; keygen, status, pause, resume, rollback.

``mqtt-tasks deploy PATH --version V --to SELECTOR --key KEYFILE`` starts a rollout; the other
words are subcommands. A thin layer over ``deploy.client`` (docs/deploy.md).
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from ..cli import _Group, broker_options, print_table
from ..config import Settings

_HELP = {"help_option_names": ["-h", "--help"]}
_SUBCOMMANDS = ("keygen", "status", "pause", "resume", "rollback", "push")


class _DeployGroup(_Group):
    """``deploy PATH ...`` is ``deploy push PATH ...``: a first word that is no subcommand is a path."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in _SUBCOMMANDS and not args[0].startswith("-"):
            args = ["push", *args]
        return super().parse_args(ctx, args)


def _timeout(fn: Any) -> Any:
    return click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
                        help="Seconds to wait for the coordinator.")(fn)


def _deploy() -> None:
    """Roll out a signed task module to workers that opted in (mqtt-worker --accept-deploys).

    \b
    mqtt-tasks deploy keygen deployer          # deployer.key (keep it secret), deployer.pub (give to workers)
    mqtt-tasks deploy tasks.py --version 2 --to label=camera --key deployer.key --wave-size 2 --rate 4
    mqtt-tasks deploy status [ID] | pause ID | resume ID | rollback ID --key deployer.key

    Workers that --to matches and the coordinator hears after the start (back online, new, restarted
    fresh) get the bundle too; --snapshot keeps only the workers live at the start (deploy push --help).
    """


deploy: click.Group = click.group("deploy", cls=_DeployGroup, context_settings=_HELP)(_deploy)


@deploy.command("keygen", context_settings=_HELP)
@click.argument("name", default="deployer")
def keygen(name: str) -> None:
    """Make an Ed25519 key pair: NAME.key (private, mode 0600) and NAME.pub (for the workers)."""
    from .keys import keygen as make_pair

    key_id = make_pair(f"{name}.key", f"{name}.pub")
    click.echo(f"key {key_id}: private {name}.key (keep it off the fleet), public {name}.pub (--deploy-key)")


@deploy.command("push", context_settings=_HELP)
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--version", "version", required=True, help="The version's name (A-Z a-z 0-9 _ . : -).")
@click.option("--to", "to", default="all", show_default=True, help="all | worker=ID[,ID...] | label=L[,L...]")
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False), help="The private key file.")
@click.option("--module", help="The module name on the workers [default: PATH's file name].")
@click.option("--wave-size", type=click.IntRange(min=1), default=1, show_default=True, help="Workers per wave.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), help="At most this many workers per minute.")
@click.option("--abort-after-failures", "abort_pct", type=click.FloatRange(0, 100), metavar="PCT",
              help="Abort once this % of the finished workers failed (after --min-executed).")
@click.option("--min-executed", type=click.IntRange(min=1), default=1, show_default=True,
              help="Finished workers needed before the abort threshold is judged.")
@click.option("--worker-timeout", type=click.FloatRange(min=0, min_open=True), default=300.0, show_default=True,
              help="Seconds a worker has to apply it; then it counts as failed (see --retries).")
@click.option("--retries", type=click.IntRange(min=0), default=3, show_default=True,
              help="Send it again this many times to a worker that timed out without any answer (it was "
                   "offline), each when the coordinator next hears it.")
@click.option("--snapshot", is_flag=True,
              help="Only the workers live now: a worker that matches --to later (back online, new, restarted "
                   "fresh) is left out [default: it gets the bundle when the coordinator hears it].")
@broker_options
@_timeout
def push(path: str, version: str, to: str, key_path: str, module: str | None, wave_size: int, rate: float | None,
         abort_pct: float | None, min_executed: int, worker_timeout: float, retries: int, snapshot: bool,
         broker: str | None, prefix: str | None, timeout: float) -> None:
    """Sign the module at PATH and start its rollout (also: mqtt-tasks deploy PATH ...)."""
    from . import client

    bundle = client.sign_module(path, version=version, to=to, private_key_path=key_path, module=module)
    rollout = client.start_rollout(Settings.from_env(broker, prefix=prefix), bundle, wave_size=wave_size, rate=rate,
                                   abort_pct=abort_pct, min_executed=min_executed, timeout_s=worker_timeout,
                                   retries=retries, snapshot=snapshot, timeout=timeout)
    click.echo(_started(rollout))


def _started(rollout: dict[str, Any]) -> str:
    steps = rollout["workers"]
    now = [w for w, s in steps.items() if s["state"] != "waiting"]
    later = [w for w, s in steps.items() if s["state"] == "waiting"]
    line = f"rollout {rollout['id']}: {rollout['module']} {rollout['version']} to {len(now)} worker(s)" + \
        (f" ({', '.join(now)})" if now else f" (none live matches {rollout['to']} yet)") + \
        (f", {len(later)} named but not live ({', '.join(later)})" if later else "")
    if not rollout.get("snapshot"):
        line += "; workers that match later get it when heard"
    return f"{line}, {rollout['state']}"


@deploy.command("status", context_settings=_HELP)
@click.argument("rollout_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
@broker_options
@_timeout
def status(rollout_id: str | None, as_json: bool, broker: str | None, prefix: str | None, timeout: float) -> None:
    """One rollout with each worker's state, or every rollout."""
    settings = Settings.from_env(broker, prefix=prefix)
    from . import client

    found = client.rollout_status(settings, rollout_id, timeout=timeout)
    if as_json:
        click.echo(json.dumps(found, indent=2))
    elif rollout_id is None:
        rows: list[tuple[str, ...]] = [(r["id"], r["module"], r["version"], r["state"], _counts(r),
                                        _when(r["created"])) for r in found]
        print_table(f"rollouts on {settings.display_url}", ("id", "module", "version", "state", "workers", "started"),
                    rows)
    else:
        click.echo(f"rollout {found['id']}: {found['module']} {found['version']} to {found['to']}: {found['state']}"
                   + (f" ({found['reason']})" if found.get("reason") else "") + f"; {_counts(found)}")
        steps: list[tuple[str, ...]] = [(w, s["state"], str(s.get("attempts", 0)), s.get("reason", ""))
                                        for w, s in found["workers"].items()]
        print_table(f"rollout {found['id']}", ("worker", "state", "sends", "reason"), steps)


def _simple(name: str, call: str, doc: str) -> None:
    @deploy.command(name, context_settings=_HELP, help=doc)
    @click.argument("rollout_id")
    @broker_options
    @_timeout
    def command(rollout_id: str, broker: str | None, prefix: str | None, timeout: float) -> None:
        from . import client

        rollout = getattr(client, call)(Settings.from_env(broker, prefix=prefix), rollout_id, timeout=timeout)
        click.echo(f"rollout {rollout['id']}: {rollout['state']}; {_counts(rollout)}")


_simple("pause", "pause_rollout", "Start no further wave of ROLLOUT_ID (sent bundles still apply); joiners wait.")
_simple("resume", "resume_rollout", "Go on with a paused ROLLOUT_ID.")


@deploy.command("rollback", context_settings=_HELP)
@click.argument("rollout_id")
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False), help="The private key file.")
@click.option("--wave-size", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), help="At most this many workers per minute.")
@broker_options
@_timeout
def rollback(rollout_id: str, key_path: str, wave_size: int, rate: float | None, broker: str | None,
             prefix: str | None, timeout: float) -> None:
    """Stop ROLLOUT_ID and re-deploy the previous version (signed anew) to ROLLOUT_ID's selector: the
    workers not already on it, and those heard later."""
    from . import client

    rollout = client.rollback(Settings.from_env(broker, prefix=prefix), rollout_id, key_path, wave_size=wave_size,
                              rate=rate, timeout=timeout)
    steps = rollout["workers"]
    already = [w for w, s in steps.items() if s["state"] == "applied"]
    back = [w for w in steps if w not in already]
    click.echo(f"rollout {rollout['id']}: {rollout['module']} {rollout['version']} back to {rollout['to']} "
               f"(rolls back {rollout_id}): sent to {len(back)} worker(s)" + (f" ({', '.join(back)})" if back else "")
               + (f", {len(already)} on it already ({', '.join(already)})" if already else "")
               + f"; workers that match later get it when heard, {rollout['state']}")


def _counts(rollout: dict[str, Any]) -> str:
    c = rollout["counts"]
    return f"{c['applied']}/{c['workers']} applied, {c['failed']} failed, {c['in_flight']} in flight, " \
           f"{c['pending']} pending" + (f", {c['waiting']} waiting" if c.get("waiting") else "")


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
