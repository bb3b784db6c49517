"""``make compare M=p1-numpy``: every run of a milestone side by side, in one table and one picture.

A "Try next" in the guides changes one thing (``RUN=momentum0
ARGS='--momentum 0'``) and asks what it did.  Each such run keeps its own
folder (``runs/p1-numpy/momentum0/``, see :mod:`common.runs`), so the answer
is a comparison, not a memory of the last run:

* the **table**: one row per finished run, with its key figure, how long it
  trained, and the settings in which the runs differ (read from the
  ``arguments`` each run recorded);
* the **picture** (``runs/<id>/compare.png``): the curves each run recorded
  in its ``history`` (validation accuracy and training loss per epoch),
  overlaid, one colour per run.

Quick runs are listed too, marked as such: their figures come from seconds
on a subset and are not comparable with full ones.
"""

from __future__ import annotations

from pathlib import Path

from common import runs
from common.text_table import text_table

CURVES = (("val_accuracy", "validation accuracy"), ("train_loss", "training loss"))
IGNORED_ARGUMENTS = {"run_dir", "run_name", "data_dir", "device"}    # where, not what


def finished_run_folders(milestone_id: str) -> list[tuple[str, Path]]:
    """``(label, folder)`` of every finished run of the milestone, the default run first, then by name; nothing read."""
    base = runs.run_path(milestone_id)
    folders = [("(default)", base)]
    if base.is_dir():
        folders += [(p.name, p) for p in sorted(base.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    return [(label, folder) for label, folder in folders if runs.finished(folder)]


def find_runs(milestone_id: str) -> list[tuple[str, Path, dict]]:
    """``(label, folder, metrics)`` of every finished run of the milestone: the default run first, then by name."""
    return [(label, folder, readable_metrics(folder)) for label, folder in finished_run_folders(milestone_id)]


def readable_metrics(folder: Path) -> dict:
    """The run's metrics; a damaged ``metrics.json`` is shown as such rather than stopping the comparison."""
    try:
        return runs.read_metrics(folder)
    except (OSError, ValueError):
        return {"key_figure": {"display": f"unreadable {folder / 'metrics.json'}"}}


def differing_arguments(all_metrics: list[dict]) -> list[str]:
    """The recorded arguments whose values are not the same in every run (where they were recorded)."""
    names = sorted({name for m in all_metrics for name in (m.get("arguments") or {})} - IGNORED_ARGUMENTS)
    return [name for name in names
            if len({repr((m.get("arguments") or {}).get(name)) for m in all_metrics}) > 1]


def training_seconds(metrics: dict) -> float | None:
    history = metrics.get("history")
    if isinstance(history, list) and history and all(isinstance(h, dict) and "seconds" in h for h in history):
        return sum(h["seconds"] for h in history)
    training = metrics.get("training")
    if isinstance(training, dict) and isinstance(training.get("seconds"), (int, float)):
        return training["seconds"]
    return None


def table_rows(found: list[tuple[str, Path, dict]]) -> tuple[tuple, list[tuple]]:
    differing = differing_arguments([m for _, _, m in found])
    header = ("run", "kind", "key figure", "training s", *differing, "finished")
    rows = []
    for label, _, metrics in found:
        figure = metrics.get("key_figure") or {}
        seconds = training_seconds(metrics)
        arguments = metrics.get("arguments") or {}
        rows.append((label, "quick" if metrics.get("quick") else "full",
                     figure.get("display") or figure.get("value") or "-",
                     f"{seconds:.1f}" if seconds is not None else "-",
                     *(arguments.get(name, "?") for name in differing),
                     metrics.get("finished_utc", "?")))
    return header, rows


def plot_curves(milestone_id: str, found: list[tuple[str, Path, dict]], path: Path) -> list[str]:
    """Overlay the recorded curves; return the names of the curves drawn (none: no picture)."""
    histories = {label: m["history"] for label, _, m in found
                 if isinstance(m.get("history"), list) and m["history"] and isinstance(m["history"][0], dict)}
    drawn = [(key, title) for key, title in CURVES if any(key in h[0] for h in histories.values())]
    if not drawn:
        return []
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from common.plots import save

    fig, axes = plt.subplots(1, len(drawn), figsize=(5.5 * len(drawn), 3.8), squeeze=False)
    for ax, (key, title) in zip(axes[0], drawn):
        for label, history in histories.items():
            points = [(h.get("epoch", i + 1), h[key]) for i, h in enumerate(history) if key in h]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{milestone_id}: {len(histories)} runs")
    save(fig, path)
    return [key for key, _ in drawn]


def compare(milestone_id: str) -> int:
    found = find_runs(milestone_id)
    if not found:
        print(f"no finished run of {milestone_id} in {runs.run_path(milestone_id)}/: run `make {milestone_id}` "
              f"(and `make {milestone_id} RUN=name ARGS='...'` for a run to compare it with)")
        return 1

    header, rows = table_rows(found)
    print(f"{milestone_id}: {len(found)} finished run(s)\n")
    print(text_table(header, rows))
    if any(m.get("quick") for _, _, m in found) and any(not m.get("quick") for _, _, m in found):
        print("\nQuick runs train for seconds on a subset: compare full runs with full runs.")
    picture = runs.run_path(milestone_id) / "compare.png"
    drawn = plot_curves(milestone_id, found, picture)
    if drawn:
        print(f"\nCurves ({', '.join(drawn)}) of every run overlaid: {picture}")
    else:
        print(f"\n{milestone_id} records no per-epoch history, so there are no curves to overlay.")
    return 0
