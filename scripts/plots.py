"""The benchmarks' charts: one PNG per `--plot FILE`, every one labelled with the machine's CPU.

A benchmark's number means little without the machine it came from, so each figure carries the
CPU's model name, its core count and the vector extensions that decide the dtype (footnote).
matplotlib is imported only when a figure is saved (Agg backend, no display), so the scripts
run without it unless `--plot` is given; it comes with the `bench` extra.

A figure is a row of panels, each one chart kind the benchmarks need:
- `Lines`: a y against an x per series, e.g. output tokens/s against concurrency, images/s
  against batch size or clients, TTFT p50/p99 against concurrency;
- `Bars`: grouped bars, one group per category and one bar per series, e.g. router against
  direct per round, latency p50/p99 per target, hit rate per routing variant;
- `Timeline`: points over time with marked moments, e.g. latency across a reload.

    from plots import Bars, Lines, save
    save("out.png", "Chat, router against direct",
         [Lines("streams", "output tok/s", {"router": [(1, 24.1), (4, 85.9)]})])
"""

from __future__ import annotations

import functools
import os
import platform
import re
import subprocess
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

Point = tuple[float, float]


@functools.cache
def cpu_model() -> str:
    """The CPU's model name as `lscpu` prints it (/proc/cpuinfo where lscpu is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True,
                             env={**os.environ, "LC_ALL": "C"}).stdout
        if found := re.search(r"^Model name:\s*(.+)$", out, re.MULTILINE):
            return found.group(1).strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        text = Path("/proc/cpuinfo").read_text()
        if found := re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE):
            return found.group(1).strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_label() -> str:
    """One line for a figure: model name, usable cores, the flags that pick the CPU dtype."""
    from serving.config.hardware import describe_cpu

    return f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores, {describe_cpu()}"


@dataclass
class Lines:
    """One line per series through its (x, y) points, in the order given."""

    x_label: str
    y_label: str
    series: Mapping[str, Sequence[Point]]
    title: str = ""
    log_y: bool = False
    #: series drawn dashed (e.g. a p99 beside its p50)
    dashed: Collection[str] = ()
    #: a series' colour (e.g. a target's p50 and p99 alike); the others take the cycle's
    colours: Mapping[str, str] = field(default_factory=dict)

    def draw(self, ax) -> None:
        for name, points in self.series.items():
            xs, ys = zip(*points, strict=True) if points else ((), ())
            ax.plot(xs, ys, marker="o", label=name, color=self.colours.get(name),
                    linestyle="--" if name in self.dashed else "-")
        xs = sorted({x for points in self.series.values() for x, _ in points})
        if xs and all(float(x).is_integer() for x in xs):
            ax.set_xticks(xs)
        ax.set_xlabel(self.x_label)
        if not self.log_y:
            ax.set_ylim(bottom=0)  # a rate's change read against zero, not magnified
        _finish(ax, self.title, self.y_label, self.log_y, legend=len(self.series) > 1)


@dataclass
class Bars:
    """Grouped bars: `groups[category][series] = value`; a series keeps its colour across
    groups. Bars named in `marked` as (category, series) are drawn red and hatched (a failed
    run, say), with `marked_label` in the legend."""

    y_label: str
    groups: Mapping[str, Mapping[str, float]]
    title: str = ""
    log_y: bool = False
    marked: Collection[tuple[str, str]] = ()
    marked_label: str = "failed"
    values: bool = True  # print each bar's value above it

    def draw(self, ax) -> None:
        from matplotlib.patches import Patch

        series = list(dict.fromkeys(s for bars in self.groups.values() for s in bars))
        width = 0.8 / max(len(series), 1)
        colours = {s: f"C{i}" for i, s in enumerate(series)}
        for k, (category, bars) in enumerate(self.groups.items()):
            for i, name in enumerate(series):
                if name not in bars:
                    continue
                bad = (category, name) in self.marked
                drawn = ax.bar(k + (i - (len(series) - 1) / 2) * width, bars[name],
                               width=width * 0.95, color="tab:red" if bad else colours[name],
                               hatch="//" if bad else None)
                if self.values:
                    ax.bar_label(drawn, fmt=_value_format(bars[name]), fontsize=7)
        ax.set_xticks(range(len(self.groups)), list(self.groups), fontsize=8)
        _finish(ax, self.title, self.y_label, self.log_y, legend=False)
        handles = [Patch(color=colours[s], label=s) for s in series] if len(series) > 1 else []
        if self.marked:
            handles.append(Patch(facecolor="tab:red", hatch="//", label=self.marked_label))
        if handles:
            ax.legend(handles=handles, fontsize=7)


@dataclass
class Timeline:
    """Points over time per series, with vertical lines at named moments (x positions)."""

    y_label: str
    points: Mapping[str, Sequence[Point]]
    marks: Mapping[str, float] = field(default_factory=dict)
    title: str = ""
    x_label: str = "seconds"

    def draw(self, ax) -> None:
        for i, (name, points) in enumerate(self.points.items()):
            if points:
                xs, ys = zip(*points, strict=True)
                ax.scatter(xs, ys, s=4 if i == 0 else 8, label=name,
                           color=_POINT_COLOURS[i % len(_POINT_COLOURS)])
        for (name, x), style in zip(self.marks.items(), _MARK_STYLES * 4, strict=False):
            ax.axvline(x, color=style[0], linestyle=style[1], label=name)
        ax.set_xlabel(self.x_label)
        _finish(ax, self.title, self.y_label, False, legend=True)


# The first series in the default blue, the second (refusals, errors) in red.
_POINT_COLOURS = ["C0", "tab:red", "C2", "C4"]
_MARK_STYLES = [("grey", "--"), ("green", ":"), ("purple", "-.")]


def save(path: str | Path, title: str, panels: Sequence[Lines | Bars | Timeline],
         columns: int | None = None, panel_size: tuple[float, float] = (5.5, 3.6)) -> Path:
    """Draw `panels` (side by side, `columns` a row) under `title`, the CPU as footnote, and
    write the PNG to `path`. Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = columns or len(panels)
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, squeeze=False,
                             figsize=(panel_size[0] * columns, panel_size[1] * rows + 0.8))
    for ax, panel in zip(axes.flat, panels, strict=False):
        panel.draw(ax)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    fig.text(0.01, 0.01, cpu_label(), fontsize=7, color="dimgrey")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _finish(ax, title: str, y_label: str, log_y: bool, legend: bool) -> None:
    ax.set_ylabel(y_label)
    if title:
        ax.set_title(title, fontsize=9)
    if log_y:
        from matplotlib.ticker import FuncFormatter

        ax.set_yscale("log")
        plain = FuncFormatter(lambda y, _: f"{y:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
    ax.grid(axis="y", alpha=0.3)
    if legend:
        ax.legend(fontsize=7)


def _value_format(value: float) -> str:
    if abs(value) >= 100:
        return "{:.0f}"
    return "{:.1f}" if abs(value) >= 1 else "{:.2f}" if abs(value) >= 0.1 else "{:.3f}"
