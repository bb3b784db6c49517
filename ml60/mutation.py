"""Mutation testing of the modules whose correctness the course teaches: ``python -m ml60.mutation``.

A test suite that passes says little until it is shown to *fail* when the code
is wrong.  Mutation testing makes the wrong code: ``mutmut`` changes one small
thing at a time in a module (``<`` becomes ``<=``, ``alpha / m`` becomes
``alpha * m``, a ``break`` becomes a ``continue``, a constant moves by one) and
runs the tests that cover it.  A mutant the tests catch is *killed*; one they
let through has *survived*: either a test is missing, or the change makes no
difference that any caller could see (an *equivalent* mutant, listed below
with the reason it cannot be killed).

``make mutate`` also runs the exercise mutants (``python -m ml60 mutate``:
each exercise's stub and shipped wrong answers against its checks).  This
runner is the other half: machine-made mutants of the reference modules
themselves, each module against the fast unit tests that cover it (a slow
milestone run is never part of a mutant's test run, so each mutant costs
seconds).

How it works, per module (``TARGETS``):

1. the project is copied into a scratch folder (mutmut writes ``mutants/``
   beside the code it mutates; the working tree is left alone);
2. a ``[tool.mutmut]`` section naming that module and its tests is written
   into the copy's ``pyproject.toml``;
3. ``mutmut run`` (restricted to the listed functions where a module also
   holds code it does not teach), then ``mutmut results`` and ``mutmut show``
   for every mutant that was not killed.

The summary goes to ``benchmarks/results/mutation.json`` (a run over some
modules replaces their entries and keeps the others) and is printed as a table.

    python -m ml60.mutation                  every module
    python -m ml60.mutation drift stats      some of them (names from TARGETS)
    python -m ml60.mutation --list           the modules, their tests, and the known equivalent mutants
    python -m ml60.mutation --report         judge and print the recorded results again, run nothing

The share of mutants killed must reach ``TARGET_SCORE`` (90%) over all the
modules, or the command exits with 1.  The table also gives the share
among the mutants a test *can* kill (``EQUIVALENT`` lists the others, each
with its reason), so that a reader sees which of the survivors need a test.

Needs ``mutmut`` 3.x (``pip install 'mutmut>=3.8,<4'``).  Not part of the
pytest run: a full pass takes tens of minutes on two cores.
"""

from __future__ import annotations

import argparse
import ast
import datetime as _dt
import json
import os
import re
import shutil
# bandit B404: git and mutmut run with fixed argv lists, never through a shell
import subprocess  # nosec B404
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common.text_table import text_table

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "mutation.json"
PACKAGES = ("common", "ml60", "phase1_foundation", "phase2_depth", "phase3_production")
TARGET_SCORE = 0.90     # the share of mutants the tests must kill, over all modules together


@dataclass(frozen=True)
class Target:
    """One module under mutation, and the fast tests that must catch its mutants.

    ``tests`` are pytest arguments (files, and ``-k`` to leave out the slow
    tests in them).  ``functions`` restricts the mutants to those functions
    (``Class.method`` for a method) when the file also holds code the course
    does not teach; empty means the whole file.
    """

    name: str
    source: str
    tests: tuple[str, ...]
    functions: tuple[str, ...] = ()
    note: str = ""


TARGETS = (
    Target("numpy_net", "phase1_foundation/numpy_net.py",
           ("tests/test_p1_numpy.py", "tests/exercises/test_p1_numpy.py", "tests/test_check_mutants.py::TestNumpyNet",
            "-k", "not quick_run and not real_mnist"),
           note="p1-numpy: the 2-layer net by hand, its gradient check"),
    Target("schedules", "common/schedules.py",
           ("tests/test_trainer.py::test_schedule_shapes", "tests/test_check_mutants.py::TestSchedules"),
           note="the learning-rate schedules: warm-up, step, cosine, one-cycle"),
    Target("augment", "common/augment.py",
           ("tests/test_loaders.py", "tests/exercises/test_p2_data.py", "tests/test_check_mutants.py::TestAugment",
            "tests/test_trainer.py::test_flip_test_time_augmentation_averages_an_image_and_its_mirror"),
           note="batch augmentation (crop, flip, cutout), normalisation, flip test-time augmentation"),
    Target("p2_augment", "phase2_depth/data.py",
           ("tests/test_p2_data.py", "tests/exercises/test_p2_data.py", "tests/test_check_mutants.py::TestP2Data",
            "-k", "not quick_run and not real_cifar10 and not both_pipelines and not official_python_batches"),
           functions=("stratified_split", "channel_stats", "random_crop", "random_flip", "CifarAugment.__call__"),
           note="p2-data: the split, the channel statistics, CIFAR-10's crop and flip"),
    Target("evaluation", "phase2_depth/evaluation.py",
           ("tests/test_p2_eval_search.py::test_scores_on_known_predictions",
            "tests/test_p2_eval_search.py::test_calibration_error_is_zero_when_confidence_matches_accuracy",
            "tests/exercises/test_p2_eval.py", "tests/test_check_mutants.py::TestEvaluation"),
           functions=("scores", "confusion_matrix", "class_scores", "classification_report",
                      "classification_report_text", "most_confused", "expected_calibration_error"),
           note="p2-eval: confusion matrix, per-class scores, calibration (not the two plots)"),
    Target("drift", "phase3_production/serving/drift.py",
           ("tests/test_p3_monitor.py", "tests/exercises/test_p3_monitor.py", "tests/test_check_mutants.py::TestDrift",
            "-k", "not feedback and not reference_file and not milestone"),
           note="p3-monitor: the drift monitor, Holm's correction"),
    Target("stats", "phase3_production/serving/stats.py",
           ("tests/test_p3_monitor.py", "tests/exercises/test_p3_monitor.py", "tests/test_check_mutants.py::TestStats",
            "-k", "not feedback and not reference_file and not milestone"),
           note="p3-monitor: KS, chi-square and PSI in plain NumPy"),
    Target("onnx_parity", "phase3_production/onnx_export.py",
           ("tests/exercises/test_p3_onnx.py", "tests/test_check_mutants.py::TestParity", "-k", "parity"),
           functions=("parity",),
           note="p3-onnx: the parity check between PyTorch and ONNX Runtime"),
    Target("images", "phase3_production/serving/images.py",
           ("tests/exercises/test_p3_serve.py", "tests/test_p3_serve_decoding.py",
            "tests/test_check_mutants.py::TestImages",
            "-k", "not bomb_decodes_beside"),
           note="p3-serve: refusing a hostile upload, pricing its decode, preprocessing as in training"),
    Target("limits", "phase3_production/serving/limits.py",
           ("tests/test_p3_serve_limits.py", "tests/test_check_mutants.py::TestLimits"),
           note="p3-serve: request id, body limit and deadline, the last-resort 500"),
)


def _same(module: str, reason: str, *changes: tuple[str, str]) -> dict[tuple[str, str, str], str]:
    """``EQUIVALENT`` entries: the (original, mutated) lines of ``module`` that no test here can tell apart."""
    return {(module, original, mutated): reason for original, mutated in changes}


# Mutants no test here can kill, each with the reason: equivalent (no caller can tell them from the original),
# or, for a device argument, killable only on a GPU.  Keyed by the module and the exact original and mutated
# text, so that once a line changes its mutants drop out of this list and are judged afresh.  They still count
# as survivors in the score; the table shows the share without them beside it.
EQUIVALENT: dict[tuple[str, str, str], str] = {
    **_same('phase1_foundation/numpy_net.py',
             'predictions do not depend on the batch size',
             ('def predict(params: dict[str, np.ndarray], x: np.ndarray, batch_size: int = 2000) -> np.ndarray:',
              'def predict(params: dict[str, np.ndarray], x: np.ndarray, batch_size: int = 2001) -> np.ndarray:'),
             ),
    **_same('phase1_foundation/numpy_net.py',
             'NumPy reads astype(None) as astype(float64)',
             ('p64 = {k: v.astype(np.float64) for k, v in params.items()}',
              'p64 = {k: v.astype(None) for k, v in params.items()}'),
             ('x64 = x.astype(np.float64)',
              'x64 = x.astype(None)'),
             ('_, ours = loss_and_grads(p64, x.astype(np.float64), y)',
              '_, ours = loss_and_grads(p64, x.astype(None), y)'),
             ),
    **_same('phase1_foundation/numpy_net.py',
             "NumPy takes any negative size as 'infer this axis'",
             ('flat = p64[name].reshape(-1)  # a view: writing into it changes p64[name]',
              'flat = p64[name].reshape(-2)  # a view: writing into it changes p64[name]'),
             ('errors[name] = relative_error(analytic[name].reshape(-1)[coords], numeric)',
              'errors[name] = relative_error(analytic[name].reshape(-2)[coords], numeric)'),
             ),
    **_same('phase1_foundation/numpy_net.py',
             'rng.choice treats replace=None as False',
             ('coords = rng.choice(flat.size, size=min(samples_per_param, flat.size), replace=False)',
              'coords = rng.choice(flat.size, size=min(samples_per_param, flat.size), replace=None)'),
             ),
    **_same('common/schedules.py',
             'floor division of the float quotient gives the same whole number of epochs',
             ('return step_gamma ** ((step // steps_per_epoch) // step_every)',
              'return step_gamma ** ((step / steps_per_epoch) // step_every)'),
             ),
    **_same('common/augment.py',
             'the device argument only matters on a GPU: on the CPU every tensor is already where it goes',
             ('dy, dx = random_offsets(len(batch), pad, generator, batch.device)',
              'dy, dx = random_offsets(len(batch), pad, generator, None)'),
             ('flip = torch.rand(len(batch), generator=generator, device=batch.device) < p',
              'flip = torch.rand(len(batch), generator=generator, device=None) < p'),
             ('dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=device)',
              'dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=None)'),
             ('flip = torch.rand(len(batch), generator=generator, device=batch.device) < p',
              'flip = torch.rand(len(batch), generator=generator, ) < p'),
             ('top = torch.randint(0, h, (b,), generator=generator, device=batch.device)[:, None, None] - size // 2',
              'top = torch.randint(0, h, (b,), generator=generator, device=None)[:, None, None] - size // 2'),
             ('rows = (dy[:, None] + torch.arange(h, device=batch.device))[:, None, :, None]',
              'rows = (dy[:, None] + torch.arange(h, device=None))[:, None, :, None]'),
             ('dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=device)',
              'dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, )'),
             ('rows = (dy[:, None] + torch.arange(h, device=batch.device))[:, None, :, None]',
              'rows = (dy[:, None] + torch.arange(h, ))[:, None, :, None]'),
             ('mean_t = torch.as_tensor(mean, dtype=dtype, device=batch.device).view(1, -1, 1, 1)',
              'mean_t = torch.as_tensor(mean, dtype=dtype, device=None).view(1, -1, 1, 1)'),
             ('top = torch.randint(0, h, (b,), generator=generator, device=batch.device)[:, None, None] - size // 2',
              'top = torch.randint(0, h, (b,), generator=generator, )[:, None, None] - size // 2'),
             ('mean_t = torch.as_tensor(mean, dtype=dtype, device=batch.device).view(1, -1, 1, 1)',
              'mean_t = torch.as_tensor(mean, dtype=dtype, ).view(1, -1, 1, 1)'),
             ('dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=device)',
              'dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=None)'),
             ('left = torch.randint(0, w, (b,), generator=generator, device=batch.device)[:, None, None] - size // 2',
              'left = torch.randint(0, w, (b,), generator=generator, device=None)[:, None, None] - size // 2'),
             ('dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=device)',
              'dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, )'),
             ('left = torch.randint(0, w, (b,), generator=generator, device=batch.device)[:, None, None] - size // 2',
              'left = torch.randint(0, w, (b,), generator=generator, )[:, None, None] - size // 2'),
             ('std_t = torch.as_tensor(std, dtype=dtype, device=batch.device).view(1, -1, 1, 1)',
              'std_t = torch.as_tensor(std, dtype=dtype, device=None).view(1, -1, 1, 1)'),
             ('cols = (dx[:, None] + torch.arange(w, device=batch.device))[:, None, None, :]',
              'cols = (dx[:, None] + torch.arange(w, device=None))[:, None, None, :]'),
             ('ys = torch.arange(h, device=batch.device)[None, :, None]',
              'ys = torch.arange(h, device=None)[None, :, None]'),
             ('cols = (dx[:, None] + torch.arange(w, device=batch.device))[:, None, None, :]',
              'cols = (dx[:, None] + torch.arange(w, ))[:, None, None, :]'),
             ('std_t = torch.as_tensor(std, dtype=dtype, device=batch.device).view(1, -1, 1, 1)',
              'std_t = torch.as_tensor(std, dtype=dtype, ).view(1, -1, 1, 1)'),
             ('ys = torch.arange(h, device=batch.device)[None, :, None]',
              'ys = torch.arange(h, )[None, :, None]'),
             ('xs = torch.arange(w, device=batch.device)[None, None, :]',
              'xs = torch.arange(w, device=None)[None, None, :]'),
             ('xs = torch.arange(w, device=batch.device)[None, None, :]',
              'xs = torch.arange(w, )[None, None, :]'),
             ),
    **_same('common/augment.py',
             'broadcasting adds the leading axis: (C, 1, 1) acts as (1, C, 1, 1)',
             ('mean_t = torch.as_tensor(mean, dtype=dtype, device=batch.device).view(1, -1, 1, 1)',
              'mean_t = torch.as_tensor(mean, dtype=dtype, device=batch.device).view(-1, 1, 1)'),
             ('std_t = torch.as_tensor(std, dtype=dtype, device=batch.device).view(1, -1, 1, 1)',
              'std_t = torch.as_tensor(std, dtype=dtype, device=batch.device).view(-1, 1, 1)'),
             ),
    **_same('common/augment.py',
             'torch.randint(high, size) draws from 0 anyway',
             ('dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=device)',
              'dy = torch.randint(2 * pad + 1, (n,), generator=generator, device=device)'),
             ('top = torch.randint(0, h, (b,), generator=generator, device=batch.device)[:, None, None] - size // 2',
              'top = torch.randint(h, (b,), generator=generator, device=batch.device)[:, None, None] - size // 2'),
             ('dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=device)',
              'dx = torch.randint(2 * pad + 1, (n,), generator=generator, device=device)'),
             ('left = torch.randint(0, w, (b,), generator=generator, device=batch.device)[:, None, None] - size // 2',
              'left = torch.randint(w, (b,), generator=generator, device=batch.device)[:, None, None] - size // 2'),
             ),
    **_same('common/augment.py',
             'differs only when a uniform float32 draw equals p exactly (about 2**-24 per image)',
             ('flip = torch.rand(len(batch), generator=generator, device=batch.device) < p',
              'flip = torch.rand(len(batch), generator=generator, device=batch.device) <= p'),
             ),
    **_same('common/augment.py',
             'whole pixel rows compared with c - 2.5 are the rows compared with c - 2',
             ('top = torch.randint(0, h, (b,), generator=generator, device=batch.device)[:, None, None] - size // 2',
              'top = torch.randint(0, h, (b,), generator=generator, device=batch.device)[:, None, None] - size / 2'),
             ('left = torch.randint(0, w, (b,), generator=generator, device=batch.device)[:, None, None] - size // 2',
              'left = torch.randint(0, w, (b,), generator=generator, device=batch.device)[:, None, None] - size / 2'),
             ),
    **_same('phase2_depth/data.py',
             'the device argument only matters on a GPU: on the CPU every tensor is already where it goes',
             ('flip = torch.rand(len(batch), generator=generator, device=batch.device) < p',
              'flip = torch.rand(len(batch), generator=generator, device=None) < p'),
             ('dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=batch.device)',
              'dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=None)'),
             ('flip = torch.rand(len(batch), generator=generator, device=batch.device) < p',
              'flip = torch.rand(len(batch), generator=generator, ) < p'),
             ('dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=batch.device)',
              'dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, )'),
             ('dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=batch.device)',
              'dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=None)'),
             ('dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=batch.device)',
              'dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, )'),
             ('rows = (dy[:, None] + torch.arange(h, device=batch.device))[:, None, :, None]',
              'rows = (dy[:, None] + torch.arange(h, device=None))[:, None, :, None]'),
             ('rows = (dy[:, None] + torch.arange(h, device=batch.device))[:, None, :, None]',
              'rows = (dy[:, None] + torch.arange(h, ))[:, None, :, None]'),
             ('cols = (dx[:, None] + torch.arange(w, device=batch.device))[:, None, None, :]',
              'cols = (dx[:, None] + torch.arange(w, device=None))[:, None, None, :]'),
             ('cols = (dx[:, None] + torch.arange(w, device=batch.device))[:, None, None, :]',
              'cols = (dx[:, None] + torch.arange(w, ))[:, None, None, :]'),
             ),
    **_same('phase2_depth/data.py',
             'torch.randint(high, size) draws from 0 anyway',
             ('dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=batch.device)',
              'dy = torch.randint(2 * pad + 1, (n,), generator=generator, device=batch.device)'),
             ('dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=batch.device)',
              'dx = torch.randint(2 * pad + 1, (n,), generator=generator, device=batch.device)'),
             ),
    **_same('phase2_depth/data.py',
             'differs only when a uniform float32 draw equals p exactly (about 2**-24 per image)',
             ('flip = torch.rand(len(batch), generator=generator, device=batch.device) < p',
              'flip = torch.rand(len(batch), generator=generator, device=batch.device) <= p'),
             ),
    **_same('phase3_production/serving/drift.py',
             'the values are Python floats (or float64 already): NumPy makes float64 either way',
             ('self.ref = {name: np.asarray(self.reference["features"][name], float) for name in INPUT_FEATURES}',
              'self.ref = {name: np.asarray(self.reference["features"][name], None) for name in INPUT_FEATURES}'),
             ('current = np.asarray(self.rows, float)',
              'current = np.asarray(self.rows, None)'),
             ('self.ref = {name: np.asarray(self.reference["features"][name], float) for name in INPUT_FEATURES}',
              'self.ref = {name: np.asarray(self.reference["features"][name], ) for name in INPUT_FEATURES}'),
             ('current = np.asarray(self.rows, float)',
              'current = np.asarray(self.rows, )'),
             ('self.ref["confidence"] = np.asarray(self.reference["confidence"], float)',
              'self.ref["confidence"] = np.asarray(self.reference["confidence"], None)'),
             ('self.ref["confidence"] = np.asarray(self.reference["confidence"], float)',
              'self.ref["confidence"] = np.asarray(self.reference["confidence"], )'),
             ('self.shares = np.asarray(self.reference["class_shares"], float)',
              'self.shares = np.asarray(self.reference["class_shares"], None)'),
             ('self.shares = np.asarray(self.reference["class_shares"], float)',
              'self.shares = np.asarray(self.reference["class_shares"], )'),
             ),
    **_same('phase3_production/serving/drift.py',
             "np.diff's default axis is the last one: 1 here",
             ('sharpness = 0.5 * (np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean())',
              'sharpness = 0.5 * (np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, )).mean())'),
             ),
    **_same('phase3_production/serving/stats.py',
             'x = 0 then takes the next branch, x < 0.3, which also returns 1',
             ('if x <= 0:',
              'if x < 0:'),
             ),
    **_same('phase3_production/serving/stats.py',
             'the empirical CDFs only compare and count values: any real dtype gives the same D',
             ('a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))',
              'a, b = np.sort(np.asarray(a, None)), np.sort(np.asarray(b, float))'),
             ('a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))',
              'a, b = np.sort(np.asarray(a, )), np.sort(np.asarray(b, float))'),
             ('a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))',
              'a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, None))'),
             ('a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))',
              'a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, ))'),
             ),
    **_same('phase3_production/serving/stats.py',
             'integer counts give the same statistic: the arithmetic with the float expected counts is float64',
             ('observed = np.asarray(observed, float)',
              'observed = np.asarray(observed, None)'),
             ('observed = np.asarray(observed, float)',
              'observed = np.asarray(observed, )'),
             ),
    **_same('phase3_production/serving/stats.py',
             'k - 1 and k + 1 have the same parity',
             ('total = sum((-1) ** (k - 1) * math.exp(-2 * k * k * x * x) for k in range(1, 101))',
              'total = sum((-1) ** (k + 1) * math.exp(-2 * k * k * x * x) for k in range(1, 101))'),
             ),
    **_same('phase3_production/serving/stats.py',
             'np.maximum with the float floor makes the shares float64 either way',
             ('share = np.maximum(np.asarray(expected_share, float), floor)',
              'share = np.maximum(np.asarray(expected_share, None), floor)'),
             ('share = np.maximum(np.asarray(expected_share, float), floor)',
              'share = np.maximum(np.asarray(expected_share, ), floor)'),
             ),
    **_same('phase3_production/serving/stats.py',
             'near z = a + 1 the series and the continued fraction agree to about 1e-15',
             ('if z < a + 1:   # series for the lower function P, then Q = 1 - P',
              'if z <= a + 1:   # series for the lower function P, then Q = 1 - P'),
             ('if z < a + 1:   # series for the lower function P, then Q = 1 - P',
              'if z < a + 2:   # series for the lower function P, then Q = 1 - P'),
             ),
    **_same('phase3_production/serving/stats.py',
             'the 101st term is below exp(-2 * 101**2 * 0.09) = 1e-797: zero in floating point',
             ('total = sum((-1) ** (k - 1) * math.exp(-2 * k * k * x * x) for k in range(1, 101))',
              'total = sum((-1) ** (k - 1) * math.exp(-2 * k * k * x * x) for k in range(1, 102))'),
             ),
    **_same('phase3_production/serving/stats.py',
             'the loop stops on convergence within tens of steps',
             ('for n in range(1, 1000):',
              'for n in range(1, 1001):'),
             ('for i in range(1, 1000):',
              'for i in range(1, 1001):'),
             ),
    **_same('phase3_production/serving/stats.py',
             "the reference's largest value always lands in the top bin: its counts already have every bin",
             ('p = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1) / len(reference)',
              'p = np.bincount(np.searchsorted(edges, reference, side="right"), ) / len(reference)'),
             ('p = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1) / len(reference)',
              'p = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) - 1) / len(reference)'),
             ),
    **_same('phase3_production/serving/stats.py',
             'for x >= 0.3 the converged series is below 1: the clip at 1 never acts',
             ('return float(min(1.0, max(0.0, 2 * total)))',
              'return float(min(2.0, max(0.0, 2 * total)))'),
             ),
    **_same('phase3_production/serving/stats.py',
             'a term exactly at the tolerance: the sum is converged either way',
             ('if term < total * 1e-15:',
              'if term <= total * 1e-15:'),
             ),
    **_same('phase3_production/serving/stats.py',
             "Lentz's start value is 'infinite' either way: a_n / c vanishes in the first step",
             ('c, d = 1.0 / tiny, 1.0 / b',
              'c, d = 2.0 / tiny, 1.0 / b'),
             ),
    **_same('phase3_production/serving/stats.py',
             'the guard against a zero denominator never fires for these arguments (|d|, |c| far above 1e-300)',
             ('d = tiny if abs(d) < tiny else d',
              'd = tiny if (abs(d) < tiny) and False else d'),
             ('d = tiny if abs(d) < tiny else d',
              'd = tiny if abs(d) <= tiny else d'),
             ('c = tiny if abs(c) < tiny else c',
              'c = tiny if (abs(c) < tiny) and False else c'),
             ('c = tiny if abs(c) < tiny else c',
              'c = tiny if abs(c) <= tiny else c'),
             ),
    **_same('phase3_production/serving/stats.py',
             'without the early stop the loop runs to its cap, where h no longer changes: same value, more steps',
             ('if abs(delta - 1.0) < 1e-15:',
              'if abs(delta + 1.0) < 1e-15:'),
             ('if abs(delta - 1.0) < 1e-15:',
              'if abs(delta - 2.0) < 1e-15:'),
             ('if abs(delta - 1.0) < 1e-15:',
              'if abs(delta - 1.0) <= 1e-15:'),
             ),
    **_same('phase3_production/serving/stats.py',
             'the continued fraction is used for z >= a + 1, where Q is well below 1: the clip never acts',
             ('return float(min(1.0, math.exp(log_prefix) * h))',
              'return float(min(2.0, math.exp(log_prefix) * h))'),
             ),
    **_same('phase3_production/serving/images.py',
             'a missing tag then gives None, which is not an int: the answer is 1 either way',
             ('value = image.getexif().get(EXIF_ORIENTATION, 1)',
              'value = image.getexif().get(EXIF_ORIENTATION, None)'),
             ('value = image.getexif().get(EXIF_ORIENTATION, 1)',
              'value = image.getexif().get(EXIF_ORIENTATION, )'),
             ),
    **_same('phase3_production/serving/images.py',
             'the longest signature tested is 12 bytes',
             ('return next((name for name, test in SIGNATURES if test(data[:16])), None)',
              'return next((name for name, test in SIGNATURES if test(data[:17])), None)'),
             ),
    **_same('phase3_production/serving/images.py',
             "None is resize's default reducing_gap",
             ('image = image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=None)',
              'image = image.resize((width, height), Image.Resampling.BILINEAR, )'),
             ),
    **_same('phase3_production/serving/images.py',
             'to_8_bits has already turned a PA image into RGBA',
             ('if image.mode in ("RGBA", "LA", "PA"):',
              'if image.mode in ("RGBA", "LA", "XXPAXX"):'),
             ('if image.mode in ("RGBA", "LA", "PA"):',
              'if image.mode in ("RGBA", "LA", "pa"):'),
             ),
    **_same('phase3_production/serving/images.py',
             'only the low 14 bits are kept, and & gives the same low bits for a negative number',
             ('width, height = struct.unpack("<HH", data[26:30])',
              'width, height = struct.unpack("<hh", data[26:30])'),
             ('bits = struct.unpack("<I", data[21:25])[0]',
              'bits = struct.unpack("<i", data[21:25])[0]'),
             ),
    **_same('phase3_production/serving/images.py',
             'Pillow converts a palette image through its palette, which is RGB, whatever the mode name says',
             ('return image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")',
              'return image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "XXRGBXX")'),
             ('return image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")',
              'return image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "rgb")'),
             ),
    **_same('phase3_production/serving/limits.py',
             "with exactly 0 s left, asyncio.wait(timeout=0) finds nothing done: 'timeout' either way",
             ('if seconds_left <= 0:',
              'if seconds_left < 0:'),
             ),
    **_same('phase3_production/serving/limits.py',
             'None is falsy, as False is',
             ('sent = False',
              'sent = None'),
             ('if not message.get("more_body", False):',
              'if not message.get("more_body", None):'),
             ('if not message.get("more_body", False):',
              'if not message.get("more_body", ):'),
             ),
    **_same('phase3_production/serving/limits.py',
             'codec names are not case-sensitive',
             ('text = value.decode("latin-1")',
              'text = value.decode("LATIN-1")'),
             ),
    **_same('phase3_production/serving/limits.py',
             'refuse answers an outcome it does not name with the 413, as it does too_large',
             ('return Body("too_large")      # refused before a byte is read (a malformed length: the server\'s job)',
              "return Body(None)      # refused before a byte is read (a malformed length: the server's job)"),
             ('return Body("too_large")      # refused before a byte is read (a malformed length: the server\'s job)',
              'return Body("XXtoo_largeXX")      # refused before a byte is read (a malformed length: the server\'s job)'),
             ('return Body("too_large")      # refused before a byte is read (a malformed length: the server\'s job)',
              'return Body("TOO_LARGE")      # refused before a byte is read (a malformed length: the server\'s job)'),
             ('return Body("too_large", reading_started=True, more_to_come=message.get("more_body", False))',
              'return Body(None, reading_started=True, more_to_come=message.get("more_body", False))'),
             ('return Body("too_large", reading_started=True, more_to_come=message.get("more_body", False))',
              'return Body("XXtoo_largeXX", reading_started=True, more_to_come=message.get("more_body", False))'),
             ('return Body("too_large", reading_started=True, more_to_come=message.get("more_body", False))',
              'return Body("TOO_LARGE", reading_started=True, more_to_come=message.get("more_body", False))'),
             ),
    **_same('phase3_production/serving/limits.py',
             'a disconnect message has no more_body, so the next line ends the loop anyway (this check only says why)',
             ('if message["type"] == "http.disconnect":',
              'if message["type"] == "XXhttp.disconnectXX":'),
             ('if message["type"] == "http.disconnect":',
              'if message["type"] == "HTTP.DISCONNECT":'),
             ),
    **_same('phase3_production/serving/limits.py',
             'reading_started is only read for a body over the limit',
             ('return Body(message, reading_started=True)',
              'return Body(message, reading_started=None)'),
             ('return Body(message, reading_started=True)',
              'return Body(message, )'),
             ('return Body(message, reading_started=True)',
              'return Body(message, reading_started=False)'),
             ('return Body("disconnected", reading_started=True)',
              'return Body("disconnected", reading_started=None)'),
             ('return Body("disconnected", reading_started=True)',
              'return Body("disconnected", )'),
             ('return Body("disconnected", reading_started=True)',
              'return Body("disconnected", reading_started=False)'),
             ('return Body("complete", b"".join(chunks), reading_started=True)',
              'return Body("complete", b"".join(chunks), reading_started=None)'),
             ('return Body("complete", b"".join(chunks), reading_started=True)',
              'return Body("complete", b"".join(chunks), )'),
             ('return Body("complete", b"".join(chunks), reading_started=True)',
              'return Body("complete", b"".join(chunks), reading_started=False)'),
             ),
    **_same('phase3_production/serving/limits.py',
             'a missing Expect header is not 100-continue either way',
             ('expecting = (header(scope, b"expect") or b"").lower() == b"100-continue" and not body.reading_started',
              'expecting = (header(scope, b"expect") or b"XXXX").lower() == b"100-continue" and not body.reading_started'),
             ),
}


@dataclass
class Survivor:
    """A mutant the tests did not kill: its name, mutmut's verdict, and the change it made."""

    mutant: str
    status: str
    line: int | None
    original: str
    mutated: str

    def as_dict(self) -> dict:
        return {"mutant": self.mutant, "status": self.status, "line": self.line, "original": self.original,
                "mutated": self.mutated}


@dataclass
class Outcome:
    target: Target
    counts: dict[str, int] = field(default_factory=dict)
    survivors: list[Survivor] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def caught(self) -> int:
        """Killed by a failing test, or by a test that ran past its time limit (the mutant looped or stalled)."""
        return self.counts.get("killed", 0) + self.counts.get("timeout", 0)

    def as_dict(self) -> dict:
        t = self.target
        return {"module": t.source, "functions": list(t.functions) or "all", "tests": list(t.tests), "note": t.note,
                "mutants": self.total, "killed": self.caught, "survived": self.total - self.caught,
                "statuses": self.counts, "seconds": round(self.seconds, 1),
                "not_killed": [s.as_dict() for s in self.survivors]}


class MutationError(RuntimeError):
    """mutmut could not run, or a module's tests fail before any mutant is tried."""


# --------------------------------------------------------------------------- the scratch copy and mutmut's config


def project_files(root: Path = ROOT) -> list[str]:
    """The project's files as git sees them: tracked, plus untracked ones that are not ignored."""
    # bandit B603 B607: a fixed git argv, no shell; git from PATH, as a developer runs it
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=root, capture_output=True,  # nosec B603 B607
                            text=True)
    if listed.returncode != 0:
        raise MutationError(f"cannot list the project's files with git in {root}: {listed.stderr.strip()}")
    return [name for name in listed.stdout.splitlines() if (root / name).is_file()]


def copy_project(work: Path, root: Path = ROOT) -> None:
    """Copy the project (code, tests, pyproject.toml) into ``work``, which mutmut is then free to fill."""
    for name in project_files(root):
        target = work / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)


def mutmut_config(target: Target) -> str:
    """The ``[tool.mutmut]`` section for one module: what to mutate, which tests judge it, how to run them.

    * ``source_paths``: every package is copied into ``mutants/``, so the
      tests import the mutated module and never the working tree's;
    * ``only_mutate``: the one module;
    * ``pytest_add_cli_args_test_selection``: its fast tests.  mutmut first
      runs them once, recording which test calls which function, and then
      runs for each mutant only the tests that reach its function;
    * ``process_isolation = "forkserver"``: each mutant's tests run in a
      process forked from a clean server, not from one that already ran
      torch's thread pools (forking those can hang);
    * no git change detection: the scratch copy is not a repository.
    """
    lines = ["[tool.mutmut]",
             f"source_paths = {json.dumps(list(PACKAGES))}",
             f"only_mutate = {json.dumps([target.source])}",
             f"pytest_add_cli_args_test_selection = {json.dumps(list(target.tests))}",
             'pytest_add_cli_args = ["-p", "no:cacheprovider"]',
             'process_isolation = "forkserver"',
             "use_git_change_detection = false"]
    return "\n".join(lines) + "\n"


def with_mutmut_section(pyproject: str, section: str) -> str:
    """``pyproject`` with any ``[tool.mutmut]`` section replaced by ``section``."""
    kept = re.sub(r"(?ms)^\[tool\.mutmut\]\n.*?(?=^\[|\Z)", "", pyproject)
    return kept.rstrip("\n") + "\n\n" + section


def module_name(source: str) -> str:
    return source.removesuffix(".py").replace("/", ".")


def mutant_globs(target: Target) -> list[str]:
    """mutmut's names for the mutants of ``target.functions``: ``module.x_func__mutmut_N``, and for a method
    ``module.xǁClassǁmethod__mutmut_N``; empty (every mutant) when no functions are named."""
    globs = []
    for function in target.functions:
        owner, _, method = function.rpartition(".")
        name = f"xǁ{owner}ǁ{method}" if owner else f"x_{method}"
        globs.append(f"{module_name(target.source)}.{name}__mutmut_*")
    return globs


# --------------------------------------------------------------------------- running mutmut and reading its verdicts


def mutmut(work: Path, args: list[str], log, *, timeout_s: float | None = None) -> subprocess.CompletedProcess:
    """``python -m mutmut ARGS`` in ``work``, its output appended to ``log`` (and returned)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", ML60_OFFLINE="1", PYTHONHASHSEED="0")
    env.pop("ML60_DATA_DIR", None)      # unit tests only: never the real-data tests
    # bandit B603: this Python running mutmut with the runner's own arguments; no shell
    done = subprocess.run([sys.executable, "-m", "mutmut", *args], cwd=work, env=env, capture_output=True,  # nosec B603
                          text=True, timeout=timeout_s)
    log.write(f"$ mutmut {' '.join(args)}  (exit {done.returncode})\n{done.stdout}{done.stderr}\n")
    log.flush()
    return done


def parse_results(text: str) -> dict[str, str]:
    """``mutmut results --all true`` lines (``    name: status``) -> ``{mutant name: status}``."""
    verdicts = {}
    for line in text.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and "__mutmut_" in name:
            verdicts[name] = status.strip()
    return verdicts


def function_start(source_text: str, mutant: str) -> int | None:
    """The first line (decorators included) of the function a mutant belongs to, in the original file."""
    key = mutant.rsplit(".", 1)[-1].rsplit("__mutmut_", 1)[0]
    owner, method = (key[2:].split("ǁ", 1) if key.startswith("xǁ") else (None, key.removeprefix("x_")))
    for node in ast.walk(ast.parse(source_text)):
        if owner is not None and not (isinstance(node, ast.ClassDef) and node.name == owner):
            continue
        body = node.body if owner is not None else [node]
        for item in body:
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name == method:
                return min([item.lineno] + [d.lineno for d in item.decorator_list])
        if owner is not None:
            return None
    return None


def describe(diff: str, start: int | None) -> tuple[int | None, str, str]:
    """(file line, original text, mutated text) of the first change in ``mutmut show``'s diff of one function.

    The diff's hunk header counts lines from the function's first line, so
    the file line is that count plus the function's start, less one.
    """
    offset, original, mutated = None, [], []
    for line in diff.splitlines():
        header = re.match(r"^@@ -(\d+)", line)
        if header:
            offset = int(header.group(1))
            continue
        if offset is None or line.startswith(("---", "+++")):
            continue
        if line.startswith("-"):
            original.append(line[1:].strip())
        elif line.startswith("+"):
            mutated.append(line[1:].strip())
        elif original or mutated:
            break
        else:
            offset += 1
    line_no = start + offset - 1 if (start is not None and offset is not None) else None
    return line_no, " / ".join(original), " / ".join(mutated)


def run_target(target: Target, work: Path, log, *, jobs: int) -> Outcome:
    """Mutate one module in the scratch copy ``work`` and collect mutmut's verdicts."""
    started = time.perf_counter()
    shutil.rmtree(work / "mutants", ignore_errors=True)
    pyproject = work / "pyproject.toml"
    pyproject.write_text(with_mutmut_section(pyproject.read_text(), mutmut_config(target)))
    run = mutmut(work, ["run", "--max-children", str(jobs), *mutant_globs(target)], log)
    if run.returncode != 0:
        tail = "\n".join((run.stdout + run.stderr).strip().splitlines()[-15:])
        raise MutationError(f"{target.name}: mutmut run failed (exit {run.returncode}); its last lines:\n{tail}")
    verdicts = parse_results(mutmut(work, ["results", "--all", "true"], log).stdout)
    prefixes = tuple(g.removesuffix("*") for g in mutant_globs(target))
    verdicts = {name: status for name, status in verdicts.items()
                if name.startswith(module_name(target.source) + ".") and (not prefixes or name.startswith(prefixes))}
    if not verdicts:
        raise MutationError(f"{target.name}: mutmut reported no mutants for {target.source}; see the log")
    outcome = Outcome(target)
    for status in verdicts.values():
        outcome.counts[status] = outcome.counts.get(status, 0) + 1
    source_text = (work / target.source).read_text()
    for name, status in sorted(verdicts.items(), key=lambda kv: int(kv[0].rsplit("_", 1)[1])):
        if status in ("killed", "timeout"):
            continue
        diff = mutmut(work, ["show", name], log).stdout
        line, original, mutated = describe(diff, function_start(source_text, name))
        outcome.survivors.append(Survivor(name, status, line, original, mutated))
    outcome.seconds = time.perf_counter() - started
    return outcome


# --------------------------------------------------------------------------- the report


def judge(entry: dict) -> dict:
    """One module's entry with each surviving mutant marked equivalent or not (from ``EQUIVALENT``), and counted.

    ``score`` is killed / mutants; ``score_without_equivalent`` leaves out the
    mutants no test can kill, each listed with the reason.
    """
    for s in entry["not_killed"]:
        s["equivalent"] = EQUIVALENT.get((entry["module"], s["original"], s["mutated"]))
    equivalent = sum(s["equivalent"] is not None for s in entry["not_killed"])
    killable = entry["mutants"] - equivalent
    return entry | {"equivalent": equivalent,
                    "score": round(entry["killed"] / entry["mutants"], 4) if entry["mutants"] else None,
                    "score_without_equivalent": round(entry["killed"] / killable, 4) if killable else None}


def summary(entries: dict[str, dict]) -> dict:
    total = sum(e["mutants"] for e in entries.values())
    killed = sum(e["killed"] for e in entries.values())
    killable = total - sum(e["equivalent"] for e in entries.values())
    return {"mutants": total, "killed": killed, "survived": total - killed,
            "equivalent": total - killable, "score": round(killed / total, 4) if total else None,
            "score_without_equivalent": round(killed / killable, 4) if killable else None,
            "target_score": TARGET_SCORE}


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def table(record: dict) -> str:
    """One line per module, then the total, then every mutant that was not killed (file:line, old -> new)."""
    entries, total = record["modules"], record["summary"]
    rows = [("module", "mutants", "killed", "survived", "equivalent", "score", "without equiv.", "seconds")]
    for name, e in entries.items():
        rows.append((name, e["mutants"], e["killed"], e["survived"], e["equivalent"], percent(e["score"]),
                     percent(e["score_without_equivalent"]), e["seconds"]))
    rows.append(("all", total["mutants"], total["killed"], total["survived"], total["equivalent"],
                 percent(total["score"]), percent(total["score_without_equivalent"]), ""))
    out = text_table(rows[0], rows[1:]).splitlines()
    for e in entries.values():
        for s in e["not_killed"]:
            why = f"  [equivalent: {s['equivalent']}]" if s["equivalent"] else ""
            out.append(f"  {e['module']}:{s['line']}  {s['status']}: {s['original']}  ->  {s['mutated']}{why}")
    return "\n".join(out)


def write_results(outcomes: list[Outcome], path: Path = RESULTS) -> dict:
    """Merge these modules' results into ``path`` (other modules' entries are kept); return the whole record."""
    from importlib.metadata import version

    record = json.loads(path.read_text()) if path.is_file() else {}
    entries = record.get("modules", {})
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    for outcome in outcomes:
        entries[outcome.target.name] = outcome.as_dict() | {"measured_utc": stamp}
    return rewrite(entries, path, tool=f"mutmut {version('mutmut')}")


def rewrite(entries: dict[str, dict], path: Path, *, tool: str) -> dict:
    """Judge every entry again (the list of equivalent mutants may have grown), order them, write ``path``."""
    order = [t.name for t in TARGETS]
    entries = {name: judge(entries[name]) for name in sorted(entries, key=lambda n: order.index(n) if n in order
                                                              else len(order))}
    record = {"tool": tool, "command": "python -m ml60.mutation [MODULE ...]", "cpu_count": os.cpu_count(),
              "summary": summary(entries), "modules": entries}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return record


def verdict(record: dict) -> str:
    s = record["summary"]
    return (f"{s['killed']}/{s['mutants']} mutants killed ({percent(s['score'])}; "
            f"{percent(s['score_without_equivalent'])} "
            f"of the {s['mutants'] - s['equivalent']} that a test can kill; target {percent(TARGET_SCORE)})")


def choose(names: list[str]) -> list[Target]:
    by_name = {t.name: t for t in TARGETS}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise MutationError(f"unknown module {', '.join(unknown)}; choose from {', '.join(by_name)}")
    return [by_name[n] for n in names] if names else list(TARGETS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml60.mutation", description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*",
                        help=f"which modules (default: all): {', '.join(t.name for t in TARGETS)}")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="mutants tested at once")
    parser.add_argument("--work", type=Path, default=None,
                        help="scratch folder to keep (for `mutmut browse` there); default: a temporary one, removed")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the JSON summary to update")
    parser.add_argument("--list", action="store_true", help="list the modules and their tests, run nothing")
    parser.add_argument("--report", action="store_true",
                        help="judge and print the recorded results again (after editing EQUIVALENT), run nothing")
    args = parser.parse_args(argv)
    try:
        targets = choose(args.modules)
        if args.list:
            list_targets(targets)
            return 0
        if args.report:
            if not args.results.is_file():
                raise MutationError(f"no results yet in {args.results}: run `python -m ml60.mutation` first")
            record = json.loads(args.results.read_text())
            return finish(rewrite(record["modules"], args.results, tool=record["tool"]), args.results)
        if shutil.which("git") is None:
            raise MutationError("git is needed to list the project's files")
        try:
            import mutmut  # noqa: F401
        except ImportError as exc:
            raise MutationError("mutmut is not installed: pip install 'mutmut>=3.8,<4'") from exc
        return run(targets, args)
    except MutationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def list_targets(targets: list[Target]) -> None:
    for t in targets:
        print(f"{t.name:<12} {t.source}{' (' + ', '.join(t.functions) + ')' if t.functions else ''}  {t.note}\n"
              f"{'':<12} tests: {' '.join(t.tests)}")
    for (module, original, mutated), why in EQUIVALENT.items():
        print(f"equivalent: {module}: {original}  ->  {mutated}: {why}")


def finish(record: dict, path: Path) -> int:
    """Print the table and the verdict; 0 when the share of mutants killed reaches ``TARGET_SCORE``."""
    print(table(record))
    print(f"{verdict(record)}. Wrote {path}")
    return 0 if (record["summary"]["score"] or 0) >= TARGET_SCORE else 1


def run(targets: list[Target], args) -> int:
    """Copy the project into a scratch folder, mutate each target there in turn, record and print the results."""
    scratch = args.work or Path(tempfile.mkdtemp(prefix="ml60-mutation-"))
    scratch.mkdir(parents=True, exist_ok=True)
    log_path = scratch / "mutation.log"
    outcomes = []
    try:
        copy_project(scratch)
        with open(log_path, "a") as log:
            for target in targets:
                print(f"== {target.name}: {target.source} against {' '.join(target.tests)}", flush=True)
                outcome = run_target(target, scratch, log, jobs=args.jobs)
                outcomes.append(outcome)
                print(f"   {outcome.caught}/{outcome.total} killed in {outcome.seconds:.0f} s", flush=True)
    except MutationError:
        print(f"(mutmut's output is kept in {log_path})", file=sys.stderr)
        args.work = scratch      # keep the evidence
        raise
    finally:
        if outcomes:             # what was measured is recorded, even when a later module failed
            record = write_results(outcomes, args.results)
        if args.work is None:
            shutil.rmtree(scratch, ignore_errors=True)
    return finish(record, args.results)


if __name__ == "__main__":
    sys.exit(main())
