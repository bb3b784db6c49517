"""Tests that kill the mutants the milestone tests let through (``python -m ml60.mutation``).

Each class holds the tests for one module of ``ml60.mutation.TARGETS``: a
mutant of that module runs against them, beside the module's own tests.  Each
test pins a behaviour a learner relies on and that a one-token change to the
code (a ``<`` for a ``<=``, a constant off by one, a dropped term) would
break without any other test noticing.  Every test here takes milliseconds.
"""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest


class TestNumpyNet:
    """``phase1_foundation/numpy_net.py``: initialisation, prediction in batches, the gradient-check helpers."""

    def test_he_initialisation_shapes_dtype_and_scale(self):
        from phase1_foundation.numpy_net import init_params

        params = init_params(rng=np.random.default_rng(0))
        assert {k: v.shape for k, v in params.items()} == {"W1": (784, 128), "b1": (128,), "W2": (128, 10),
                                                           "b2": (10,)}
        assert all(v.dtype == np.float32 for v in params.values())
        assert not params["b1"].any() and not params["b2"].any()
        assert params["W1"].std() == pytest.approx(np.sqrt(2 / 784), rel=0.02)
        assert params["W2"].std() == pytest.approx(np.sqrt(2 / 128), rel=0.05)
        small = init_params(6, 5, 3, rng=np.random.default_rng(0), dtype=np.float64)
        assert small["W1"].shape == (6, 5) and small["W2"].shape == (5, 3) and small["b2"].dtype == np.float64

    def test_predict_takes_the_argmax_over_every_batch(self):
        from phase1_foundation.numpy_net import forward, init_params, predict

        rng = np.random.default_rng(1)
        params = init_params(6, 5, 3, rng=rng, dtype=np.float64)
        x = rng.standard_normal((7, 6))
        expected = forward(params, x)[0].argmax(axis=1)
        for batch_size in (1, 3, 7, 2000):
            assert predict(params, x, batch_size=batch_size).tolist() == expected.tolist()
        assert predict(params, x).tolist() == expected.tolist()

    def test_loss_and_grads_is_the_forward_loss_and_the_backward_gradients(self):
        from phase1_foundation.numpy_net import backward, forward, init_params, loss_and_grads, softmax_cross_entropy

        rng = np.random.default_rng(2)
        params = init_params(6, 5, 3, rng=rng, dtype=np.float64)
        x, y = rng.standard_normal((4, 6)), np.array([0, 2, 1, 2])
        logits, cache = forward(params, x)
        loss, dlogits = softmax_cross_entropy(logits, y)
        got_loss, grads = loss_and_grads(params, x, y)
        assert got_loss == loss
        assert all(np.array_equal(grads[k], v) for k, v in backward(params, cache, dlogits).items())

    def test_relative_error_is_scale_free_and_zero_for_two_zeros(self):
        from phase1_foundation.numpy_net import relative_error

        assert relative_error(np.zeros(3), np.zeros(3)) == 0.0
        assert relative_error(np.array([3.0, 4.0]), np.zeros(2)) == 1.0
        assert relative_error(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(np.sqrt(2) / 2)
        assert relative_error(np.array([2.0]), np.array([1.0])) == pytest.approx(1 / 3)
        assert relative_error(1e6 * np.array([2.0]), 1e6 * np.array([1.0])) == pytest.approx(1 / 3)

    def test_both_gradient_checks_agree_with_backward_on_a_small_net(self):
        from phase1_foundation.numpy_net import PARAM_NAMES, init_params, numerical_gradient_check, torch_gradient_check

        rng = np.random.default_rng(3)
        params = init_params(6, 5, 3, rng=rng)
        x, y = rng.standard_normal((4, 6)).astype(np.float32), np.array([0, 2, 1, 2])
        numeric = numerical_gradient_check(params, x, y, rng=np.random.default_rng(0))
        assert set(numeric) == set(PARAM_NAMES) and max(numeric.values()) < 1e-7
        # A blank image: with zero biases z1 is exactly 0 there, where ReLU (and autograd) pass no gradient.
        # (A centred difference cannot check that point: it straddles the kink and sees half the slope.)
        x[1] = 0.0
        autograd = torch_gradient_check(params, x, y)
        assert set(autograd) == set(PARAM_NAMES) and max(autograd.values()) < 1e-12
        assert params["W1"].dtype == np.float32               # the checks work on float64 copies


    def test_numerical_check_moves_each_sampled_coordinate_once_by_eps(self, monkeypatch):
        from phase1_foundation import numpy_net

        rng = np.random.default_rng(4)
        params = numpy_net.init_params(6, 5, 3, rng=rng)
        x, y = rng.standard_normal((4, 6)), np.array([0, 2, 1, 2])
        start = {k: v.astype(np.float64).reshape(-1) for k, v in params.items()}
        moved = {k: [] for k in numpy_net.PARAM_NAMES}
        real = numpy_net.loss_and_grads

        def spy(p, xs, ys):
            for k in numpy_net.PARAM_NAMES:
                delta = p[k].reshape(-1) - start[k]
                moved[k] += [(int(i), float(delta[i])) for i in np.flatnonzero(delta)]
            return real(p, xs, ys)

        monkeypatch.setattr(numpy_net, "loss_and_grads", spy)
        numpy_net.numerical_gradient_check(params, x, y, rng=np.random.default_rng(0))
        for name, size in (("W1", 30), ("b1", 5), ("W2", 15), ("b2", 3)):
            coords = [i for i, _ in moved[name]]
            assert len(coords) == 2 * min(25, size) and len(set(coords)) == min(25, size), name   # up, then down
            assert sorted(abs(d) for _, d in moved[name]) == pytest.approx([1e-6] * len(coords), rel=1e-6)


class TestSchedules:
    """``common/schedules.py``: each schedule's value at the steps where its formula changes."""

    @staticmethod
    def lr(step: int, **settings) -> float:
        from common.schedules import lr_multiplier

        return lr_multiplier(step, **({"total_steps": 100, "steps_per_epoch": 10} | settings))

    def test_warm_up_ramps_linearly_from_one_step_to_the_peak(self):
        ramp = [self.lr(s, schedule="constant", warmup_epochs=0.5) for s in range(7)]
        assert ramp == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0])

    def test_step_schedule_drops_by_gamma_every_step_every_epochs(self):
        drops = [self.lr(s, schedule="step", step_every=2, step_gamma=0.5) for s in (0, 19, 20, 39, 40, 99)]
        assert drops == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.25, 0.0625])

    def test_cosine_runs_from_the_peak_to_the_final_fraction(self):
        values = [self.lr(s, schedule="cosine", final_lr_fraction=0.1) for s in (0, 25, 50, 100, 150)]
        assert values == pytest.approx([1.0, 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi / 4)), 0.55, 0.1, 0.1])

    def test_cosine_after_a_warm_up_that_fills_the_run_decays_in_one_step(self):
        values = [self.lr(s, total_steps=10, schedule="cosine", warmup_epochs=1) for s in (9, 10, 11)]
        assert values == pytest.approx([1.0, 1.0, 0.0], abs=1e-12)

    def test_one_cycle_climbs_for_30_percent_then_falls_linearly(self):
        values = [self.lr(s, schedule="onecycle", final_lr_fraction=0.1) for s in (0, 14, 29, 30, 65, 100)]
        assert values == pytest.approx([1 / 30, 0.5, 1.0, 1.0, 0.55, 0.1])
        assert self.lr(9, schedule="onecycle", warmup_epochs=1) == 1.0       # an explicit warm-up replaces the 30%
        assert self.lr(0, total_steps=2, steps_per_epoch=2, schedule="onecycle") == 1.0   # at least one step up

    def test_defaults_are_constant_and_a_tenfold_drop_every_ten_epochs(self):
        assert self.lr(50) == 1.0 and self.lr(50, schedule="constant") == 1.0
        drops = [self.lr(s, total_steps=300, schedule="step") for s in (99, 100, 199, 200)]
        assert drops == pytest.approx([1.0, 0.1, 0.1, 0.01])

    def test_an_unknown_schedule_names_the_choices(self):
        with pytest.raises(ValueError, match=r"^unknown schedule 'linear'; choose one of constant, step, cosine, "
                                             r"onecycle$"):
            self.lr(0, schedule="linear")


class TestAugment:
    """``common/augment.py``: the recipe object, the dtype of normalisation, flip averaging with known logits."""

    @staticmethod
    def batch(n=6, seed=0):
        import torch

        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8)

    def test_the_recipe_applies_crop_then_flip_then_cutout_from_one_generator(self):
        import torch

        from common.augment import BatchAugment, cutout, random_crop, random_flip

        batch = self.batch()
        recipe = BatchAugment(crop_pad=2, flip=True, cutout_size=4)
        got = recipe(batch, torch.Generator().manual_seed(1))
        g = torch.Generator().manual_seed(1)
        by_hand = cutout(random_flip(random_crop(batch, 2, g), g), 4, g)
        assert torch.equal(got, by_hand)
        for fields, step in (({"crop_pad": 3}, lambda b, g: random_crop(b, 3, g)), ({"flip": True}, random_flip),
                             ({"cutout_size": 5}, lambda b, g: cutout(b, 5, g))):
            one = BatchAugment(**fields)
            assert one.active
            seeded = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
            assert torch.equal(one(batch, seeded[0]), step(batch, seeded[1]))
        assert not BatchAugment().active and BatchAugment()(batch, torch.Generator()) is batch

    def test_cutout_squares_have_the_size_asked_for_and_can_sit_anywhere(self):
        import torch

        from common.augment import cutout

        out = cutout(torch.full((400, 1, 16, 16), 9, dtype=torch.uint8), 5, torch.Generator().manual_seed(0))
        zero = out[:, 0] == 0
        rows, cols = zero.any(2), zero.any(1)                       # which rows / columns each square touches
        assert rows.sum(1).max().item() == 5 and cols.sum(1).max().item() == 5
        assert bool(rows.any(0).all()) and bool(cols.any(0).all())   # every row and column can be hit
        assert bool((zero.flatten(1).sum(1) == rows.sum(1) * cols.sum(1)).all())   # a rectangle, clipped
        # A centre on the first (last) row puts rows -2..2 (13..17) in the square: 0..2 (13..15) are left.
        for hit in (rows, cols):
            spans = {tuple(np.flatnonzero(h.numpy()).tolist()) for h in hit}
            assert (0, 1, 2) in spans and (13, 14, 15) in spans and (0, 1, 2, 3) in spans

    def test_normalize_keeps_the_dtype_asked_for(self):
        import torch

        from common.augment import normalize

        batch = torch.tensor([[[[0, 255]]], [[[51, 102]]]], dtype=torch.uint8)
        default = normalize(batch, (0.2,), (0.5,))
        assert default.dtype == torch.float32
        assert default.flatten().tolist() == pytest.approx([-0.4, 1.6, 0.0, 0.4])
        assert normalize(batch, (0.2,), (0.5,), dtype=torch.float64).dtype == torch.float64
        exact = normalize(batch, (0.1,), (0.3,), dtype=torch.float64)        # 0.1 and 0.3 are not float32 numbers
        assert exact.flatten().tolist() == pytest.approx([(v / 255 - 0.1) / 0.3 for v in (0, 255, 51, 102)], rel=1e-15)

    def test_flip_averaging_reuses_the_plain_logits_it_is_given(self):
        import torch

        from common.augment import flip_averaged_logits

        calls = []

        def model(x):
            calls.append(x.clone())
            return x[:, 0, 0, :2].to(torch.float16)                  # the first two pixels of the first row

        x = torch.tensor([[[[1.0, 2.0, 3.0]]]])
        averaged = flip_averaged_logits(model, x, plain_logits=torch.tensor([[10.0, 20.0]]))
        assert len(calls) == 1 and torch.equal(calls[0], x.flip(3))
        assert averaged.dtype == torch.float32 and averaged.tolist() == [[6.5, 11.0]]
        calls.clear()
        assert flip_averaged_logits(model, x).tolist() == [[2.0, 2.0]] and len(calls) == 2


class TestP2Data:
    """``phase2_depth/data.py``: the defaults a caller relies on, and statistics summed in float64."""

    def test_the_split_is_seeded_with_zero_by_default(self):
        import torch

        from phase2_depth.data import stratified_split

        labels = torch.arange(40) % 4
        default, zero, one = (stratified_split(labels, 8, **seed) for seed in ({}, {"seed": 0}, {"seed": 1}))
        assert all(np.array_equal(a, b) for a, b in zip(default, zero))
        assert not np.array_equal(default[1], one[1])

    def test_channel_statistics_are_float64_exact(self):
        import torch

        from phase2_depth.data import channel_stats

        images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (5, 3, 4, 4), dtype=np.uint8))
        x = images.numpy().astype(np.float64) / 255.0
        mean, std = channel_stats(images)
        assert mean == pytest.approx(tuple(x.mean(axis=(0, 2, 3))), rel=1e-13)     # float32 sums are off by ~1e-8
        assert std == pytest.approx(tuple(x.std(axis=(0, 2, 3), ddof=1)), rel=1e-13)

    def test_cifar_recipe_crops_then_flips_then_cuts_out_from_one_generator(self):
        import torch

        from common.augment import cutout
        from phase2_depth.data import AUGMENT, CifarAugment, random_crop, random_flip

        batch = torch.randint(0, 256, (6, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
        got = CifarAugment(crop_pad=2, flip=True, cutout_size=4)(batch, torch.Generator().manual_seed(1))
        g = torch.Generator().manual_seed(1)
        assert torch.equal(got, cutout(random_flip(random_crop(batch, 2, g), g), 4, g))
        for fields, step in (({"crop_pad": 3}, lambda b, g: random_crop(b, 3, g)), ({"flip": True}, random_flip),
                             ({"cutout_size": 5}, lambda b, g: cutout(b, 5, g))):
            one = CifarAugment(**fields)(batch, torch.Generator().manual_seed(2))
            assert torch.equal(one, step(batch, torch.Generator().manual_seed(2))), fields
        assert CifarAugment()(batch, torch.Generator()) is batch
        assert (AUGMENT.crop_pad, AUGMENT.flip, AUGMENT.cutout_size) == (4, True, 0)

    def test_flip_is_a_fair_coin_by_default(self):
        import torch

        from phase2_depth.data import random_flip

        batch = torch.tensor([[0, 1]], dtype=torch.uint8).repeat(2000, 1).reshape(2000, 1, 1, 2)
        flipped = random_flip(batch, torch.Generator().manual_seed(0))[:, 0, 0, 0] == 1
        assert 0.45 < flipped.float().mean().item() < 0.55


class TestEvaluation:
    """``phase2_depth/evaluation.py``: the report as scikit-learn lays it out, the most confused pairs, ECE's bins."""

    CLASSES = ["cat", "dog", "frog", "very long name"]

    def predictions(self):
        labels = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 0, 1, 2])
        predicted = np.array([0, 1, 0, 1, 1, 0, 1, 2, 1, 0, 1, 1])   # frog predicted once; class 3 never, nor true
        return labels, predicted, np.eye(4)[predicted] * 0.7 + 0.3 / 4

    def test_report_and_its_text_match_scikit_learn(self):
        from sklearn.metrics import classification_report

        from phase2_depth.evaluation import scores

        labels, predicted, probs = self.predictions()
        for classes in (self.CLASSES, ["a", "b", "c", "d"]):         # names longer and shorter than "weighted avg"
            result = scores(labels, probs, classes)
            settings = dict(labels=range(4), target_names=classes, zero_division=0)
            expected = classification_report(labels, predicted, output_dict=True, **settings)
            got = result["classification_report"]
            assert set(got) == set(expected)
            for key, value in expected.items():
                assert got[key] == (pytest.approx(value) if isinstance(value, float) else
                                    {k: pytest.approx(v) for k, v in value.items()}), key
            text = classification_report(labels, predicted, digits=4, **settings)
            assert result["classification_report_text"] == text
        from phase2_depth.evaluation import class_scores, classification_report_text, confusion_matrix

        matrix = confusion_matrix(labels, predicted, 4)
        wide = classification_report_text(class_scores(matrix), matrix, ["a", "b", "c", "d"], digits=14)
        assert wide == classification_report(labels, predicted, digits=14, **settings)   # columns as wide as digits

    def test_per_class_accuracy_accuracy_and_integer_support(self):
        from phase2_depth.evaluation import class_scores, confusion_matrix, scores

        labels, predicted, probs = self.predictions()
        result = scores(labels, probs, self.CLASSES)
        assert result["accuracy"] == pytest.approx(8 / 12)
        assert result["per_class_accuracy"] == {"cat": 0.75, "dog": 0.8, "frog": pytest.approx(1 / 3),
                                                "very long name": None}
        support = class_scores(confusion_matrix(labels, predicted, 4))["support"]
        assert support.dtype == np.int64 and support.tolist() == [4, 5, 3, 0]

    def test_most_confused_pairs_in_order_with_their_share(self):
        from phase2_depth.evaluation import most_confused

        matrix = np.array([[5, 3, 0], [1, 4, 6], [0, 2, 7]])
        pairs = most_confused(matrix, ["a", "b", "c"])
        assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [("b", "c", 6), ("a", "b", 3),
                                                                           ("c", "b", 2), ("b", "a", 1)]
        assert [p["share_of_true_class"] for p in pairs] == pytest.approx([6 / 11, 3 / 8, 2 / 9, 1 / 11])
        assert len(most_confused(matrix, ["a", "b", "c"], top=2)) == 2
        assert most_confused(np.diag([3, 4, 5]), ["a", "b", "c"]) == []
        assert matrix[1, 1] == 4                                           # the caller's matrix is left alone
        assert len(most_confused(np.ones((4, 4), dtype=int), list("abcd"))) == 5   # 12 pairs, the top 5
        assert most_confused(np.array([[0, 1], [0, 3]]), ["a", "b"])[0]["share_of_true_class"] == 1.0

    def test_calibration_bins_take_each_confidence_once_edges_to_the_lower_bin(self):
        from phase2_depth.evaluation import expected_calibration_error

        probs = np.array([[0.0, 0.0], [0.2, 0.2], [0.4, 0.3], [0.5, 0.5], [1.0, 0.0]])   # confidences 0, .2, .4, .5, 1
        result = expected_calibration_error(np.array([0, 1, 0, 0, 0]), probs, bins=5)
        assert [b["count"] for b in result["bins"]] == [2, 1, 1, 0, 1]
        assert result["bins"][3] == {"low": 0.6000000000000001, "high": 0.8, "count": 0, "confidence": None,
                                     "accuracy": None}
        assert len(expected_calibration_error(np.array([0]), np.array([[0.9, 0.1]]))["bins"]) == 15


class TestDrift:
    """``serving/drift.py``: the features by hand, the reference file, when the monitor checks, its state."""

    def test_image_features_by_hand(self):
        from phase3_production.serving.drift import image_features

        grey = np.array([[0.0, 1.0], [0.0, 1.0]])              # columns 0 and 1: a vertical edge
        pixels = np.stack([grey, grey * 0.5, np.full((2, 2), 0.25)])
        features = image_features(pixels)
        assert features.dtype == np.float32
        # means r, g, b; standard deviations r, g, b; sharpness: (0 rows apart + 0.5 columns apart) / 2
        grey_mean = (grey + grey * 0.5 + 0.25) / 3
        sharpness = 0.5 * (0.0 + np.abs(np.diff(grey_mean, axis=1)).mean())
        assert features.tolist() == pytest.approx([0.5, 0.25, 0.25, 0.5, 0.25, 0.0, sharpness])
        assert sharpness == pytest.approx(0.25)

    def test_batch_and_upload_features_are_the_same_computation(self):
        from phase3_production.serving.drift import batch_features, image_features, rgb_features

        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (3, 3, 4, 5), dtype=np.uint8)
        batch = batch_features(images)
        assert batch.shape == (3, 7)
        for image, row in zip(images, batch):
            assert row.tolist() == pytest.approx(image_features(image / 255.0).tolist(), rel=1e-6)
            # bit for bit: both sides scale in float32, so reference and live features are the same numbers
            assert np.array_equal(rgb_features(image.transpose(1, 2, 0)), row)

    def test_write_reference_keeps_the_features_the_confidences_and_the_class_shares(self, tmp_path):
        import json

        from phase3_production.serving.drift import INPUT_FEATURES, write_reference

        features = np.arange(14, dtype=float).reshape(2, 7) / 7
        written = write_reference(tmp_path / "reference.json", features, np.array([0.9, 0.6, 0.12345678]),
                                  np.array([0, 1, 1]), ["a", "b", "never predicted"])
        assert json.loads((tmp_path / "reference.json").read_text()) == written
        assert list(written["features"]) == list(INPUT_FEATURES)
        assert written["features"]["mean_g"] == [0.142857, 1.142857]               # 6 decimals: the file stays small
        assert written["confidence"] == [0.9, 0.6, 0.123457]
        assert written["class_shares"] == [0.333333, 0.666667, 0.0]                 # a share for every class
        assert written["classes"] == ["a", "b", "never predicted"]
        assert written["source"] == {"features": "2 training images", "outputs": "3 validation images"}

    @staticmethod
    def monitor(window=4, check_every=2):
        from phase3_production.serving.drift import DriftMonitor, INPUT_FEATURES

        rng = np.random.default_rng(5)
        reference = {"features": {n: rng.normal(0.5, 0.1, 300).tolist() for n in INPUT_FEATURES},
                     "confidence": rng.uniform(0.3, 1, 300).tolist(), "class_shares": [0.5, 0.5],
                     "classes": ["a", "b"], "source": {"features": "300 training images"}}
        return DriftMonitor(reference, window=window, check_every=check_every, alpha=1e-4), rng

    def test_the_monitor_checks_once_the_window_is_full_then_every_check_every_requests(self):
        monitor, rng = self.monitor(window=4, check_every=2)
        checked_at = []
        for _ in range(9):
            monitor.observe(rng.normal(0.5, 0.1, 7), 0.8, int(rng.integers(2)))
            checked_at.append(monitor.last.get("request"))
        assert checked_at == [None, None, None, 4, 4, 6, 6, 8, 8]
        assert [h[0] for h in monitor.history] == [4, 6, 8] and len(monitor.rows) == 4

    def test_state_reports_the_settings_and_reset_forgets_the_window(self):
        monitor, rng = self.monitor(window=4, check_every=2)
        for _ in range(4):
            monitor.observe(rng.normal(0.5, 0.1, 7), 0.8, 1)
        state = monitor.state()
        assert {k: state[k] for k in ("enabled", "window", "check_every", "alpha", "requests_seen", "window_filled",
                                      "failure")} == {"enabled": True, "window": 4, "check_every": 2, "alpha": 1e-4,
                                                      "requests_seen": 4, "window_filled": 4, "failure": None}
        assert state["last_check"]["request"] == 4 and state["reference"] == {"features": "300 training images"}
        assert state["alarm"] is False and state["last_check"]["alarm"] is False
        last = state["last_check"]
        assert all(set(test) == {"ks", "p_value", "psi"} for test in last["features"].values())
        assert set(last["class_mix"]) == {"chi_square", "p_value", "threshold", "counts"}
        assert last["class_mix"]["counts"] == [0, 4]
        monitor.alarm = True
        monitor.reset()
        assert (len(monitor.rows), len(monitor.classes), monitor.alarm, monitor.last) == (0, 0, False, {})
        assert monitor.state()["last_check"] is None and monitor.seen == 4

    def test_a_check_that_fails_is_recorded_and_raised_and_the_next_one_clears_it(self, monkeypatch):
        from phase3_production.serving import drift

        monitor, rng = self.monitor(window=2, check_every=1)
        monitor.observe(rng.normal(0.5, 0.1, 7), 0.8, 0)
        real = drift.ks_2samp
        monkeypatch.setattr(drift, "ks_2samp", lambda a, b: (_ for _ in ()).throw(ValueError("no data")))
        with pytest.raises(ValueError, match="no data"):
            monitor.observe(rng.normal(0.5, 0.1, 7), 0.8, 1)
        assert monitor.failure == {"type": "ValueError", "message": "no data"} and monitor.state()["failure"]
        monkeypatch.setattr(drift, "ks_2samp", real)
        monitor.observe(rng.normal(0.5, 0.1, 7), 0.8, 1)
        assert monitor.failure is None and monitor.last["request"] == 3

    def test_a_monitor_reads_its_reference_from_a_file(self, tmp_path):
        import json

        from phase3_production.serving.drift import DriftMonitor

        monitor, _ = self.monitor()
        (tmp_path / "reference.json").write_text(json.dumps(monitor.reference))
        loaded = DriftMonitor.from_file(tmp_path / "reference.json", window=7, alpha=0.01)
        assert loaded.reference == monitor.reference and (loaded.window, loaded.alpha) == (7, 0.01)
        assert loaded.rows.maxlen == 7 and loaded.classes.maxlen == 7 and loaded.shares.tolist() == [0.5, 0.5]


class TestStats:
    """KS, chi-square and PSI (``serving/stats.py``): edge cases and exact values, beside the SciPy comparisons."""

    def test_ks_2samp_needs_one_value_on_each_side_and_no_more(self):
        from scipy import stats

        from phase3_production.serving.stats import ks_2samp

        for a, b in (([], [1.0]), ([1.0], []), ([], [])):
            with pytest.raises(ValueError, match="^both samples need at least one value$"):
                ks_2samp(np.array(a), np.array(b))
        for a, b in (([0.0, 1.0, 2.0], [5.0]), ([5.0], [0.0, 1.0, 2.0])):
            d, p = ks_2samp(np.array(a), np.array(b))       # one value is a sample: D = 1, p = P(K > sqrt(3/4))
            assert d == 1.0 and p == pytest.approx(stats.kstwobign.sf(np.sqrt(3 / 4)), rel=1e-9)

    def test_kolmogorov_tail_is_one_up_to_its_cut_off_and_exact_from_it(self):
        from scipy import stats

        from phase3_production.serving.stats import kolmogorov_sf

        assert kolmogorov_sf(-1.0) == kolmogorov_sf(0.0) == kolmogorov_sf(0.29) == 1.0
        for x in (0.3, 0.5, 1.0, 1.36, 2.0, 4.0):
            assert kolmogorov_sf(x) == pytest.approx(stats.kstwobign.sf(x), rel=1e-9, abs=1e-300)

    def test_chi2_tail_is_one_at_and_below_zero(self):
        from phase3_production.serving.stats import chi2_sf

        assert chi2_sf(0.0, 3) == chi2_sf(-2.0, 3) == 1.0

    def test_chi_square_normalises_the_shares(self):
        from scipy import stats

        from phase3_production.serving.stats import chi_square

        observed = np.array([30, 10, 20, 40])
        weights = np.array([1, 1, 2, 4])                    # shares given as weights: 1/8, 1/8, 2/8, 4/8
        reference = stats.chisquare(observed, f_exp=weights / weights.sum() * observed.sum())
        assert chi_square(observed, weights) == pytest.approx((reference.statistic, reference.pvalue), rel=1e-9)
        two = stats.chisquare([30, 10])                      # two classes are a test (one degree of freedom)
        assert chi_square(np.array([30, 10]), [0.5, 0.5]) == pytest.approx((two.statistic, two.pvalue), rel=1e-9)

    def test_chi_square_floors_a_share_the_reference_never_saw(self):
        from phase3_production.serving.stats import chi_square

        observed = np.array([0, 0, 5])
        share = np.array([0.5, 0.5, 1e-3]) / 1.001           # the unseen class gets 1e-3, then shares sum to 1
        expected = share * 5
        statistic, p = chi_square(observed, [0.5, 0.5, 0.0])
        assert statistic == pytest.approx(float(((observed - expected) ** 2 / expected).sum()), rel=1e-12)
        assert p < 1e-9

    def test_chi_square_of_nothing_to_compare_is_no_evidence(self):
        from phase3_production.serving.stats import chi_square

        assert chi_square(np.array([7]), [1.0]) == (0.0, 1.0)                   # one class
        assert chi_square(np.array([0, 0, 0]), [0.2, 0.3, 0.5]) == (0.0, 1.0)   # no predictions yet
        assert chi_square(np.array([1, 0, 0]), [0.2, 0.3, 0.5])[1] < 1.0         # one prediction is something

    def test_psi_by_hand_on_the_reference_deciles(self):
        from phase3_production.serving.stats import psi

        reference = np.arange(1000.0)                        # 10% of the reference in each decile bin
        current = np.full(100, 50.0)                         # every live value in the first bin
        p, q = np.full(10, 0.1), np.array([1.0] + [1e-4] * 9)   # empty bins raised to the floor, 1e-4
        assert psi(reference, current) == pytest.approx(float(((q - p) * np.log(q / p)).sum()), rel=1e-12)
        quartiles = 0.75 * np.log(1.0 / 0.25) + 3 * (1e-4 - 0.25) * np.log(1e-4 / 0.25)
        assert psi(reference, current, bins=4) == pytest.approx(quartiles, rel=1e-12)

    def test_psi_of_a_sample_against_itself_is_zero_even_with_values_on_the_edges(self):
        from phase3_production.serving.stats import psi

        ties = np.repeat([1.0, 2.0], 50)                     # quartile edges 1.0, 1.5, 2.0: values sit on them
        assert psi(ties, ties, bins=4) == 0.0
        assert psi(ties, np.full(10, 1.0), bins=4) > 1.0


class TestParity:
    """``parity`` in ``onnx_export.py``: what it feeds the session, batch by batch."""

    class RecordingSession:
        """Stands in for ONNX Runtime: a NumPy linear map that records each call's output names, input and batch."""

        def __init__(self, weight: np.ndarray):
            self.weight, self.calls = weight, []

        def run(self, output_names, feed):
            (name, x), = feed.items()
            self.calls.append((list(output_names), name, x.dtype, len(x)))
            return [x.reshape(len(x), -1) @ self.weight]

    def test_parity_feeds_float32_batches_of_250_by_default_and_counts_every_image(self):
        import torch

        from phase3_production.onnx_export import parity

        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3, bias=False))
        session = self.RecordingSession(model[1].weight.detach().numpy().T.copy())
        images = np.random.default_rng(0).standard_normal((600, 1, 2, 2))         # float64 on purpose
        result = parity(model, session, images)
        assert [call[3] for call in session.calls] == [250, 250, 100]
        assert all(call[:3] == (["logits"], "images", np.float32) for call in session.calls)
        assert result["images"] == 600 and result["same_class"] == 600 and result["max_abs_diff"] < 1e-5


class TestImages:
    """``serving/images.py``: the format is read from the bytes, and a big image is reduced by whole factors."""

    def test_the_format_comes_from_the_first_bytes(self):
        from phase3_production.serving.images import sniff_format

        samples = {"PNG": b"\x89PNG\r\n\x1a\n", "JPEG": b"\xff\xd8\xff\xe0", "WEBP": b"RIFF\x00\x00\x00\x00WEBPVP8 ",
                   "BMP": b"BM\x00\x00", "GIF": b"GIF89a", "TIFF": b"MM\x00*", "ICO": b"\x00\x00\x01\x00",
                   "PDF": b"%PDF-1.7"}
        for kind, start in samples.items():
            assert sniff_format(start + b"\x00" * 32) == kind, kind
        assert sniff_format(b"RIFF\x00\x00\x00\x00WAVE" + b"\x00" * 8) is None      # RIFF, but not a WebP
        assert sniff_format(b"RIFF\x00\x00\x00\x00WEB") is None                       # too short to say
        assert sniff_format(b"") is None and sniff_format(b"<svg>") is None

    def test_shrink_reduces_each_side_by_a_whole_factor_down_to_eight_times_the_input(self):
        from PIL import Image

        from phase3_production.serving.images import REDUCE_MARGIN, shrink

        assert REDUCE_MARGIN == 8
        assert shrink(Image.new("RGB", (1000, 300)), (32, 32)).size == (334, 300)   # factor 1000 // 256 = 3, rounded up
        assert shrink(Image.new("L", (1, 4_000_000)), (32, 32)).size == (1, 4_000_000 // 15625)
        small = Image.new("RGB", (511, 255))
        assert shrink(small, (32, 32)) is small                                           # under 2 x 256: as is


    @staticmethod
    def encoded(image, fmt: str, **params) -> bytes:
        import io

        buffer = io.BytesIO()
        image.save(buffer, fmt, **params)
        return buffer.getvalue()

    @staticmethod
    def refusal(data: bytes, **limits) -> tuple[int, str, str]:
        from phase3_production.serving.images import ImageRejected, open_checked

        with pytest.raises(ImageRejected) as caught:
            open_checked(data, **limits)
        return caught.value.status, caught.value.code, caught.value.message

    def test_each_refusal_has_its_status_code_and_message(self):
        from PIL import Image

        png = self.encoded(Image.new("RGB", (20, 10)), "PNG")
        assert self.refusal(b"") == (400, "empty_image", "the uploaded file is empty")
        assert self.refusal(png, max_bytes=len(png) - 1) == (
            413, "image_too_large", f"image file is {len(png):,} bytes; the limit is {len(png) - 1:,}")
        assert self.refusal(b"hello") == (400, "not_an_image", "the bytes are not a PNG, JPEG, WebP or BMP image")
        assert self.refusal(b"GIF89a" + b"\x00" * 20, allowed=("PNG", "JPEG")) == (
            415, "unsupported_format", "GIF images are not accepted; send one of PNG, JPEG")
        assert self.refusal(png, max_pixels=199) == (
            413, "too_many_pixels", "image is 20x10 = 200 pixels; the limit is 199")
        noise = self.encoded(Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)),
                             "PNG")
        status, code, message = self.refusal(noise[:len(noise) // 2])                 # the header, half the pixels
        assert (status, code) == (400, "corrupt_image") and message.startswith("the PNG data is damaged or truncated: ")
        status, code, message = self.refusal(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
        assert (status, code) == (400, "corrupt_image") and message.startswith("cannot read the PNG header")

    def test_the_limits_themselves_are_allowed(self):
        from PIL import Image

        from phase3_production.serving.images import open_checked

        png = self.encoded(Image.new("RGB", (20, 10)), "PNG")
        image = open_checked(png, max_bytes=len(png), max_pixels=200)
        assert image.size == (20, 10) and image.format == "PNG"

    def test_pillows_own_bomb_check_is_a_413_too(self, monkeypatch):
        from PIL import Image

        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)             # 200 pixels is over twice that: an error
        status, code, message = self.refusal(self.encoded(Image.new("RGB", (20, 10)), "PNG"))
        assert (status, code) == (413, "too_many_pixels") and message.startswith("image declares too many pixels (")

    def test_the_header_is_read_only_as_the_sniffed_format(self):
        from PIL import Image

        from phase3_production.serving.images import ImageRejected, read_header

        gif = self.encoded(Image.new("RGB", (4, 4)), "GIF")
        with pytest.raises(ImageRejected) as caught:
            read_header(gif, "PNG")                                      # no other decoder may try the bytes
        assert (caught.value.status, caught.value.code) == (400, "corrupt_image")
        assert "cannot read the PNG header: the data is damaged (" in caught.value.message
        assert read_header(gif, "GIF").size == (4, 4)

    def test_sixteen_bit_greyscale_is_scaled_not_clipped_and_palettes_are_expanded(self):
        from PIL import Image

        from phase3_production.serving.images import to_8_bits

        for array in (np.array([[0, 255, 256, 40000, 65535]], dtype=np.uint16),
                      np.array([[0, 255, 256, 40000, 65535]], dtype=np.int32)):   # modes I;16 and I
            eight = to_8_bits(Image.fromarray(array))
            assert eight.mode == "L" and np.asarray(eight).tolist() == [[0, 0, 1, 156, 255]]
        assert to_8_bits(Image.new("1", (2, 2), 1)).mode == "L"
        palette = Image.new("RGB", (2, 2), (10, 20, 30)).convert("P")
        assert to_8_bits(palette).mode == "RGB"
        palette.info["transparency"] = 0
        assert to_8_bits(palette).mode == "RGBA"
        assert to_8_bits(Image.new("PA", (2, 2))).mode == "RGBA"
        rgb = Image.new("RGB", (2, 2))
        assert to_8_bits(rgb) is rgb

    def test_exif_orientation_is_read_and_undone(self):
        from PIL import Image

        from phase3_production.serving.images import exif_orientation, open_checked, prepare

        assert exif_orientation(Image.new("RGB", (4, 2))) == 1
        pixels = np.zeros((2, 4, 3), dtype=np.uint8)
        pixels[0, 0] = 255                                                # a white top-left corner
        tagged = Image.fromarray(pixels)
        exif = tagged.getexif()
        exif[0x0112] = 6                                                  # stored rotated: turn 90 degrees back
        image = open_checked(self.encoded(tagged, "PNG", exif=exif))
        assert exif_orientation(image) == 6
        upright = prepare(image, (3, 4, 2))                               # (C, H, W): 4 high, 2 wide
        assert upright.shape == (4, 2, 3) and upright[0, 1].tolist() == [255, 255, 255]

    def test_transparent_pixels_become_black_and_any_mode_becomes_rgb(self):
        from PIL import Image

        from phase3_production.serving.images import rgb_array, to_rgb

        clear = Image.new("RGBA", (2, 2), (200, 100, 50, 0))
        assert to_rgb(clear).mode == "RGB" and np.asarray(to_rgb(clear)).max() == 0
        half = Image.new("LA", (1, 1), (200, 255))
        assert np.asarray(to_rgb(half)).tolist() == [[[200, 200, 200]]]
        assert np.asarray(to_rgb(Image.new("L", (1, 1), 7))).tolist() == [[[7, 7, 7]]]
        rgb = Image.new("RGB", (3, 3))
        assert to_rgb(rgb) is rgb
        assert rgb_array(Image.new("RGB", (10, 6), (1, 2, 3)), (3, 4, 5)).shape == (4, 5, 3)
        assert rgb_array(Image.new("RGB", (5, 4), (1, 2, 3)), (3, 4, 5))[0, 0].tolist() == [1, 2, 3]

    def test_a_model_for_other_channels_is_refused_by_name(self):
        from PIL import Image

        from phase3_production.serving.images import ImageRejected, rgb_array

        with pytest.raises(ImageRejected) as caught:
            rgb_array(Image.new("RGB", (4, 4)), (1, 4, 4))
        assert (caught.value.status, caught.value.code, caught.value.message) == (
            400, "wrong_channels", "model expects 1 channels, image has 3")

    def test_the_price_of_a_decode_is_pixels_times_bytes_per_pixel_plus_rows_plus_buffers(self):
        from PIL import Image

        from phase3_production.serving.images import decode_cost

        fixed = 2 * 1024 * 1024
        cases = ((Image.new("RGB", (30, 20)), "PNG", "RGB", 4), (Image.new("L", (30, 20)), "PNG", "L", 1),
                 (Image.fromarray(np.zeros((20, 30), dtype=np.uint16)), "PNG", "I;16", 10))
        for image, fmt, mode, per_pixel in cases:
            cost = decode_cost(self.encoded(image, fmt))
            assert (cost.kind, cost.width, cost.height, cost.mode, cost.frames) == (fmt, 30, 20, mode, 1)
            assert cost.nbytes == 30 * 20 * per_pixel + 20 * 8 + fixed, mode
        palette = Image.new("RGB", (30, 20), (9, 9, 9)).convert("P")
        assert decode_cost(self.encoded(palette, "PNG")).nbytes == 30 * 20 * 5 + 20 * 8 + fixed
        transparent = self.encoded(palette, "PNG", transparency=0)
        assert decode_cost(transparent).mode == "PA" and decode_cost(transparent).nbytes == 30 * 20 * 9 + 20 * 8 + fixed
        webp = decode_cost(self.encoded(Image.new("RGB", (30, 20)), "WEBP", lossless=True))
        assert (webp.kind, webp.mode, webp.nbytes) == ("WEBP", "RGBA", 30 * 20 * (8 + 8) + 20 * 8 + fixed)
        png = self.encoded(Image.new("RGB", (30, 20)), "PNG")
        assert decode_cost(png, max_pixels=600) is not None and decode_cost(png, max_pixels=599) is None
        assert decode_cost(png, allowed=("JPEG",)) is None and decode_cost(b"nothing") is None
        assert decode_cost(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30) is None

    def test_webp_sizes_and_frames_come_from_the_riff_chunks(self):
        from PIL import Image

        from phase3_production.serving.images import count_webp_chunks, webp_header

        frame = Image.new("RGB", (37, 21), (200, 10, 10))
        assert webp_header(self.encoded(frame, "WEBP", lossless=True)) == ((37, 21), "RGBA", 1)
        assert webp_header(self.encoded(frame, "WEBP", quality=80)) == ((37, 21), "RGBA", 1)
        frames = [frame, Image.new("RGB", (37, 21), (10, 200, 10)), Image.new("RGB", (37, 21), (10, 10, 200))]
        animation = self.encoded(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50)
        assert webp_header(animation) == ((37, 21), "RGBA", 3) and count_webp_chunks(animation, b"ANMF") == 3
        assert webp_header(b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 4) is None
        # A chunk that claims 4 GB: the walk jumps past the end (read signed, it would walk backwards for ever).
        huge = b"RIFF\x00\x00\x00\x00WEBP" + b"ANMF" + (0xFFFFFFF0).to_bytes(4, "little") + b"\x00" * 8
        assert count_webp_chunks(huge, b"ANMF") == 1
        odd = b"RIFF\x00\x00\x00\x00WEBP" + b"XYZW\x03\x00\x00\x00abc\x00" + b"ANMF\x00\x00\x00\x00"
        assert count_webp_chunks(odd, b"ANMF") == 1                              # an odd chunk is padded to even

    def test_pillows_late_bomb_check_and_an_image_of_no_pixels_are_refused(self, monkeypatch):
        from PIL import Image

        from phase3_production.serving import images

        class BombOnLoad:
            def load(self):
                raise Image.DecompressionBombError("200 pixels")

        with pytest.raises(images.ImageRejected) as caught:
            images.decode(BombOnLoad(), "PNG")
        assert (caught.value.status, caught.value.code, str(caught.value)) == (
            413, "too_many_pixels", "image declares too many pixels (200 pixels)")

        class Empty:
            def __init__(self, size):
                self.size, self.mode, self.info = size, "RGB", {}

        png = self.encoded(Image.new("RGB", (1, 1)), "PNG")
        for size in ((0, 5), (5, 0)):
            monkeypatch.setattr(images.Image, "open", lambda *a, size=size, **k: Empty(size))
            with pytest.raises(images.ImageRejected) as caught:
                images.read_header(png, "PNG")
            assert (caught.value.status, caught.value.code, caught.value.message) == (
                400, "corrupt_image", f"image has no pixels ({size[0]}x{size[1]})")
            assert images.decode_cost(png) is None
        monkeypatch.setattr(images.Image, "open", lambda *a, **k: Empty((1, 1)))
        assert images.read_header(png, "PNG").size == (1, 1)
        assert images.decode_cost(png).nbytes == 4 + 8 + 2 * 1024 * 1024

    def test_a_damaged_header_names_the_error(self):
        assert self.refusal(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)[2] == (
            "cannot read the PNG header: the data is damaged (UnidentifiedImageError)")

    def test_an_unreadable_or_odd_orientation_counts_as_none(self):
        from phase3_production.serving.images import exif_orientation

        class Tagged:
            def __init__(self, exif):
                self.exif = exif

            def getexif(self):
                if isinstance(self.exif, Exception):
                    raise self.exif
                return self.exif

        assert exif_orientation(Tagged({0x0112: 8})) == 8
        assert exif_orientation(Tagged({0x0112: "6"})) == 1 and exif_orientation(Tagged({})) == 1
        assert exif_orientation(Tagged(SyntaxError("damaged EXIF"))) == 1

    def test_more_pixel_modes_and_frames(self):
        from PIL import Image

        from phase3_production.serving.images import decode_cost, shrink, to_8_bits, to_rgb, webp_header

        values = Image.fromarray(np.array([[-300, 70000]], dtype=np.int32))     # mode I beyond 0..65535
        assert np.asarray(to_8_bits(values)).tolist() == [[0, 255]]
        assert np.asarray(to_rgb(Image.new("LA", (1, 1), (200, 0)))).tolist() == [[[0, 0, 0]]]   # fully clear
        frames = [Image.new("RGB", (5, 4), (50 * i, 0, 0)) for i in range(3)]
        apng = self.encoded(frames[0], "PNG", save_all=True, append_images=frames[1:])
        assert decode_cost(apng).frames == 3 and decode_cost(self.encoded(frames[0], "BMP")).frames == 1
        alpha = self.encoded(Image.new("RGBA", (37, 21), (1, 2, 3, 100)), "WEBP", quality=80)   # VP8X, no animation
        assert alpha[12:16] == b"VP8X" and webp_header(alpha) == ((37, 21), "RGBA", 1)
        assert shrink(Image.new("RGB", (1000, 300)), (64, 16)).size == (1000, 150)          # each side its own factor

    def test_the_resize_is_bilinear(self):
        from PIL import Image

        from phase3_production.serving.images import rgb_array

        noise = Image.fromarray(np.random.default_rng(1).integers(0, 256, (23, 31, 3), dtype=np.uint8))
        expected = np.asarray(noise.resize((8, 6), Image.Resampling.BILINEAR, reducing_gap=None))
        assert np.array_equal(rgb_array(noise, (3, 6, 8)), expected)

    def test_preprocess_is_prepare_then_the_training_normalisation(self):
        from PIL import Image

        from phase3_production.serving.images import prepare, preprocess, to_model_input

        image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8))
        mean, std = np.array([0.5, 0.4, 0.3])[:, None, None], np.array([0.2, 0.25, 0.3])[:, None, None]
        expected = to_model_input(prepare(image, (3, 8, 8)), mean, std)
        got = preprocess(image, (3, 8, 8), mean, std)
        assert got.dtype == np.float32 and got.shape == (3, 8, 8) and np.array_equal(got, expected)


class TestLimits:
    """``serving/limits.py`` on a bare ASGI scope: each way a body read ends, the exact answer, the metrics."""

    @staticmethod
    def receive_of(*messages, then_wait: bool = True):
        queue = list(messages)

        async def receive():
            if queue:
                return queue.pop(0)
            if then_wait:
                await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        return receive

    @staticmethod
    def run(limits, receive, method="POST", headers=(), path="/v1/predict", scope_extra=None) -> list[dict]:
        sent = []

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": method, "path": path, "headers": list(headers), **(scope_extra or {})}
        asyncio.run(asyncio.wait_for(limits(scope, receive, send), 5))
        return sent

    @staticmethod
    def error_of(sent) -> tuple[int, dict, dict]:
        assert [m["type"] for m in sent[:2]] == ["http.response.start", "http.response.body"]
        headers = dict(sent[0]["headers"])
        body = json.loads(sent[1]["body"])
        assert headers[b"content-length"] == str(len(sent[1]["body"])).encode()
        assert headers[b"content-type"] == b"application/json"
        assert body["error"]["request_id"] == headers[b"x-request-id"].decode()
        return sent[0]["status"], headers, body["error"]

    @staticmethod
    async def echo(scope, receive, send):
        """Answers the body it was handed, then the type of the next message; checks what the middleware set up."""
        first, second = await receive(), await receive()
        assert set(first) == {"type", "body", "more_body"} and first["type"] == "http.request"
        assert first["more_body"] is False and scope["path"].startswith("/")
        await send({"type": "http.response.start", "status": 200})             # no headers: the id is added
        await send({"type": "http.response.body",
                    "body": first["body"] + second.get("type", "").encode() + scope["state"]["request_id"].encode()})

    def limits(self, app=None, **settings):
        from phase3_production.serving.limits import RequestLimits

        return RequestLimits(app or self.echo, **({"max_body_bytes": 10, "body_timeout_s": 0.2, "linger_s": 0.2}
                                                  | settings))

    def test_a_plain_short_request_id_is_kept_and_anything_else_replaced(self):
        from phase3_production.serving.limits import header, request_id_from

        assert request_id_from([(b"x-request-id", b"abc-123_X.y")]) == "abc-123_X.y"
        for unsafe in (b"has space", b"a" * 65, b"", b"\xe9t\xe9", b"line\nbreak"):
            fresh = request_id_from([(b"accept", b"*/*"), (b"x-request-id", unsafe)])
            assert len(fresh) == 32 and int(fresh, 16) >= 0
        assert request_id_from([(b"x-request-id", b"a" * 64)]) == "a" * 64
        assert request_id_from([]) != request_id_from([])
        scope = {"headers": [(b"content-length", b"12"), (b"x-a", b"1"), (b"x-a", b"2")]}
        assert header(scope, b"x-a") == b"1" and header(scope, b"nope") is None and header({}, b"x-a") is None

    def test_a_complete_body_is_replayed_to_the_app_then_the_real_receive_follows(self):
        sent = self.run(self.limits(), self.receive_of({"type": "http.request", "body": b"12345", "more_body": True},
                                                       {"type": "http.request", "body": b"67890"}, then_wait=False),
                        headers=[(b"x-request-id", b"given")])
        assert sent[0]["status"] == 200 and (b"x-request-id", b"given") in sent[0]["headers"]
        assert sent[1]["body"] == b"1234567890http.disconnectgiven"
        no_body_key = self.run(self.limits(), self.receive_of({"type": "http.request"}, then_wait=False),
                               scope_extra={"headers": []})
        assert no_body_key[1]["body"].startswith(b"http.disconnect")           # a message may omit "body"
        sent = []

        async def send(message):
            sent.append(message)

        bare = {"type": "http", "method": "POST", "path": "/x"}                  # no headers at all
        asyncio.run(self.limits()(bare, self.receive_of({"type": "http.request", "body": b"ab"}, then_wait=False),
                                  send))
        given = bare["state"]["request_id"].encode()
        assert sent[0]["status"] == 200 and dict(sent[0]["headers"])[b"x-request-id"] == given

    def test_a_declared_length_over_the_limit_is_a_413_without_lingering_when_the_client_waits(self):
        headers = [(b"content-length", b"11"), (b"expect", b"100-Continue")]
        sent = self.run(self.limits(), self.receive_of(), headers=headers)
        status, head, error = self.error_of(sent)
        assert (status, error["code"], error["message"]) == (413, "body_too_large",
                                                             "request body is over the 10-byte limit")
        assert head[b"connection"] == b"close" and len(sent) == 2 and sent[1]["more_body"] is False
        assert error["status"] == 413
        # Without "Expect: 100-continue" the client sends its body anyway: drain it, then close.
        sent = self.run(self.limits(), self.receive_of({"type": "http.request", "body": b"x" * 11}),
                        headers=[(b"content-length", b"11")])
        assert sent[0]["status"] == 413 and sent[1]["more_body"] is True and len(sent) == 3
        # A single message over the limit, the whole body: nothing more to drain.
        sent = self.run(self.limits(), self.receive_of({"type": "http.request", "body": b"x" * 11}))
        assert sent[0]["status"] == 413 and sent[1]["more_body"] is False and len(sent) == 2
        # A client that asked for permission but sends anyway: the reading had started, so drain.
        chunks = [{"type": "http.request", "body": b"x" * 6, "more_body": True}] * 2
        last = {"type": "http.request", "body": b"", "more_body": False}
        sent = self.run(self.limits(), self.receive_of(*chunks, last), headers=[(b"expect", b"100-continue")])
        assert sent[0]["status"] == 413 and len(sent) == 3
        at_limit = self.receive_of({"type": "http.request", "body": b"0123456789"}, then_wait=False)
        assert self.run(self.limits(), at_limit, headers=[(b"content-length", b"10")])[0]["status"] == 200

    def test_a_body_that_grows_over_the_limit_is_a_413_then_the_rest_is_drained(self):
        from phase3_production.serving.limits import RequestLimits

        chunks = [{"type": "http.request", "body": b"x" * 6, "more_body": True} for _ in range(4)]
        chunks[-1]["more_body"] = False
        limits = self.limits()
        sent = self.run(limits, self.receive_of(*chunks, then_wait=False))
        status, head, error = self.error_of(sent)
        assert status == 413 and sent[1]["more_body"] is True                   # the answer, then lingering
        assert sent[2] == {"type": "http.response.body", "body": b"", "more_body": False} and len(sent) == 3
        def linger(receive, **settings):
            limits = RequestLimits(self.echo, **({"max_body_bytes": 1, "linger_s": 0.2, "linger_bytes": 10} | settings))
            return asyncio.run(asyncio.wait_for(limits.linger(receive), 5))

        five = [{"type": "http.request", "body": b"x" * 5, "more_body": True}] * 5
        assert linger(self.receive_of(*five)) == 15                             # stops once past linger_bytes
        last = {"type": "http.request", "body": b"abc"}                         # no more_body: the end
        assert linger(self.receive_of(last, {"type": "http.request", "body": b"not read"})) == 3
        assert linger(self.receive_of({"type": "http.disconnect"})) == 0
        start = time.perf_counter()
        assert linger(self.receive_of()) == 0 and time.perf_counter() - start < 0.8     # a silent client: linger_s
        defaults = RequestLimits(self.echo, max_body_bytes=1)
        assert (defaults.body_timeout_s, defaults.linger_s, defaults.linger_bytes) == (15.0, 2.0, 64 * 1024 * 1024)

    def test_a_stalled_body_gets_408_and_a_stopping_server_503(self):
        from phase3_production.serving.limits import ShutdownNotice

        stalled = self.receive_of({"type": "http.request", "body": b"12", "more_body": True})
        status, head, error = self.error_of(self.run(self.limits(body_timeout_s=0.05), stalled))
        assert (status, error["code"], error["message"]) == (408, "body_timeout",
                                                             "the request body did not arrive within 0.05 s")
        assert head[b"connection"] == b"close" and error["status"] == 408 and self.run(
            self.limits(body_timeout_s=0.05), stalled)[1]["more_body"] is False
        assert self.run(self.limits(body_timeout_s=0), self.receive_of())[0]["status"] == 408   # no time at all
        stopping = ShutdownNotice()
        sent = []

        async def stop_then_read():
            async def send(message):
                sent.append(message)

            stopping.bind(asyncio.get_running_loop())
            stopping.set()
            scope = {"type": "http", "method": "POST", "path": "/v1/predict", "headers": []}
            await self.limits(stopping=stopping, body_timeout_s=5)(scope, self.receive_of(), send)

        asyncio.run(asyncio.wait_for(stop_then_read(), 5))
        status, head, error = self.error_of(sent)
        assert (status, error["code"]) == (503, "shutting_down") and head[b"retry-after"] == b"1"
        assert error["message"] == "the server is shutting down; retry on another connection"

    def test_a_client_gone_before_its_body_arrived_gets_nothing(self):
        assert self.run(self.limits(), self.receive_of({"type": "http.disconnect"})) == []

    def test_a_client_that_leaves_while_the_route_runs_cancels_it_and_is_counted_as_499(self):
        cancelled = []

        async def slow(scope, receive, send):
            assert scope["path"] == "/v1/predict"
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        metrics = self.Metrics()
        sent = self.run(self.limits(slow, metrics=metrics),
                        self.receive_of({"type": "http.request", "body": b"1"}, {"type": "http.request", "body": b""},
                                        {"type": "http.disconnect"}))
        assert sent == [] and cancelled == [True] and metrics.observed[0][1] == 499

    def test_a_client_that_keeps_talking_is_not_taken_for_one_that_left(self):
        async def slow(scope, receive, send):
            await asyncio.sleep(0.05)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"done"})

        metrics = self.Metrics()
        talking = self.receive_of({"type": "http.request", "body": b"1"}, {"type": "http.request", "body": b""})
        sent = self.run(self.limits(slow, metrics=metrics), talking)
        assert [m.get("status") for m in sent] == [200, None] and sent[1]["body"] == b"done"
        assert metrics.observed == [("unmatched", 200, True)]

    def test_a_notice_before_start_up_or_on_another_loop_changes_nothing(self):
        from phase3_production.serving.limits import ShutdownNotice

        notice = ShutdownNotice()
        notice.set()                                                           # nothing is bound yet: a no-op

        async def watch_unbound():
            return notice.watch().done()

        assert asyncio.run(watch_unbound()) is False
        other = asyncio.new_event_loop()
        notice.bind(other)
        other.close()
        notice.set()                                                           # a closed loop: a no-op too
        assert asyncio.run(watch_unbound()) is False                           # another loop: never done

    def test_an_unanswered_exception_is_a_500_that_keeps_the_connection(self):
        async def broken(scope, receive, send):
            raise RuntimeError("boom")

        async def broken_late(scope, receive, send):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            raise RuntimeError("boom after the start")

        for method in ("GET", "POST"):
            metrics = self.Metrics()
            with self.logged() as records:
                sent = self.run(self.limits(broken, metrics=metrics),
                                self.receive_of({"type": "http.request", "body": b""}), method=method,
                                headers=[(b"x-request-id", b"r1")])
            status, head, error = self.error_of(sent)
            assert (status, error["code"]) == (500, "internal_error") and b"connection" not in head
            assert error["message"] == "the server failed; quote the request id"
            assert [(r.getMessage(), r.exc_info[0]) for r in records] == [("request r1 failed", RuntimeError)]
            assert metrics.observed == [("unmatched", 500, True)]
        assert [m["type"] for m in self.run(self.limits(broken_late), self.receive_of(), method="GET")] == [
            "http.response.start"]                                              # too late for a second answer

    class Metrics:
        """Records what the middleware reports: requests in flight, and (path, status, plausible seconds)."""

        def __init__(self):
            self.in_flight, self.observed, self.level = self, [], 0

        def inc(self):
            self.level += 1

        def dec(self):
            self.level -= 1

        def observe_request(self, path, status, seconds):
            self.observed.append((path, status, 0 <= seconds < 5))

    @staticmethod
    def logged():
        import contextlib
        import logging

        @contextlib.contextmanager
        def capture():
            records = []
            handler = logging.Handler()
            handler.emit = records.append
            logger = logging.getLogger("ml60.serve")
            logger.addHandler(handler)
            try:
                yield records
            finally:
                logger.removeHandler(handler)

        return capture()

    def test_other_scopes_pass_through_and_metrics_label_the_route(self):
        seen = []

        async def app(scope, receive, send):
            seen.append((scope["type"], receive, send))
            if scope["type"] == "http":
                assert (await receive())["type"] == "http.request"
                await send({"type": "http.response.start", "status": 204, "headers": []})
                await send({"type": "http.response.body", "body": b""})

        metrics = self.Metrics()
        limits = self.limits(app, metrics=metrics, known_paths=frozenset({"/known"}))
        receive, send = object(), object()
        asyncio.run(limits({"type": "lifespan"}, receive, send))
        assert seen == [("lifespan", receive, send)] and metrics.observed == []

        class Route:
            path = "/v1/items/{id}"

        for path, extra in (("/v1/items/7", {"route": Route()}), ("/known", {}), ("/random", {})):
            self.run(limits, self.receive_of({"type": "http.request", "body": b""}), method="GET", path=path,
                     scope_extra=extra)
        assert metrics.observed == [("/v1/items/{id}", 204, True), ("/known", 204, True), ("unmatched", 204, True)]
        assert metrics.level == 0
