"""Checks for p2-search's exercises (``make check M=p2-search``), and the mistakes they must catch.

Every expected value here is worked out independently of the code under test:
the search space's ranges from its specification, the pruning decisions by
hand from small tables of validation accuracies, the choice of the winner from
a handful of made-up trials.  Optuna's own trials are used (in memory, with its
random sampler), so any way of declaring the space that Optuna records passes.
The code under test may be a learner's, or a stub.
"""

from __future__ import annotations

import math

import numpy as np

from ml60.grading import exercise, expect, wrong_answer
from phase2_depth import p2_search

# --------------------------------------------------------------------------- p2-search.1 the search space

NAMES = {"schedule", "warmup", "batch_size", "lr", "weight_decay", "dropout", "label_smoothing"}


def sample_space(n: int = 200, seed: int = 0) -> list[tuple[dict, dict]]:
    """``n`` draws of ``suggest`` from Optuna's random sampler: (the returned dict, what Optuna recorded)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed))
    draws = []
    for _ in range(n):
        trial = study.ask()
        params = p2_search.suggest(trial)
        draws.append((params, dict(trial.params)))
    return draws


def values_of(draws, name: str) -> np.ndarray:
    return np.array([params[name] for params, _ in draws])


@exercise("p2-search.1")
def test_suggest_names_ranges_and_choices():
    draws = sample_space()
    params, recorded = draws[0]
    expect(isinstance(params, dict), f"suggest returns a dict of hyperparameters, got {type(params).__name__}")
    expect(set(params) == NAMES, f"suggest returns {sorted(params)}; train_config and train_once read "
                                 f"{sorted(NAMES)}: one entry for each, no more")
    for params, recorded in draws:
        expect(params == recorded, f"suggest returned {params}, but Optuna recorded {recorded}: the names given "
                                   "to trial.suggest_* must be the keys of the dict, because the winner is rebuilt "
                                   "from Optuna's record (best.params)")
    for name, options in (("schedule", {"constant", "step", "cosine", "onecycle"}), ("warmup", {False, True}),
                          ("batch_size", {64, 128, 256})):
        seen = set(values_of(draws, name).tolist())
        expect(seen == options, f"in 200 draws {name} took the values {sorted(seen, key=str)}, expected "
                                f"{sorted(options, key=str)}: every option of the space must be on offer")
    for name, low, high in (("lr", 0.01, 0.4), ("weight_decay", 1e-5, 1e-3), ("dropout", 0.0, 0.5),
                            ("label_smoothing", 0.0, 0.2)):
        values = values_of(draws, name).astype(float)
        expect(values.min() >= low * (1 - 1e-9) and values.max() <= high * (1 + 1e-9),
               f"{name} ranged over {values.min():.3g}..{values.max():.3g}, outside the space {low:g}..{high:g}")
        expect(values.min() < low + 0.2 * (high - low) and values.max() > high - 0.2 * (high - low),
               f"{name} only covered {values.min():.3g}..{values.max():.3g} of {low:g}..{high:g} in 200 draws")


@exercise("p2-search.1")
def test_suggest_samples_rates_on_a_log_scale():
    draws = sample_space(seed=1)
    for name, low, high in (("lr", 0.01, 0.4), ("weight_decay", 1e-5, 1e-3)):
        values = values_of(draws, name).astype(float)
        middle = math.sqrt(low * high)              # the midpoint on a log scale
        share = float(np.mean(values < middle))
        linear_share = (middle - low) / (high - low)
        expect(0.35 < share < 0.65,
               f"{100 * share:.0f}% of the sampled {name} values are below {middle:.3g}, the midpoint of "
               f"{low:g}..{high:g} on a log scale; a log-uniform draw puts half of them there, a uniform one "
               f"{100 * linear_share:.0f}%. Sample {name} on a log scale (trial.suggest_float(..., log=True)): "
               "its order of magnitude is what matters")
    for name, low, high in (("dropout", 0.0, 0.5), ("label_smoothing", 0.0, 0.2)):
        share = float(np.mean(values_of(draws, name).astype(float) < (low + high) / 2))
        expect(0.35 < share < 0.65, f"{100 * share:.0f}% of the sampled {name} values are below the middle of "
                                    f"{low:g}..{high:g}; {name} is sampled uniformly on a linear scale")


@wrong_answer("p2-search.1", diagnosis="Sample lr on a log scale")
def suggest_linear_learning_rate(trial) -> dict:
    """The learning rate is drawn uniformly between 0.01 and 0.4: most trials get a rate above 0.1."""
    return {
        "schedule": trial.suggest_categorical("schedule", ["constant", "step", "cosine", "onecycle"]),
        "warmup": trial.suggest_categorical("warmup", [False, True]),
        "batch_size": trial.suggest_categorical("batch_size", [64, 128, 256]),
        "lr": trial.suggest_float("lr", 0.01, 0.4),
        "weight_decay": trial.suggest_float("weight_decay", 1e-5, 1e-3, log=True),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        "label_smoothing": trial.suggest_float("label_smoothing", 0.0, 0.2),
    }


@wrong_answer("p2-search.1", diagnosis="must be the keys of the dict")
def suggest_under_other_names(trial) -> dict:
    """Optuna records the learning rate as 'learning_rate', so best.params has no 'lr' to retrain with."""
    return {
        "schedule": trial.suggest_categorical("schedule", ["constant", "step", "cosine", "onecycle"]),
        "warmup": trial.suggest_categorical("warmup", [False, True]),
        "batch_size": trial.suggest_categorical("batch_size", [64, 128, 256]),
        "lr": trial.suggest_float("learning_rate", 0.01, 0.4, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-5, 1e-3, log=True),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        "label_smoothing": trial.suggest_float("label_smoothing", 0.0, 0.2),
    }


@wrong_answer("p2-search.1", diagnosis="every option of the space must be on offer")
def suggest_without_onecycle(trial) -> dict:
    """The one-cycle schedule is left out of the choices, so the search can never find it."""
    return {
        "schedule": trial.suggest_categorical("schedule", ["constant", "step", "cosine"]),
        "warmup": trial.suggest_categorical("warmup", [False, True]),
        "batch_size": trial.suggest_categorical("batch_size", [64, 128, 256]),
        "lr": trial.suggest_float("lr", 0.01, 0.4, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-5, 1e-3, log=True),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        "label_smoothing": trial.suggest_float("label_smoothing", 0.0, 0.2),
    }


# --------------------------------------------------------------------------- p2-search.2 the median stopping rule

# Five completed trials, validation accuracy by epoch; the last one diverged.
# At epoch 2 the values are 0.40, 0.50, 0.45, 0.42, 0.12: median 0.42, mean 0.378.
# At epoch 3 they are 0.50, 0.55, 0.60, 0.48, 0.15: median 0.50.
COMPLETED = [{1: 0.30, 2: 0.40, 3: 0.50}, {1: 0.20, 2: 0.50, 3: 0.55}, {1: 0.25, 2: 0.45, 3: 0.60},
             {1: 0.35, 2: 0.42, 3: 0.48}, {1: 0.10, 2: 0.12, 3: 0.15}]


def prune(this_trial, completed=COMPLETED, **rule) -> bool:
    """The learner's decision on copies (a rule must not edit the study's records)."""
    decision = p2_search.should_prune(dict(this_trial), [dict(c) for c in completed], **rule)
    expect(isinstance(decision, (bool, np.bool_)), f"should_prune returns True or False, got {decision!r}")
    return bool(decision)


@exercise("p2-search.2")
def test_should_prune_below_the_median_only():
    expect(prune({1: 0.30, 2: 0.44}) is False, "a trial at 0.44 after epoch 2 was pruned, though the completed "
                                               "trials' median there is 0.42: prune only below the median")
    below_median_above_mean = prune({1: 0.30, 2: 0.41})
    expect(below_median_above_mean, "a trial at 0.41 after epoch 2 was kept, below the completed trials' median "
                                    "(0.42) but above their mean (0.378, dragged down by a diverged trial at 0.12): "
                                    "compare with the median, not the mean")
    expect(prune({1: 0.05, 2: 0.10}), "a trial at 0.10 after epoch 2, below every completed trial, was kept")


@exercise("p2-search.2")
def test_should_prune_waits_before_judging():
    expect(prune({1: 0.05}) is False, "a trial was pruned after its first epoch: a trial is not judged before "
                                      "epoch first_judged_epoch (2), since warm-up starts slowly on purpose")
    expect(prune({1: 0.05, 2: 0.10}, first_judged_epoch=3) is False,
           "with first_judged_epoch=3 a trial was pruned after epoch 2: use the argument, not a fixed number")
    expect(prune({1: 0.05, 2: 0.10}, COMPLETED[:3]) is False,
           "a trial was pruned when only 3 trials had completed: no pruning before startup_trials (4) have "
           "completed, the median of so few says little")
    expect(prune({1: 0.05, 2: 0.10}, COMPLETED[:3], startup_trials=3),
           "with startup_trials=3 and 3 completed trials a trial far below them was kept: use the argument")
    expect(prune({1: 0.05, 2: 0.06, 3: 0.07, 4: 0.08}) is False,
           "a trial was pruned at epoch 4, which no completed trial reached: with nobody to compare with at that "
           "epoch, keep it")


@exercise("p2-search.2")
def test_should_prune_judges_the_best_value_so_far():
    kept = prune({1: 0.30, 2: 0.52, 3: 0.45})
    expect(kept is False, "a trial that reached 0.52 at epoch 2 and dipped to 0.45 at epoch 3 was pruned, though the "
                          "completed trials' median at epoch 3 is 0.50: compare the trial's best value so far "
                          "(max over its epochs), not its latest, which one noisy epoch can pull down")


@wrong_answer("p2-search.2", diagnosis="not the mean")
def should_prune_against_the_mean(this_trial, completed, *, startup_trials=4, first_judged_epoch=2):
    """The trial is compared with the mean of the completed trials, which one diverged trial drags down."""
    epoch = max(this_trial)
    if len(completed) < startup_trials or epoch < first_judged_epoch:
        return False
    at_epoch = [values[epoch] for values in completed if epoch in values]
    return bool(at_epoch) and max(this_trial.values()) < float(np.mean(at_epoch))


@wrong_answer("p2-search.2", diagnosis="not judged before")
def should_prune_from_the_first_epoch(this_trial, completed, *, startup_trials=4, first_judged_epoch=2):
    """No grace period: a trial can be stopped after its first epoch, which punishes warm-up."""
    epoch = max(this_trial)
    if len(completed) < startup_trials:
        return False
    at_epoch = [values[epoch] for values in completed if epoch in values]
    return bool(at_epoch) and max(this_trial.values()) < float(np.median(at_epoch))


@wrong_answer("p2-search.2", diagnosis="best value so far")
def should_prune_on_the_latest_value(this_trial, completed, *, startup_trials=4, first_judged_epoch=2):
    """The latest epoch's value is judged instead of the trial's best so far."""
    epoch = max(this_trial)
    if len(completed) < startup_trials or epoch < first_judged_epoch:
        return False
    at_epoch = [values[epoch] for values in completed if epoch in values]
    return bool(at_epoch) and this_trial[epoch] < float(np.median(at_epoch))


# --------------------------------------------------------------------------- p2-search.3 validation chooses, test judges


def made_up_trials():
    """Five trials: the best on validation is trial 2, a pruned trial reported more, trial 3 is best on test."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    space = {"lr": FloatDistribution(0.001, 1.0, log=True)}
    spec = [(TrialState.COMPLETE, 0.60, 0.01), (TrialState.PRUNED, 0.72, 0.02), (TrialState.COMPLETE, 0.68, 0.03),
            (TrialState.COMPLETE, 0.66, 0.04), (TrialState.FAIL, None, 0.05)]
    trials = []
    for number, (state, value, lr) in enumerate(spec):
        trial = create_trial(state=state, value=value, params={"lr": lr}, distributions=space,
                             intermediate_values={1: value} if value is not None else None)
        trial.number = number
        trials.append(trial)
    return trials


TEST_ACCURACY = {0.01: 0.58, 0.02: 0.71, 0.03: 0.64, 0.04: 0.67, 0.05: 0.90}


class Lab:
    """The retrain and test functions handed to the learner's code, keeping a log of every call."""

    def __init__(self):
        self.retrained, self.tested = [], []

    def retrain(self, params: dict):
        self.retrained.append(dict(params))
        return ("model trained with lr", params["lr"])

    def test_accuracy(self, model) -> float:
        self.tested.append(model)
        return TEST_ACCURACY[model[1]]


def choose(trials, lab):
    try:
        result = p2_search.choose_and_test_once(trials, lab.retrain, lab.test_accuracy)
    except TypeError as exc:
        raise AssertionError(f"choose_and_test_once failed with TypeError ({exc}): a failed trial has no value "
                             "(None); only the complete trials compete") from exc
    expect(isinstance(result, tuple) and len(result) == 3,
           "choose_and_test_once returns three things: (best trial, retrained model, test accuracy)")
    return result


@exercise("p2-search.3")
def test_choose_on_validation_and_test_once():
    lab = Lab()
    best, model, test_accuracy = choose(made_up_trials(), lab)
    expect(len(lab.tested) <= 1 or best.number != 3,
           f"the test set was looked at {len(lab.tested)} times and chose trial 3 (the best on test, 0.67): the test "
           "set chose the configuration, so its figure is no longer an unbiased estimate. Choose on validation, "
           "then test only the winner, once")
    expect(best.number != 1, "the pruned trial 1 was chosen: a pruned trial's value is the last validation accuracy "
                             "it reported, after fewer epochs; only complete trials compete")
    expect(best.number == 2, f"trial {best.number} was chosen; trial 2 has the highest validation accuracy (0.68) "
                             "among the complete trials")
    if not lab.tested and abs(test_accuracy - 0.68) < 1e-12:
        expect(False, "the reported accuracy is the winner's validation accuracy (0.68), the maximum of many "
                      "noisy scores and so biased upwards: measure the retrained winner with test_accuracy(model), "
                      "once, and report that")
    expect(len(lab.tested) == 1, f"the test set was looked at {len(lab.tested)} times: exactly once, on the winner")
    expect(lab.retrained == [{"lr": 0.03}], f"retrain was called with {lab.retrained}: once, with the winner's "
                                            "params ({'lr': 0.03})")
    expect(lab.tested == [model] and model == ("model trained with lr", 0.03),
           "the model measured on the test set, and returned, should be the one retrain gave for the winner")
    expect(abs(test_accuracy - 0.64) < 1e-12, f"the reported test accuracy is {test_accuracy}, but test_accuracy "
                                              "gave 0.64 for the winner: return what it measured")


@wrong_answer("p2-search.3", diagnosis="Choose on validation, then test only the winner")
def choose_by_test_accuracy(trials, retrain, test_accuracy):
    """Every complete trial is retrained and tested, and the best on test wins: the test set does the choosing."""
    scored = []
    for trial in (t for t in trials if t.state.name == "COMPLETE"):
        model = retrain(trial.params)
        scored.append((test_accuracy(model), trial, model))
    accuracy, best, model = max(scored, key=lambda s: s[0])
    return best, model, accuracy


@wrong_answer("p2-search.3", diagnosis="only complete trials compete")
def choose_including_pruned(trials, retrain, test_accuracy):
    """Every trial with a value competes, pruned ones included."""
    best = max((t for t in trials if t.value is not None), key=lambda t: t.value)
    model = retrain(best.params)
    return best, model, test_accuracy(model)


@wrong_answer("p2-search.3", diagnosis="the winner's validation accuracy")
def choose_and_report_validation(trials, retrain, test_accuracy):
    """The winner is retrained but its validation accuracy from the search is reported as the result."""
    best = max((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    return best, retrain(best.params), best.value
