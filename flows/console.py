"""What `fedsilo run` shows: a progress bar over every silo-phase of the job, one table row per
round (per-silo accuracy, global accuracy, gate decision) and the gate's failed checks."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console, RenderableType
from rich.console import Group as RichGroup
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from infra.progress import Reporter


def fmt(value: float | None, width: int = 0) -> str:
    text = "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"
    return text.rjust(width) if width else text


def _with_interval(value: float | None, interval: dict | None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    number = f"{value:+.3f}" if signed else f"{value:.3f}"
    if not interval or any(math.isnan(interval.get(k, math.nan)) for k in ("low", "high")):
        return number
    low, high = interval["low"], interval["high"]
    return f"{number} [{low:+.3f}, {high:+.3f}]" if signed else f"{number} [{low:.3f}, {high:.3f}]"


def group_table(groups: dict[str, Any]) -> Table:
    """The group checks' numbers: each silo's reported groups (rows, positive rate, TPR, FPR) with
    its own differences, the groups it withheld, and the federation's from the summed counts."""
    table = Table(title=f"groups · {groups['column']} · ŷ = 1 at p >= {groups['threshold']:g}", title_justify="left",
                  caption=f"P(ŷ=1): positive rate; groups under {groups['min_group_size']} rows on a silo are withheld "
                  "(only their number is reported); federation: the silos' counts summed", caption_justify="left")
    for name, justify in (("silo", "left"), ("group", "left"), ("n", "right"), ("P(ŷ=1)", "right"),
                          ("TPR", "right"), ("FPR", "right"), ("parity", "right"), ("odds", "right")):
        table.add_column(name, justify=justify, no_wrap=name in ("silo", "group"))

    def rows(name: str, part: dict[str, Any], withheld: int = 0) -> None:
        counts = part.get("counts", {})
        first = True
        for group, c in counts.items():
            rates = part["rates"].get(group, {})
            table.add_row(name if first else "", group, str(c["n"]), fmt(rates.get("selection")), fmt(rates.get("tpr")),
                          fmt(rates.get("fpr")), fmt(part["parity"]) if first else "", fmt(part["odds"]) if first else "")
            first = False
        if withheld:
            table.add_row(name if first else "", f"{withheld} withheld", "", "", "", "",
                          fmt(part["parity"]) if first else "", fmt(part["odds"]) if first else "")
        elif first:
            table.add_row(name, "none", "", "", "", "", "—", "—")

    for silo, part in sorted(groups.get("silos", {}).items()):
        rows(silo, part, part.get("suppressed", 0))
    table.add_section()
    rows("federation", groups["federation"])
    return table


def gate_table(record: dict[str, Any]) -> tuple[RenderableType, list[str]]:
    """Round `record`'s gate as a reviewer reads it: each silo's value with its bootstrap interval,
    the champion's value on the same rows and the candidate's paired gain with its interval (a
    table; with group checks, followed by `group_table`), then each check with its numbers (lines)."""
    gate = record["gate"]
    metric = gate["metric"]
    intervals = gate.get("intervals", {})
    confidence = next(iter(intervals.values()))["confidence"] if intervals else None
    verdict = "[green]passed[/]" if gate["passed"] else "[yellow]failed[/]"
    table = Table(title=f"gate · round {record['round']} · v{record['version']} · {verdict}", title_justify="left",
                  caption=f"\\[low, high]: {confidence:.0%} bootstrap intervals, computed on each silo" if confidence
                  else None, caption_justify="left")
    table.add_column("silo")
    table.add_column(f"candidate {metric}", justify="right")
    table.add_column(f"champion v{record['champion_version_before']}" if record.get("champion_version_before")
                     else "champion", justify="right")
    table.add_column("gain", justify="right")
    personal = record.get("personalised_metrics") or {}
    if personal:  # not part of the gate: what each silo's own fine-tuned candidate reaches on its holdout
        table.add_column(f"personalised {metric}", justify="right")
    champion = record.get("champion_metrics", {})
    for silo, metrics in sorted(record.get("metrics", {}).items()):
        i = intervals.get(silo, {})
        gain = i.get("gain")
        cells = [silo, _with_interval(metrics.get(metric), i.get("candidate")),
                 fmt(champion[silo].get(metric)) if silo in champion else "—",
                 _with_interval(gain["estimate"], gain, signed=True) if gain else "—"]
        if personal:
            cells.append(fmt(personal[silo].get(metric)) if silo in personal else "—")
        table.add_row(*cells)
    lines = [f"{'[green]pass[/]' if c['passed'] else '[red]FAIL[/]'}  {c['name']}: {c['detail']}" for c in gate["checks"]]
    if gate.get("groups"):
        return RichGroup(table, group_table(gate["groups"])), lines
    return table, lines


class ConsoleReporter(Reporter):
    def __init__(self, console: Console, metric: str = "accuracy", show_progress: bool = True):
        self.console = console
        self.metric = metric
        self.show_progress = show_progress
        self.progress: Progress | None = None
        self.task_id = None
        self.silos: list[str] = []
        self.widths: list[int] = []
        self.first_round = self.last_round = 0
        self.records: list[dict[str, Any]] = []

    # -- lifecycle ----------------------------------------------------------------------------------
    def __enter__(self) -> ConsoleReporter:
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def _print(self, text: str = "", **kwargs) -> None:
        (self.progress.console if self.progress else self.console).print(text, soft_wrap=True, **kwargs)

    # -- events -------------------------------------------------------------------------------------
    def job_started(
        self, federation: str, first_round: int, last_round: int, silos: list[str], phases_per_round: int = 2,
        trainers_per_round: int | None = None,
    ) -> None:
        """`trainers_per_round`: with silo sampling, how many silos take the phases before evaluation
        (every silo evaluates); None: all of them."""
        self.silos = list(silos)
        self.first_round, self.last_round = first_round, last_round
        self.widths = [max(len(s), 6) for s in silos]
        header = "round  " + "  ".join(s.rjust(w) for s, w in zip(silos, self.widths)) + "  global  gate"
        self.console.print(
            f"[bold]{federation}[/]: rounds {first_round}–{last_round} across {len(silos)} silos "
            f"(holdout {self.metric} per silo)"
        )
        self.console.print(f"[bold]{header}[/]", highlight=False)
        if self.show_progress and self.console.is_terminal:
            self.progress = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                console=self.console, transient=True,
            )
            self.progress.start()
            trainers = len(silos) if trainers_per_round is None else min(trainers_per_round, len(silos))
            total = (last_round - first_round + 1) * ((phases_per_round - 1) * trainers + len(silos))
            self.task_id = self.progress.add_task("starting", total=total)

    def phase_started(self, round_number: int, phase: str, silos: list[str]) -> None:
        if self.progress is not None:
            self.progress.update(self.task_id, description=f"round {round_number}/{self.last_round} · {phase}")

    def silo_done(self, round_number: int, phase: str, silo: str, ok: bool, detail: str) -> None:
        if self.progress is not None:
            self.progress.update(
                self.task_id, advance=1, description=f"round {round_number}/{self.last_round} · {phase} · {silo}"
            )
        if not ok and phase != "evaluate":
            verb = "sits out" if phase == "train" else f"dropped at {phase} in"
            self._print(f"  [yellow]{silo} {verb} round {round_number}:[/] {detail}", highlight=False)

    def round_done(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        metrics = record.get("metrics", {})
        cells = []
        for silo, width in zip(self.silos, self.widths):
            value = metrics.get(silo, {}).get(self.metric)
            cells.append(fmt(value, width) if silo in metrics else "out".rjust(width))
        gate = record["gate"]
        decision = f"[green]champion v{record['version']}[/]" if gate["passed"] else f"[yellow]candidate v{record['version']}[/]"
        pooled = record["pooled"].get(self.metric, record["pooled"].get("accuracy"))
        self._print(f"{record['round']:>5}  " + "  ".join(cells) + f"  {fmt(pooled, 6)}  {decision}", highlight=False)
        privacy = record.get("privacy") or {}
        federation = record.get("federation_privacy")
        if privacy or federation:  # ε spent so far: each silo's (record level) under its accuracy, the federation's
            spent = [                # (silo level) under the pooled figure
                (fmt(privacy[s]["epsilon"], w) if s in privacy else "–".rjust(w)) for s, w in zip(self.silos, self.widths)
            ]
            pooled_eps = f"  {fmt(federation['epsilon'], 6)}" if federation else ""
            self._print("[dim]    ε  " + "  ".join(spent) + f"{pooled_eps}[/]", highlight=False)
        if not gate["passed"]:
            for check in gate["checks"]:
                if not check["passed"]:
                    self._print(f"         [dim]gate: {check['detail']}[/]", highlight=False)
        if gate.get("undefined"):
            self._print(
                f"         [dim]{gate['metric']} undefined on the holdout of: {', '.join(gate['undefined'])}[/]",
                highlight=False,
            )

    def note(self, text: str) -> None:
        self._print(f"[dim]{text}[/]", highlight=False)
