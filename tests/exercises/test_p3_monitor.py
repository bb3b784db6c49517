"""Checks for p3-monitor's exercises (``make check M=p3-monitor``), and the mistakes they must catch.

The expected answers are written here, independently of the code under test:
the KS statistic by brute force (both empirical CDFs at every point), the PSI
by a plain loop over the values, Holm's procedure on hand-worked p-values,
and its false-alarm rate by simulation (under "no drift", a p-value is
uniform on 0..1); the reservoir sample's fairness by counting, over 400
seeds, how often each position is kept.
"""

from __future__ import annotations

import random

import numpy as np

from ml60.grading import exercise, expect, wrong_answer
from phase3_production.serving import drift, live, stats


def call(function, *args, **kwargs):
    """Call the code under test; any crash but the stub's becomes a diagnosis."""
    try:
        return function(*args, **kwargs)
    except NotImplementedError:
        raise
    except Exception as exc:   # noqa: BLE001 - the diagnosis, not a crash of the check
        sizes = ", ".join(str(len(a)) for a in args if hasattr(a, "__len__"))
        expect(False, f"{function.__name__} raised {type(exc).__name__} ({exc}) on inputs of sizes {sizes}: "
                      "the samples need not have the same size (a window of 200 against 2,000 reference values)")


# --------------------------------------------------------------------------- p3-monitor.1 the KS statistic


def brute_force_ks(a, b) -> float:
    """max over every value x of either sample of |F_a(x) - F_b(x)|, with F(x) = share of values <= x."""
    return max(abs(np.mean(a <= x) - np.mean(b <= x)) for x in np.concatenate([a, b]))


def expect_ks(name: str, a, b, advice: str) -> None:
    d = call(stats.ks_statistic, a, b)
    expected = brute_force_ks(a, b)
    expect(np.ndim(d) == 0, f"{name}: ks_statistic returned shape {np.shape(d)}: D is one number")
    d = float(d)
    expect(0.0 <= d <= 1.0, f"{name}: D = {d:.3g}, but D is a gap between two CDFs, so it lies in 0..1; comparing "
                            "the sorted samples index by index measures distances between values instead: "
                            "compare the fractions of each sample at or below x")
    expect(abs(d - expected) < 1e-9, f"{name}: D = {d:.4f}, expected {expected:.4f}: {advice}")


@exercise("p3-monitor.1")
def test_ks_statistic_is_the_largest_gap_between_the_empirical_cdfs():
    expect_ks("a = [5, 6, 7, 8], b = [1, 2, 3, 4]", np.array([5.0, 6, 7, 8]), np.array([1.0, 2, 3, 4]),
              "at x = 4 all of b and none of a is at or below x, so D = 1: evaluate both CDFs at the values of "
              "both samples, not of one only")
    rng = np.random.default_rng(0)
    expect_ks("two samples of 60, shifted by half a standard deviation", rng.normal(0, 10, 60), rng.normal(5, 10, 60),
              "D = max |F_a(x) - F_b(x)| over the values of both samples, F(x) = (values <= x) / size")
    sample = rng.normal(0, 1, 50)
    expect_ks("a sample against itself", sample, sample.copy(),
              "identical samples have identical CDFs, so D = 0; every value is tied with its copy: read both CDFs "
              "only after every copy of a value is counted")
    expect_ks("a window of 200 against 2,000 reference values", rng.normal(0.1, 1, 200), rng.normal(0, 1, 2000),
              "divide each count by its own sample's size")


@exercise("p3-monitor.1")
def test_ks_statistic_counts_tied_values_together():
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 5, 40).astype(float), rng.integers(1, 6, 30).astype(float)
    expect_ks("integer-valued samples (many ties)", a, b,
              "with tied values, read both CDFs only after every copy of a value is counted "
              "(np.searchsorted(..., side='right')); stepping through the merged values one at a time "
              "measures gaps in the middle of a tie")
    same = np.array([1.0, 1, 2, 2, 3, 3])
    expect_ks("[1, 1, 2, 2, 3, 3] against itself", same, same.copy(),
              "identical samples give D = 0 even with ties: read both CDFs only after every copy of a value is counted")


@wrong_answer("p3-monitor.1", diagnosis="comparing the sorted samples index by index")
def ks_sorted_values_index_by_index(a, b):
    """The sorted samples are compared rank by rank: a distance between values, not between CDFs."""
    n = min(len(a), len(b))
    return float(np.abs(np.sort(a)[:n] - np.sort(b)[:n]).max())


@wrong_answer("p3-monitor.1", diagnosis="stepping through the merged values one at a time")
def ks_merge_walk_ignoring_ties(a, b):
    """The merged samples are walked one value at a time, the gap measured after each step, ties or not."""
    a, b = np.sort(a), np.sort(b)
    i = j = 0
    d = 0.0
    while i < len(a) and j < len(b):
        if a[i] <= b[j]:
            i += 1
        else:
            j += 1
        d = max(d, abs(i / len(a) - j / len(b)))
    return d


@wrong_answer("p3-monitor.1", diagnosis="the values of both samples, not of one only")
def ks_evaluated_at_a_only(a, b):
    """Both CDFs are read only at the values of the first sample, and the largest gap can sit at one of b's."""
    a, b = np.sort(a), np.sort(b)
    return float(np.abs(np.searchsorted(a, a, side="right") / len(a)
                        - np.searchsorted(b, a, side="right") / len(b)).max())


# --------------------------------------------------------------------------- p3-monitor.2 PSI


def loop_psi(reference, current, bins: int, floor: float) -> float:
    """PSI by hand: edges at the reference's quantiles, each value counted into its bin, shares floored."""
    edges = [np.quantile(reference, k / bins) for k in range(1, bins)]

    def shares(values):
        counts = np.zeros(bins)
        for v in values:
            counts[sum(v >= e for e in edges)] += 1     # open outer bins: below the first edge -> 0, above the last -> bins-1
        return np.maximum(counts / len(values), floor)

    p, q = shares(reference), shares(current)
    return float(sum((qi - pi) * np.log(qi / pi) for pi, qi in zip(p, q)))


def expect_psi(name: str, reference, current, advice: str, bins: int = 10, floor: float = 1e-4) -> None:
    value = call(stats.psi, reference, current, bins=bins, floor=floor)
    expect(np.ndim(value) == 0, f"{name}: psi returned shape {np.shape(value)}: the PSI is one number, summed over bins")
    value = float(value)
    expected = loop_psi(reference, current, bins, floor)
    expect(np.isfinite(value), f"{name}: PSI = {value}, expected {expected:.3f}: an empty bin has share 0 and "
                               f"ln(0) is -inf; raise every share below floor to floor (empty bins must not make "
                               "the PSI infinite)")
    expect(abs(value - expected) <= 0.01 + 0.02 * abs(expected),
           f"{name}: PSI = {value:.4f}, expected {expected:.4f}: {advice}")


@exercise("p3-monitor.2")
def test_psi_bins_by_the_reference_quantiles():
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 1, 2000)
    expect_psi("a sample of the same distribution", reference, rng.normal(0, 1, 1000),
               "the bins are the reference's deciles, each holding 10% of it; PSI = sum (q - p) ln(q / p)")
    expect_psi("a sample half as spread", reference, rng.normal(0, 0.5, 1000),
               "the bin edges come from the reference's quantiles (np.quantile(reference, ...)), not from the "
               "live data's and not equally wide: equal shares of the reference in every bin")
    expect_psi("a sample shifted by 0.3 with 5 bins", reference, rng.normal(0.3, 1, 500),
               "bins - 1 edges at the reference's 1/bins ... (bins-1)/bins quantiles", bins=5)


@exercise("p3-monitor.2")
def test_psi_survives_empty_bins_and_values_beyond_the_reference():
    rng = np.random.default_rng(1)
    reference = rng.uniform(0, 1, 2000)
    beyond = rng.uniform(2, 3, 300)                                 # every live value above the reference's maximum
    expect_psi("live values all above the reference's range", reference, beyond,
               "the outer bins are open: a value above the last edge belongs to the last bin (and one below the "
               "first edge to the first), so q = [0, ..., 0, 1]; a histogram over the reference's range drops them")
    expect_psi("live values all in the lowest decile", reference, rng.uniform(0, 0.09, 300),
               "nine empty bins: their shares are raised to floor")


@wrong_answer("p3-monitor.2", diagnosis="not from the live data's")
def psi_bins_from_live_data(reference, current, bins=10, floor=1e-4):
    """The bin edges are the current sample's quantiles: the bins move with the shift they should measure."""
    edges = np.unique(np.quantile(current, np.linspace(0, 1, bins + 1)[1:-1]))
    p = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1) / len(reference)
    q = np.bincount(np.searchsorted(edges, current, side="right"), minlength=len(edges) + 1) / len(current)
    p, q = np.maximum(p, floor), np.maximum(q, floor)
    return float(((q - p) * np.log(q / p)).sum())


@wrong_answer("p3-monitor.2", diagnosis="empty bins must not make the PSI infinite")
def psi_without_floor(reference, current, bins=10, floor=1e-4):
    """No floor: one empty bin makes ln(q / p) infinite."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    p = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1) / len(reference)
    q = np.bincount(np.searchsorted(edges, current, side="right"), minlength=len(edges) + 1) / len(current)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(((q - p) * np.log(q / p)).sum())


@wrong_answer("p3-monitor.2", diagnosis="a histogram over the reference's range drops them")
def psi_histogram_over_reference_range(reference, current, bins=10, floor=1e-4):
    """np.histogram on edges from the reference's minimum to its maximum: live values outside are not counted."""
    edges = np.quantile(reference, np.linspace(0, 1, bins + 1))
    p = np.histogram(reference, edges)[0] / len(reference)
    q = np.histogram(current, edges)[0] / len(current)
    p, q = np.maximum(p, floor), np.maximum(q, floor)
    return float(((q - p) * np.log(q / p)).sum())


@wrong_answer("p3-monitor.2", diagnosis="not equally wide")
def psi_equal_width_bins(reference, current, bins=10, floor=1e-4):
    """Equal-width bins over the reference's range: the tails get bins holding almost nothing."""
    edges = np.linspace(reference.min(), reference.max(), bins + 1)[1:-1]
    p = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=bins) / len(reference)
    q = np.bincount(np.searchsorted(edges, current, side="right"), minlength=bins) / len(current)
    p, q = np.maximum(p, floor), np.maximum(q, floor)
    return float(((q - p) * np.log(q / p)).sum())


# --------------------------------------------------------------------------- p3-monitor.3 Holm's correction


def flagged(p_values: dict, alpha: float) -> set:
    result = call(drift.drifted_features, p_values, alpha)
    expect(result is not None and all(name in p_values for name in result),
           f"drifted_features returned {result!r}: return the names (keys of p_values) of the flagged features")
    return set(result)


@exercise("p3-monitor.3")
def test_drifted_features_follows_holms_steps():
    p = {"a": 0.03, "b": 0.08, "c": 0.9}
    got = flagged(p, 0.05)
    if "b" in got:
        expect(False, f"alpha = 0.05, p = {p}: b was flagged with p = 0.08, above alpha itself: alpha was multiplied "
                      "by the number of tests; the correction makes each threshold smaller than alpha, never larger")
    expect(not got, f"alpha = 0.05, p = {p}: nothing should be flagged, got {sorted(got)}: a (0.03) is below alpha but "
                    "not below alpha / 3 = 0.0167; three tests at alpha each give three chances of a false alarm: "
                    "no multiple-testing correction. The smallest p-value faces alpha / m")
    p = {"a": 0.011, "b": 0.016, "c": 0.024, "d": 0.2}
    got = flagged(p, 0.05)
    expect(got == {"a", "b", "c"},
           f"alpha = 0.05, p = {p}: expected a, b, c flagged, got {sorted(got)}. Holm's thresholds are "
           "0.05/4 = 0.0125 for the smallest p-value, then 0.05/3, 0.05/2, 0.05/1: only the smallest faces "
           "alpha / m")
    p = {"a": 0.001, "b": 0.03, "c": 0.02, "d": 0.04}
    got = flagged(p, 0.05)
    expect(got == {"a"}, f"alpha = 0.05, p = {p}: expected only a flagged, got {sorted(got)}: c (0.02) is above its "
                         "threshold 0.05/3, so Holm stops there; stop at the first p-value above its threshold, "
                         "and every larger p-value is kept, even d (0.04 < 0.05/1)")


@exercise("p3-monitor.3")
def test_drifted_features_keeps_false_alarms_at_alpha():
    rng = np.random.default_rng(0)
    names = [f"feature_{i}" for i in range(8)]
    trials, alpha = 4000, 0.05
    alarms = sum(bool(flagged(dict(zip(names, rng.uniform(0, 1, 8))), alpha)) for _ in range(trials))
    rate = alarms / trials
    expect(rate <= 0.065, f"on {trials:,} checks of 8 features with no drift (uniform p-values), "
                          f"{100 * rate:.1f}% raised an alarm; at alpha = {alpha} it should be at most about 5%. "
                          + ("Each test at alpha alarms 1 - 0.95^8 = 34% of the time: no multiple-testing "
                             "correction; the smallest p-value must be below alpha / 8" if rate < 0.6 else
                             "alpha was multiplied by the number of tests: the correction makes each threshold "
                             "smaller than alpha, never larger"))
    strong = dict(zip(names, rng.uniform(0, 1, 8)))
    strong["feature_3"] = 1e-9
    expect("feature_3" in flagged(strong, alpha), "one feature with p = 1e-9 among 7 uniform p-values was not flagged: "
                                                  "a p-value below alpha / m is always flagged")


@wrong_answer("p3-monitor.3", diagnosis="no multiple-testing correction")
def holm_without_correction(p_values, alpha):
    """Every feature is tested at alpha: eight chances to raise a false alarm per check."""
    return [name for name, p in p_values.items() if p < alpha]


@wrong_answer("p3-monitor.3", diagnosis="never larger")
def holm_correction_upside_down(p_values, alpha):
    """alpha is multiplied by the number of tests instead of divided."""
    m = len(p_values)
    flagged_names = []
    for k, name in enumerate(sorted(p_values, key=p_values.get)):
        if not p_values[name] < alpha * (m - k):
            break
        flagged_names.append(name)
    return flagged_names


@wrong_answer("p3-monitor.3", diagnosis="stop at the first p-value above its threshold")
def holm_without_stopping(p_values, alpha):
    """Each sorted p-value is compared with its threshold, but the procedure carries on after a failure."""
    m = len(p_values)
    return [name for k, name in enumerate(sorted(p_values, key=p_values.get)) if p_values[name] < alpha / (m - k)]


@wrong_answer("p3-monitor.3", diagnosis="only the smallest faces alpha / m")
def bonferroni_for_every_feature(p_values, alpha):
    """Every p-value is held to alpha / m: safe, but not Holm's procedure, and it misses features that moved."""
    return [name for name, p in p_values.items() if p < alpha / len(p_values)]


# --------------------------------------------------------------------------- p3-monitor.4 reservoir sampling


def offer(values, k: int, seed: int) -> "live.Second":
    """One second of the dashboard, offered ``values`` as latencies one by one; its sample is ``.latencies``."""
    second = live.Second(0, sample_size=k, rng=random.Random(seed))
    for value in values:
        call(second.add_latency, value)
    return second


@exercise("p3-monitor.4")
def test_reservoir_keeps_every_latency_while_there_is_room():
    second = offer([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], k=10, seed=0)
    expect(second.latencies == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
           f"7 latencies offered to a sample of 10 gave {second.latencies}: while there is room, keep each one, "
           "in the order it came")
    expect(second.timed == 7, f"self.timed = {second.timed} after 7 latencies: count every latency offered "
                              "(the n in the chance k/n)")


@exercise("p3-monitor.4")
def test_reservoir_never_grows_past_its_size():
    values = [i / 1000 for i in range(1000)]
    second = offer(values, k=16, seed=1)
    expect(len(second.latencies) == 16, f"1,000 latencies into a sample of 16 left {len(second.latencies)}: once it "
                                        "is full, a latency that is kept replaces one already kept")
    expect(len(set(second.latencies)) == 16 and set(second.latencies) <= set(values),
           "the sample holds values that were never offered, or one twice: replace the kept latency at the "
           "drawn slot")
    expect(second.timed == 1000, f"self.timed = {second.timed} after 1,000 latencies: count every one")


@exercise("p3-monitor.4")
def test_reservoir_gives_early_and_late_latencies_the_same_chance():
    """400 samples of 20 out of 400 latencies: every position should be kept 20 / 400 = 5% of the time."""
    n, k, trials = 400, 20, 400
    kept = np.zeros(n)
    for seed in range(trials):
        for value in offer(range(n), k=k, seed=seed).latencies:
            kept[int(value)] += 1
    share = kept / trials
    early, late = share[: n // 10].mean(), share[-n // 10:].mean()
    expect(early < 0.065, f"the first tenth of the latencies is kept {early:.3f} of the time and the last "
                          f"{late:.3f}, where each should be kept with chance k/n = {k / n:.3f}: once the sample "
                          "is full, the n-th latency must still get its chance k/n (keeping the first ones only "
                          "describes the start of the second, not the second)")
    expect(late < 0.065, f"the last tenth of the latencies is kept {late:.3f} of the time and the first "
                         f"{early:.3f}, where each should be kept with chance k/n = {k / n:.3f}: a new latency "
                         "replaces a kept one with chance k/n, not every time and not with a fixed chance "
                         "(draw slot = randrange(n); replace only when slot < k)")
    expect(0.035 < early and 0.035 < late, f"early {early:.3f}, late {late:.3f}: both should be near {k / n:.3f}")


@wrong_answer("p3-monitor.4", diagnosis="keeping the first ones only")
def reservoir_keeps_the_first(self, seconds):
    """The first k latencies are kept and every later one dropped: the p95 of a second's first moments."""
    self.timed += 1
    if len(self.latencies) < self.sample_size:
        self.latencies.append(seconds)


@wrong_answer("p3-monitor.4", diagnosis="not every time")
def reservoir_always_replaces(self, seconds):
    """Once full, every new latency replaces a random kept one: the sample forgets all but the last moments."""
    self.timed += 1
    if len(self.latencies) < self.sample_size:
        self.latencies.append(seconds)
        return
    self.latencies[self.rng.randrange(self.sample_size)] = seconds


@wrong_answer("p3-monitor.4", diagnosis="not with a fixed chance")
def reservoir_replaces_on_a_coin_flip(self, seconds):
    """Once full, a new latency replaces a random kept one half of the time, however many came before."""
    self.timed += 1
    if len(self.latencies) < self.sample_size:
        self.latencies.append(seconds)
        return
    if self.rng.random() < 0.5:
        self.latencies[self.rng.randrange(self.sample_size)] = seconds
