"""``duet-verl report RUN_DIR``: plots of a run's logged metrics, for CPU quickstart and GPU runs alike.

Reads verl's file-logger output (``metrics.jsonl``: one ``{"step", "data"}`` object per line, written when
``trainer.logger`` includes ``file``) or TensorBoard event files, and writes ``report.png`` with four panels
(tokens generated vs budget, rollouts-per-prompt spread, stop/abort rates, accuracy) plus a printed summary.
A directory of runs (such as a quickstart output) gets one report per run.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

__all__ = ["load_series", "write_report"]

RATES = ("stopped_after_marker", "aborted", "eps_kept", "natural_eos", "length_cap")


def load_series(run_dir: str | Path) -> dict[str, dict[int, float]]:
    """``{metric: {step: value}}`` from ``metrics.jsonl`` (or any ``*.jsonl``) or TensorBoard events in ``run_dir``."""
    run_dir = Path(run_dir)
    files = [run_dir / "metrics.jsonl"] if (run_dir / "metrics.jsonl").exists() else sorted(run_dir.glob("*.jsonl"))
    series: dict[str, dict[int, float]] = defaultdict(dict)
    for file in files:
        for line in file.read_text().split("\n"):  # not splitlines(): U+2028 can sit inside a JSON string
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            for key, value in row.get("data", {}).items():
                if isinstance(value, int | float):
                    series[key][int(row["step"])] = float(value)
    if not series:
        events = sorted(run_dir.rglob("events.out.tfevents.*"))
        if events:
            from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

            for event_file in events:
                acc = EventAccumulator(str(event_file))
                acc.Reload()
                for tag in acc.Tags().get("scalars", []):
                    for ev in acc.Scalars(tag):
                        series[tag][int(ev.step)] = float(ev.value)
    return dict(series)


def _plot(ax, series, keys, labels=None):
    drawn = False
    for key, label in zip(keys, labels or keys, strict=True):
        points = sorted(series.get(key, {}).items())
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=label)
            drawn = True
    if drawn:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)


def write_report(run_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    """Write ``report.png`` for ``run_dir`` (or for each run below it); returns the files written."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise FileNotFoundError(f"no such run directory: {run_dir}")
    series = load_series(run_dir)
    if not series:
        runs = sorted(p.parent for p in run_dir.glob("*/metrics.jsonl"))
        if not runs:
            raise FileNotFoundError(f"{run_dir}: no metrics.jsonl, *.jsonl or TensorBoard events found")
        written = []
        for run in runs:
            written += write_report(run, Path(out) / run.name if out else None)
        return written

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out) if out else run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), dpi=110)
    _plot(
        axes[0, 0],
        series,
        ["duet/tokens_generated", "duet/budget_tokens", "duet/planned_tokens"],
        ["generated", "budget", "planned"],
    )
    axes[0, 0].set_title("rollout tokens per step")
    _plot(axes[0, 1], series, ["duet/n_min", "duet/n_mean", "duet/n_max"], ["n min", "n mean", "n max"])
    axes[0, 1].set_title("rollouts per prompt")
    _plot(axes[1, 0], series, [f"duet/rate_{r}" for r in RATES], list(RATES))
    axes[1, 0].set_title("how rollouts ended")
    val_keys = sorted(k for k in series if k.startswith("val-core/") and "/acc/mean" in k)
    _plot(axes[1, 1], series, ["critic/score/mean", *val_keys], ["train reward", *[k.split("/")[1] for k in val_keys]])
    axes[1, 1].set_title("reward / held-out accuracy")
    for ax in axes.flat:
        ax.set_xlabel("step")
    fig.suptitle(str(run_dir))
    fig.tight_layout()
    path = out_dir / "report.png"
    fig.savefig(path)
    plt.close(fig)
    tokens = series.get("duet/tokens_generated", {})
    budget = series.get("duet/budget_tokens", {})
    print(
        f"{run_dir}: {len(tokens) or len(next(iter(series.values())))} steps, "
        f"{sum(tokens.values()):,.0f} rollout tokens"
        + (f" ({sum(tokens.values()) / sum(budget.values()):.2f} of budget)" if budget else "")
    )
    for rate in RATES:
        values = series.get(f"duet/rate_{rate}", {})
        if values:
            print(f"  {rate:<22}{sum(values.values()) / len(values):.1%}")
    print(f"  report: {path}")
    return [path]
