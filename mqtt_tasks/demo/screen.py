"""The demo on a terminal, drawn with rich (the ``demo`` extra, imported only here).

``RichScreen`` implements ``Screen``: a rule and a few lines of explanation when a phase begins,
one line per event as it happens (printed above the progress bar), a table when a phase ends,
and at the end the fleet: the workers with the tasks each ran, and the coordinator on a line of
its own as the record keeper it is.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .fast import FastResult
from .recovery import RecoveryResult
from .rig import Progress as ProgressCallback
from .rig import Screen
from .run import CoordinatorRecord, DemoResult


class RichScreen(Screen):
    def __init__(self, console: Console) -> None:
        self.console = console

    def phase(self, title: str, lines: Sequence[str]) -> None:
        self.console.print()
        self.console.rule(f"[bold]{title}", align="left")
        for line in lines:
            self.console.print(line, highlight=False)

    def say(self, text: str) -> None:
        self.console.print(f"[cyan]>[/] {text}", highlight=False)

    @contextmanager
    def progress(self, label: str, total: int) -> Iterator[ProgressCallback]:
        with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=self.console) as progress:
            bar = progress.add_task(label, total=total)
            yield lambda done: progress.update(bar, completed=done)

    def show(self, result: Any) -> None:
        if isinstance(result, FastResult):
            self.console.print(fast_table(result))
        elif isinstance(result, RecoveryResult):
            self.console.print(recovery_table(result))
        elif isinstance(result, DemoResult):
            self.console.print()
            self.console.print(fleet_table(result))
            self.console.print(verdict(result), highlight=False)


def _table(title: str) -> Table:
    table = Table(title=title, show_header=False, title_justify="left", title_style="bold")
    table.add_column(style="bold")
    table.add_column()
    return table


def fast_table(r: FastResult) -> Table:
    table = _table("fast tasks")
    on_purpose = " (on purpose)" if r.failed == r.on_purpose else f" ({r.on_purpose} on purpose)"
    table.add_row("burst", f"{r.submitted:,} tasks: {r.succeeded:,} succeeded, {r.failed} failed"
                           + (on_purpose if r.on_purpose else ""))
    if r.missing:
        table.add_row("no final event", f"[red]{r.missing}[/]")
    table.add_row("throughput", f"[bold]{r.throughput:,.0f} tasks/s[/] (the burst took {r.elapsed_s:.2f} s)")
    table.add_row("latency, burst", f"p50 {_ms(r.burst_p50_ms)}, p99 {_ms(r.burst_p99_ms)} (queued behind it)")
    table.add_row("latency, one by one", f"p50 {_ms(r.single_p50_ms)}, p99 {_ms(r.single_p99_ms)} "
                                         f"({r.singles} round trips)")
    return table


def _ms(value: float) -> str:
    return f"{value:,.0f} ms" if value >= 100 else f"{value:.1f} ms"


def recovery_table(r: RecoveryResult) -> Table:
    table = _table("slow tasks" + (f", {r.killed} killed" if r.killed else ""))
    table.add_row("submitted", f"{r.submitted}")
    table.add_row("succeeded", f"{r.succeeded}" + (f", {r.failed} failed" if r.failed else ""))
    if r.killed:
        table.add_row("killed", f"{r.killed} (pid {r.killed_pid}) running {len(r.held)}")
    table.add_row("dispatched again", f"{r.redispatched}" + (" (attempt 2)" if r.redispatched else ""))
    table.add_row("lost", f"[red]{r.missing}[/]" if r.missing else "0")
    table.add_row("duplicates", f"{r.duplicates}" + ("" if r.duplicates else " (none ran to the end twice)"))
    if r.killed:
        table.add_row("detected", _after(r.will_s) + " (Last Will)" * (r.will_s is not None))
        table.add_row("re-dispatched", f"{_after(r.first_redispatch_s)} to {_after(r.redispatch_s)} "
                                       f"(alerted by {r.detection or '?'})")
        table.add_row("recovered", _after(r.recovered_s) + " (all done elsewhere)" * (r.recovered_s is not None))
    table.add_row("phase took", f"{r.elapsed_s:.1f} s")
    return table


def _after(seconds: float | None) -> str:
    """Seconds after the kill."""
    return "[red]not seen[/]" if seconds is None else f"+{seconds:.2f} s"


def fleet_table(result: DemoResult) -> Table:
    table = Table(title="the fleet: tasks each process ran", title_justify="left", title_style="bold")
    for name in ("process", "role", "phase 1", "phase 2", "at the end"):
        table.add_column(name, justify="right" if name.startswith("phase") else "left")
    killed = result.recovery.killed
    for n, worker in enumerate(result.workers, 1):
        end = f"[red]SIGKILLed holding {len(result.recovery.held)}[/]" if worker == killed else "stopped cleanly"
        table.add_row(worker, "runs tasks", f"{result.fast.per_worker.get(worker, 0):,}",
                      f"{result.recovery.per_worker.get(worker, 0)}", end, end_section=n == len(result.workers))
    record = result.coordinator
    if record is None:
        table.add_row("(no coordinator)", "", "", "", "nothing recorded the tasks")
    else:
        table.add_row("coordinator", "keeps the record", "-", "-", f"recorded {record.recorded:,}/{record.submitted:,}")
    return table


def _record(record: CoordinatorRecord, on_purpose: int) -> str:
    order = sorted(record.states.items(), key=lambda item: item[0] != "succeeded")
    states = [f"{n:,} {s}" + (" (the divisions by zero)" if s == "dead" and n == on_purpose else "")
              for s, n in order]
    return f"The coordinator's record: {', '.join(states)}; {record.redispatched} dispatched again"


def verdict(result: DemoResult) -> str:
    lines = []
    record = result.coordinator
    if record is not None:
        line = _record(record, result.fast.on_purpose)
        killed_at = result.recovery.killed_wall
        if record.reasons:
            line += f", because \"{record.reasons[0]}\""
        if record.noticed_at is not None and killed_at is not None:
            line += f" (noted {record.noticed_at - killed_at:.2f} s after the kill)"
        lines.append(line + ".")
    problems = result.problems()
    if problems:
        lines += [f"[red]{p}[/]" for p in problems]
    else:
        total = result.fast.submitted + result.fast.singles + result.recovery.submitted
        lines.append(f"[green]Every one of the {total:,} tasks submitted has its final status event; "
                     "none lost.[/]")
    return "\n".join(lines)
