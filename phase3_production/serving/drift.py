"""Drift detection: is the traffic still like the data the model was trained on?

Labels arrive late or never, so a service watches what it *can* see at once:

* **the inputs**: per image, the mean and standard deviation of each colour
  channel, and a sharpness score (mean absolute difference between
  neighbouring pixels: blur lowers it, noise raises it);
* **the outputs**: the top-class confidence, and the share of each predicted class.

At export, p3-onnx stores reference samples of both: the input features of
training images (what the model learned the world looks like), and the
outputs on the validation split (on training images the answers would be
over-confident, memorised ones).  The service keeps a sliding
window of the last ``window`` requests and, every ``check_every`` requests,
compares it with the reference:

* a **Kolmogorov-Smirnov** test per continuous feature (8 of them), with
  **Holm's** correction for testing 8 at once (:func:`drifted_features`): the
  family alarms when the smallest p-value is below ``alpha / 8``, so the
  chance of a false alarm per check stays below ``alpha``;
* a **chi-square** test of the predicted-class counts against the reference
  class shares, at ``alpha``;
* the **PSI** of each feature, reported for people (0.25 = large shift), not
  used for the alarm.

The alarm is raised when a check fails and cleared when one passes.  Repeated
checks on overlapping windows are not independent, so ``alpha`` is set low
(1e-4 by default): p3-monitor measures the false alarms over 5,000 clean requests.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from phase3_production.serving.stats import chi_square, ks_2samp, psi

INPUT_FEATURES = ("mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "sharpness")
FEATURES = (*INPUT_FEATURES, "confidence")
REFERENCE_NAME = "reference.json"
HISTORY_CHECKS = 1000    # the checks kept for the dashboard's chart; older ones fall off


def image_features(pixels: np.ndarray) -> np.ndarray:
    """The 7 input features of one (3, H, W) image with values in 0..1."""
    grey = pixels.mean(axis=0)
    sharpness = 0.5 * (np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean())
    return np.concatenate([pixels.mean(axis=(1, 2)), pixels.std(axis=(1, 2)), [sharpness]]).astype(np.float32)


def batch_features(images_uint8: np.ndarray) -> np.ndarray:
    """Features of a uint8 (N, 3, H, W) batch: the reference side, computed exactly as the service does."""
    return np.stack([image_features(image.astype(np.float32) / 255.0) for image in images_uint8])


def rgb_features(rgb: np.ndarray) -> np.ndarray:
    """Features of one upload, uint8 (H, W, 3) as decoded: the live side, computed as :func:`batch_features`."""
    return image_features(np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0)


def drifted_features(p_values: dict[str, float], alpha: float) -> list[str]:
    """The features whose test rejects "no drift", with the family-wise error rate held at ``alpha`` (Holm).

    Eight tests at ``alpha`` each would raise a false alarm on clean traffic
    far more often than ``alpha``: up to 8 times as often.  Holm's step-down
    procedure keeps the chance of *any* false rejection at most ``alpha``,
    whatever the dependence between the tests:

    1. sort the m p-values, smallest first: p(1) <= p(2) <= ... <= p(m);
    2. compare p(1) with alpha / m, p(2) with alpha / (m - 1), ..., p(m) with alpha / 1;
    3. reject (flag) each feature in turn while its p-value is below its
       threshold; at the first one that is not, stop: it and every larger
       p-value are kept.

    The first step is Bonferroni's test (alpha / m): the family alarms
    exactly when Bonferroni would, and Holm then flags more of the features
    that moved.  Returns the flagged names (any order); empty when nothing
    drifted.
    """
    # EXERCISE p3-monitor.3: flag drifted features with Holm's correction
    # hint: smallest p-value first, against alpha / m, then alpha / (m - 1), ...; stop at the first one that fails
    m = len(p_values)
    flagged = []
    for k, name in enumerate(sorted(p_values, key=p_values.get)):
        if not p_values[name] < alpha / (m - k):
            break
        flagged.append(name)
    return flagged
    # END EXERCISE


def write_reference(path: Path, train_features: np.ndarray, val_confidence: np.ndarray,
                    val_predicted: np.ndarray, classes: list[str]) -> dict:
    shares = np.bincount(val_predicted, minlength=len(classes)) / len(val_predicted)
    reference = {"features": {name: train_features[:, i].round(6).tolist() for i, name in enumerate(INPUT_FEATURES)},
                 "confidence": np.asarray(val_confidence).round(6).tolist(),
                 "class_shares": shares.round(6).tolist(), "classes": classes,
                 "source": {"features": f"{len(train_features)} training images",
                            "outputs": f"{len(val_confidence)} validation images"}}
    Path(path).write_text(json.dumps(reference))
    return reference


@dataclass
class DriftMonitor:
    reference: dict
    window: int = 200
    check_every: int = 25
    alpha: float = 1e-4
    seen: int = 0
    alarm: bool = False
    last: dict = field(default_factory=dict)
    # (request index, min KS p, chi-square p, alarm) of the last HISTORY_CHECKS checks: bounded, as the service runs for months
    history: deque = field(default_factory=lambda: deque(maxlen=HISTORY_CHECKS))
    failure: dict | None = None                      # the error of the last check, None when it succeeded

    def __post_init__(self):
        self.ref = {name: np.asarray(self.reference["features"][name], float) for name in INPUT_FEATURES}
        self.ref["confidence"] = np.asarray(self.reference["confidence"], float)
        self.shares = np.asarray(self.reference["class_shares"], float)
        self.rows: deque = deque(maxlen=self.window)
        self.classes: deque = deque(maxlen=self.window)

    @classmethod
    def from_file(cls, path: Path, **settings) -> "DriftMonitor":
        return cls(json.loads(Path(path).read_text()), **settings)

    def observe(self, features: np.ndarray, confidence: float, predicted: int) -> None:
        self.rows.append((*features.tolist(), confidence))
        self.classes.append(predicted)
        self.seen += 1
        if len(self.rows) == self.window and self.seen % self.check_every == 0:
            try:
                self.check()
            except Exception as exc:
                self.failure = {"type": type(exc).__name__, "message": str(exc)}
                raise

    def check(self) -> dict:
        current = np.asarray(self.rows, float)
        tests = {}
        for i, name in enumerate(FEATURES):
            statistic, p = ks_2samp(self.ref[name], current[:, i])
            tests[name] = {"ks": statistic, "p_value": p, "psi": psi(self.ref[name], current[:, i])}
        counts = np.bincount(np.asarray(self.classes), minlength=len(self.shares))
        chi2, chi2_p = chi_square(counts, self.shares)
        p_values = {name: test["p_value"] for name, test in tests.items()}
        flagged = sorted(drifted_features(p_values, self.alpha), key=p_values.get)
        threshold = self.alpha / len(FEATURES)      # Holm's first step: the smallest p-value must be below it
        worst = min(p_values, key=p_values.get)
        ks_alarm = bool(flagged)
        class_alarm = chi2_p < self.alpha
        self.alarm = bool(ks_alarm or class_alarm)
        self.last = {"request": self.seen, "alarm": self.alarm, "features": tests,
                     "ks_threshold_bonferroni": threshold, "most_shifted_feature": worst,
                     "drifted_features": flagged,
                     "class_mix": {"chi_square": chi2, "p_value": chi2_p, "threshold": self.alpha,
                                   "counts": counts.tolist()},
                     "reasons": [f"{name} (KS p={p_values[name]:.1e})" for name in flagged]
                     + ([f"predicted-class mix (chi-square p={chi2_p:.1e})"] if class_alarm else [])}
        self.history.append((self.seen, tests[worst]["p_value"], chi2_p, self.alarm))
        self.failure = None
        return self.last

    def state(self) -> dict:
        return {"enabled": True, "window": self.window, "check_every": self.check_every, "alpha": self.alpha,
                "requests_seen": self.seen, "window_filled": len(self.rows), "alarm": self.alarm,
                "last_check": self.last or None, "reference": self.reference.get("source"),
                "failure": self.failure}

    def dashboard(self) -> dict:
        """What ``/dashboard`` draws: the alarm, the last check's p-value and PSI per test, every kept check."""
        last = self.last or {}
        tests = last.get("features", {})
        p_values = {name: test["p_value"] for name, test in tests.items()}
        if last:
            p_values["class_mix"] = last["class_mix"]["p_value"]
        return {"enabled": True, "alarm": self.alarm, "requests_seen": self.seen, "window": self.window,
                "alpha": self.alpha, "reasons": last.get("reasons", []), "p_values": p_values,
                "psi": {name: test["psi"] for name, test in tests.items()},
                "threshold": last.get("ks_threshold_bonferroni"),
                "history": [{"request": r, "min_ks_p": ks, "class_mix_p": chi, "alarm": alarm}
                            for r, ks, chi, alarm in self.history],
                "failure": self.failure}

    def reset(self) -> None:
        self.rows.clear()
        self.classes.clear()
        self.alarm, self.last, self.failure = False, {}, None
