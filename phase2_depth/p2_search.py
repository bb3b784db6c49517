"""p2-search (days 36-40): choosing hyperparameters on validation, with Optuna.

What to take from it:

1. **The search space**: learning-rate schedule (constant, step, cosine,
   one-cycle; with or without warm-up), batch size, peak learning rate,
   weight decay, dropout and label smoothing.
2. **TPE** (Optuna's default sampler) starts with random trials, then models
   which regions of the space gave good validation accuracy and samples more
   there.  **Pruning** (the median stopping rule, ``should_prune``) stops a
   trial whose best validation accuracy so far, from its second epoch on, is
   below the median of the completed trials at the same epoch.
3. **The study lives in SQLite** (``runs/p2-search/study.db``): stop the
   search and run it again to continue; start it in two terminals and both
   add trials to the same study.
4. **Validation chooses, test judges once**: every trial is scored on the
   validation split; only the winning configuration, retrained on the whole
   training split, is evaluated on the test set - once.

Each trial trains the narrow CNN (widths 16-32-64-128-128, pooling early) on
a subset of the training split, so a search fits in minutes on a CPU; the
ranking of configurations, not their absolute accuracy, is what we want.

Run: ``make p2-search`` (``ARGS='--trials 30'`` for a longer search).  Writes
``runs/p2-search/``: ``study.db``, ``results.csv``, ``results.md``,
``trials.png``, ``metrics.json``.
"""

from __future__ import annotations

import csv
import time

import numpy as np
import torch

from common.device import resolve_device
from common.runs import atomic_write_bytes, final_folder
from common.script import finish_run, is_full_real_run, milestone_parser, start_run
from common.trainer import TrainConfig, Trainer
from phase2_depth.data import AUGMENT, add_dataset_argument, cifar_splits
from phase2_depth.models import WIDTHS, FiveLayerCNN

MILESTONE = "p2-search"
FULL = {"trials": 16, "epochs": 6, "subset": (15000, 5000, 10000), "final_epochs": 12}
QUICK = {"trials": 4, "epochs": 2, "subset": (2000, 500, 1000), "final_epochs": 2}


def suggest(trial) -> dict:
    """One trial's hyperparameters, drawn from the search space: one line per hyperparameter.

    ``trial`` is an Optuna trial; each ``trial.suggest_*`` call names a
    hyperparameter, declares its range and returns the value the sampler
    picks.  The names are the keys of the returned dict, the ones
    ``train_config`` and ``train_once`` read, because the winner is later
    rebuilt from Optuna's record of them (``best.params``).

    The space:

    * ``schedule``: one of ``constant``, ``step``, ``cosine``, ``onecycle``;
    * ``warmup``: ``False`` or ``True``;
    * ``batch_size``: one of 64, 128, 256;
    * ``lr``: from 0.01 to 0.4, and ``weight_decay``: from 1e-5 to 1e-3, both
      on a **log scale** (``log=True``): what matters for a learning rate is
      its order of magnitude, so 0.01-0.02 deserves as many trials as
      0.2-0.4.  Uniform on a linear scale, 85% of the learning rates would
      land above 0.07 and the small ones would hardly be tried;
    * ``dropout``: from 0 to 0.5, and ``label_smoothing``: from 0 to 0.2,
      on a linear scale (their effect is roughly proportional).
    """
    # EXERCISE p2-search.1: the search space
    # hint: trial.suggest_categorical for the choices, trial.suggest_float for the ranges;
    # hint: the learning rate and the weight decay span orders of magnitude: sample them with log=True
    return {
        "schedule": trial.suggest_categorical("schedule", ["constant", "step", "cosine", "onecycle"]),
        "warmup": trial.suggest_categorical("warmup", [False, True]),
        "batch_size": trial.suggest_categorical("batch_size", [64, 128, 256]),
        "lr": trial.suggest_float("lr", 0.01, 0.4, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-5, 1e-3, log=True),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        "label_smoothing": trial.suggest_float("label_smoothing", 0.0, 0.2),
    }
    # END EXERCISE


STARTUP_TRIALS = 4        # no pruning before this many trials have completed: the median needs company
FIRST_JUDGED_EPOCH = 2    # a trial is never stopped after its first epoch: warm-up is slow off the mark


def should_prune(this_trial: dict[int, float], completed: list[dict[int, float]], *,
                 startup_trials: int = STARTUP_TRIALS, first_judged_epoch: int = FIRST_JUDGED_EPOCH) -> bool:
    """The median stopping rule: stop a trial that is doing worse than the typical trial did by now.

    ``this_trial`` maps each epoch run so far (1, 2, ...) to the trial's
    validation accuracy after it; its latest epoch is the largest key.
    ``completed`` holds the same mapping for every trial that ran to the end.

    Prune (return True) when all of these hold:

    * at least ``startup_trials`` trials have completed (before that the
      median of a handful of trials says little);
    * the latest epoch is ``first_judged_epoch`` or later (warm-up, or a
      large learning rate, can make a good trial slow off the mark);
    * some completed trial reported a value at that same epoch;
    * the trial's **best** validation accuracy so far is below the
      **median** of the completed trials' values at that epoch.

    The median, not the mean: one diverged trial at 10% would drag a mean
    down and let poor trials through.  This is Optuna's ``MedianPruner``
    (``n_startup_trials``, ``n_warmup_steps``), written out; Golovin et al.,
    "Google Vizier" (2017), call it the median stopping rule.
    """
    # EXERCISE p2-search.2: the median stopping rule
    # hint: three reasons not to judge yet (too few completed trials, too early an epoch, nobody to compare with
    # hint: at this epoch); then compare this trial's best value so far with np.median of the others' at this epoch
    epoch = max(this_trial)
    if len(completed) < startup_trials or epoch < first_judged_epoch:
        return False
    at_this_epoch = [values[epoch] for values in completed if epoch in values]
    if not at_this_epoch:
        return False
    return max(this_trial.values()) < float(np.median(at_this_epoch))
    # END EXERCISE


def median_rule_pruner():
    """An Optuna pruner that asks :func:`should_prune` after every reported epoch."""
    import optuna

    class MedianRulePruner(optuna.pruners.BasePruner):
        def prune(self, study, trial) -> bool:
            if not trial.intermediate_values:
                return False
            completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            return should_prune(dict(trial.intermediate_values), [dict(t.intermediate_values) for t in completed])

    return MedianRulePruner()


def train_config(params: dict, epochs: int, seed: int) -> TrainConfig:
    return TrainConfig(epochs=epochs, optimizer="sgd", lr=params["lr"], momentum=0.9, nesterov=True,
                       weight_decay=params["weight_decay"], schedule=params["schedule"],
                       warmup_epochs=1.0 if params["warmup"] else 0.0, step_every=max(1, epochs // 3),
                       step_gamma=0.2, label_smoothing=params["label_smoothing"], channels_last=True, seed=seed)


def train_once(params: dict, splits, *, epochs: int, device, seed: int, on_epoch_end=None):
    torch.manual_seed(seed)
    model = FiveLayerCNN(WIDTHS["narrow"], num_classes=len(splits.classes), dropout=params["dropout"],
                         pool_first=True)
    train, val, test = splits.loaders(params["batch_size"], device=device, augment=AUGMENT, seed=seed,
                                      channels_last=True)
    trainer = Trainer(model, train_config(params, epochs, seed), device=device, announce=lambda m: None)
    history = trainer.fit(train, val, on_epoch_end=on_epoch_end)
    return trainer, history, test


def choose_and_test_once(trials, retrain, test_accuracy):
    """Validation chooses, the test set judges once: the end of an honest search.

    ``trials`` are the study's trials (Optuna ``FrozenTrial`` objects): each has a
    ``state`` (``state.name`` is ``"COMPLETE"``, ``"PRUNED"``, ...), a
    ``value`` (for a complete trial, its best validation accuracy) and the
    ``params`` it was trained with.  A pruned trial carries a value too, the
    last validation accuracy it reported before it was stopped: a figure from
    fewer epochs, not comparable, so only complete trials compete.

    ``retrain(params)`` trains the chosen configuration on the whole training
    split and returns the trained model; ``test_accuracy(model)`` measures it
    on the test set.  Every call of ``test_accuracy`` is a look at the test
    set, so it is called exactly once, on the winner: a test set that also
    helped choose (by testing several candidates and keeping the best) no
    longer gives an unbiased estimate, and neither does the winner's
    validation accuracy, which was the maximum of many.

    Returns ``(best trial, retrained model, test accuracy)``.
    """
    # EXERCISE p2-search.3: validation chooses, test judges once
    # hint: keep the complete trials, take the one with the highest value (validation accuracy),
    # hint: retrain its params, then one call of test_accuracy, on that model alone
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    best = max(complete, key=lambda t: t.value)
    model = retrain(best.params)
    return best, model, test_accuracy(model)
    # END EXERCISE


def objective_factory(splits, epochs: int, device, seed: int):
    import optuna

    def objective(trial) -> float:
        params = suggest(trial)
        start = time.perf_counter()

        def report(record: dict) -> None:
            trial.report(record["val_accuracy"], record["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation {100 * record['val_accuracy']:.1f}% at epoch {record['epoch']}")

        try:
            _, history, _ = train_once(params, splits, epochs=epochs, device=device, seed=seed, on_epoch_end=report)
        finally:
            trial.set_user_attr("seconds", time.perf_counter() - start)
        return max(h["val_accuracy"] for h in history)

    return objective


def study_name(*, quick: bool, real_data: bool, dataset: str) -> str:
    """One study per kind of search, so that a resumed search only meets trials it can compare with.

    Quick trials (2,000 images, 2 epochs, perhaps on stand-in data) scored far
    below full ones; sharing one study let a full search resume on top of them
    and its check compare against that mixed set.
    """
    return f"{MILESTONE}-{'quick' if quick else 'full'}-{dataset}-{'real' if real_data else 'stand-in'}"


def run_study(run_dir, splits, *, trials: int, epochs: int, device, seed: int, name: str):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # The study outlives the run: it lives in the run's own folder, not in the staging folder a run writes
    # into (common/runs.py), so every run adds its trials to it, and trials a failed run finished are kept.
    home = final_folder(run_dir) or run_dir
    storage = f"sqlite:///{(home / 'study.db').resolve()}"
    study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True, direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed), pruner=median_rule_pruner())
    before = len(study.trials)
    if before:
        print(f"  resuming the study {name!r} in {storage}: {before} trials already there")
        # A sampler seeded as in the first run would draw that run's random start again, trial for trial:
        # seeded by the trials already there, a resumed search is still reproducible and explores anew.
        study.sampler = optuna.samplers.TPESampler(seed=seed + before)

    def show(study, trial):
        value = "pruned" if trial.state.name == "PRUNED" else (
            f"val {100 * trial.value:.2f}%" if trial.value is not None else trial.state.name.lower())
        print(f"  trial {trial.number:>3}: {value:<12} {_short(trial.params)}  "
              f"({trial.user_attrs.get('seconds', 0):.0f}s)", flush=True)

    study.optimize(objective_factory(splits, epochs, device, seed), n_trials=trials, callbacks=[show])
    return study


def _short(params: dict) -> str:
    return (f"{params['schedule']}{'+warmup' if params['warmup'] else ''} bs {params['batch_size']} "
            f"lr {params['lr']:.3f} wd {params['weight_decay']:.1e} drop {params['dropout']:.2f} "
            f"ls {params['label_smoothing']:.2f}")


def write_tables(study, run_dir) -> list[dict]:
    rows = []
    for t in study.trials:
        rows.append({"trial": t.number, "state": t.state.name.lower(),
                     "val_accuracy": None if t.value is None else round(t.value, 4),
                     "epochs_run": len(t.intermediate_values) or None,
                     "seconds": round(t.user_attrs.get("seconds", 0.0), 1), **t.params})
    columns = ["trial", "state", "val_accuracy", "epochs_run", "seconds", "schedule", "warmup", "batch_size", "lr",
               "weight_decay", "dropout", "label_smoothing"]
    with open(run_dir / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    ranked = sorted(rows, key=lambda r: -(r["val_accuracy"] or -1))
    lines = ["| rank | trial | state | val accuracy | " + " | ".join(columns[5:]) + " |",
             "|---:|---:|---|---:|" + "---|" * len(columns[5:])]
    for rank, r in enumerate(ranked, 1):
        values = [f"{r[c]:.3g}" if isinstance(r.get(c), float) else str(r.get(c)) for c in columns[5:]]
        acc = "-" if r["val_accuracy"] is None else f"{100 * r['val_accuracy']:.2f}%"
        lines.append(f"| {rank} | {r['trial']} | {r['state']} | {acc} | " + " | ".join(values) + " |")
    atomic_write_bytes(run_dir / "results.md", ("\n".join(lines) + "\n").encode())
    return rows


def plot_trials(study, path) -> None:
    import matplotlib.pyplot as plt

    from common.plots import save

    fig, ax = plt.subplots(figsize=(8, 4))
    best, best_curve = None, []
    for t in study.trials:
        if t.state.name == "COMPLETE":
            ax.scatter(t.number, 100 * t.value, color="#2a7", zorder=3)
            best = t.value if best is None else max(best, t.value)
        elif t.state.name == "PRUNED" and t.intermediate_values:
            ax.scatter(t.number, 100 * max(t.intermediate_values.values()), color="#c44", marker="x", zorder=3)
        best_curve.append(None if best is None else 100 * best)
    ax.plot(range(len(best_curve)), best_curve, color="#444", label="best so far")
    ax.scatter([], [], color="#2a7", label="complete")
    ax.scatter([], [], color="#c44", marker="x", label="pruned (best epoch before stopping)")
    ax.set(xlabel="trial", ylabel="validation accuracy (%)", title="Search trials, scored on validation only")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, path)


def main(argv: list[str] | None = None) -> dict:
    parser = milestone_parser(MILESTONE, __doc__)
    parser.add_argument("--trials", type=int, default=None, help="trials to add in this run (full 16, quick 4)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per trial (full 6, quick 2)")
    parser.add_argument("--final-epochs", type=int, default=None, help="epochs for the retrained winner")
    add_dataset_argument(parser)
    args = parser.parse_args(argv)
    run_dir = start_run(MILESTONE, args)
    device = resolve_device(args.device)
    plan = dict(QUICK if args.quick else FULL)
    for key in ("trials", "epochs", "final_epochs"):
        if getattr(args, key):
            plan[key] = getattr(args, key)
    print(__doc__.split("\n\n")[0])

    splits = cifar_splits(data_dir=args.data_dir, quick=args.quick, seed=args.seed, dataset=args.dataset, subset=plan["subset"])
    print(f"\n-- Search: {plan['trials']} trials x up to {plan['epochs']} epochs on {len(splits.train):,} training "
          f"images, scored on {len(splits.val):,} validation images --")
    name = study_name(quick=args.quick, real_data=splits.dataset.real, dataset=args.dataset)
    study = run_study(run_dir, splits, trials=plan["trials"], epochs=plan["epochs"], device=device, seed=args.seed,
                      name=name)
    rows = write_tables(study, run_dir)
    plot_trials(study, run_dir / "trials.png")
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]

    full_train = cifar_splits(data_dir=args.data_dir, quick=args.quick, seed=args.seed, dataset=args.dataset,
                              subset=(QUICK["subset"] if args.quick else None), announce=lambda m: None)
    test_passes: list[dict] = []     # one entry per pass over the test set, written by the test loader itself

    def retrain(params: dict):
        print(f"\n-- The winner ({_short(params)}), retrained on all {len(full_train.train):,} training images "
              f"for {plan['final_epochs']} epochs, then the one look at the test set --")
        trainer, history, test_loader = train_once(params, full_train, epochs=plan["final_epochs"], device=device,
                                                   seed=args.seed)
        return trainer, history, RecordedLoader(test_loader, test_passes)

    def look_at_test(trained) -> float:
        trainer, _, test_loader = trained
        return trainer.evaluate(test_loader)["accuracy"]

    best, (_, history, _), test_accuracy = choose_and_test_once(study.trials, retrain, look_at_test)
    print(f"  trial {best.number} (validation {100 * best.value:.2f}% in the search), retrained: "
          f"validation {100 * history[-1]['val_accuracy']:.2f}%, test {100 * test_accuracy:.2f}%")

    label = "" if splits.dataset.real else " (stand-in data)"
    print(f"\nResult: {len(study.trials)} trials ({len(complete)} complete); the chosen configuration reaches "
          f"{100 * test_accuracy:.2f}% test accuracy{label}.")
    return finish_run(run_dir, MILESTONE, args,
                      key_figure={"name": "final_test_accuracy", "value": test_accuracy,
                                  "display": f"best of {len(study.trials)} trials: {100 * test_accuracy:.2f}% "
                                             f"test{label}"},
                      data=splits.dataset.provenance() | {"train_used_per_trial": len(splits.train),
                                                          "val_used": len(splits.val)},
                      plan=plan, trials=rows, trial_count=len(study.trials), complete_trials=len(complete),
                      pruned_trials=sum(t.state.name == "PRUNED" for t in study.trials),
                      best_trial=best.number, best_params=best.params, best_val_accuracy=best.value,
                      final={"train_size": len(full_train.train), "test_size": len(full_train.test),
                             "epochs": plan["final_epochs"], "val_accuracy": history[-1]["val_accuracy"],
                             "test_accuracy": test_accuracy},
                      test_accuracy=test_accuracy, test_set_passes=test_passes, test_evaluations=len(test_passes),
                      study_storage=str((final_folder(run_dir) or run_dir) / "study.db"))


def check(metrics: dict) -> list[str]:
    problems = []
    trials = metrics.get("trials", [])
    values = [t["val_accuracy"] for t in trials if t.get("state") == "complete" and t.get("val_accuracy") is not None]
    full = is_full_real_run(metrics)
    if len(values) < (5 if full else 2) or len(trials) < (12 if full else 2):
        problems.append(f"only {len(trials)} trials, {len(values)} of them complete: too few to call it a search")
    if values and abs(max(values) - round(metrics.get("best_val_accuracy", -1), 4)) > 1e-4:
        problems.append("the chosen configuration is not the best on validation")
    problems += problems_with_test_passes(metrics)
    if is_full_real_run(metrics) and not metrics.get("test_accuracy", 0) >= 0.70:
        problems.append(f"the chosen configuration reaches only {metrics.get('test_accuracy')} on test")
    return problems


def problems_with_test_passes(metrics: dict) -> list[str]:
    """What the run's own record of test-set passes says against "the test set judges once".

    The evidence is ``test_set_passes``, written by :class:`RecordedLoader`
    while the images were read, not a figure the script asserts about
    itself: one pass, over the whole test set.
    """
    passes = metrics.get("test_set_passes")
    if passes is None:
        return ["the run kept no record of its passes over the test set (no test_set_passes in metrics.json); "
                "run p2-search again"]
    if len(passes) != 1:
        return [f"the test set was read {len(passes)} times (test_set_passes): it must judge once, the retrained "
                "winner alone; every further look lets the test set help choose"]
    test_size = metrics.get("final", {}).get("test_size")
    if passes[0].get("images") != test_size:
        return [f"the one pass over the test set read {passes[0].get('images')} images of {test_size}: the test "
                "accuracy must be measured on the whole test set"]
    return []


class RecordedLoader:
    """A loader that records every pass over it: the test set's own log of how often it was looked at.

    "Evaluated exactly once" is only as good as its evidence.  A counter
    kept by the function *meant* to look at the test set misses every other
    look: the test loader handed to ``fit`` as if it were validation data, a
    quick peek while debugging.  So the record is written where the images
    are read: each time iteration over the loader begins, one entry
    ``{"pass": k, "images": n}`` is appended to ``passes`` (``n`` counts the
    images actually read, so a pass stopped early shows it).  ``check`` counts
    the entries.
    """

    def __init__(self, loader, passes: list[dict]):
        self.loader, self.passes = loader, passes

    def __iter__(self):
        record = {"pass": len(self.passes) + 1, "images": 0}
        self.passes.append(record)
        for images, labels in self.loader:
            record["images"] += len(labels)
            yield images, labels

    def __len__(self) -> int:
        return len(self.loader)


if __name__ == "__main__":
    main()
