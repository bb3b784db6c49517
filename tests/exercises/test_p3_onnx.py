"""Checks for p3-onnx's exercises (``make check M=p3-onnx``), and the mistakes they must catch.

Every expected value is computed here, independently of the code under test:
by the PyTorch model itself in eval mode, by ONNX Runtime on the exported file,
by ``np.percentile``, or planted by the check (a fake session whose logits differ
from PyTorch's by known amounts, a fake engine whose calls take known times on a
fake clock).  The code under test may be a learner's, or a stub.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import torch

from ml60.grading import exercise, expect, wrong_answer
from phase3_production import inference_benchmark, onnx_export


def tiny_cnn(seed: int = 0, confident: bool = False) -> torch.nn.Module:
    """A small CNN with BatchNorm and Dropout, its BatchNorm statistics moved off their defaults, in train mode."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Dropout(0.5), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5))
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, 6, 6) * 2 + 1)   # running mean and variance now differ from 0 and 1
        if confident:
            model[-1].weight.mul_(25.0)               # wide logits: softmax probabilities near 0 and 1
    return model.train()


def images(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 6, 6)).astype(np.float32)


def eval_logits(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """The answer key: a copy of the model in eval mode, so the code under test cannot change it."""
    reference = copy.deepcopy(model).eval()
    with torch.no_grad():
        return reference(torch.from_numpy(x)).numpy()


# --------------------------------------------------------------------------- p3-onnx.1 export


@exercise("p3-onnx.1")
def test_export_graph_serves_any_batch_size(tmp_path):
    import onnxruntime as ort

    model = tiny_cnn().eval()
    path = tmp_path / "tiny.onnx"
    try:
        onnx_export.export_graph(model, torch.zeros(2, 3, 6, 6), path, opset=onnx_export.OPSET)
    except NotImplementedError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of the export becomes a diagnosis
        expect(False, f"export_graph raised {type(exc).__name__}: {str(exc).strip()[:300]}")
    expect(path.is_file(), f"export_graph wrote no file at {path.name}: save the exported program there "
                           "(torch.onnx.export(..., dynamo=True) returns it; call its .save(path))")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs, outputs = session.get_inputs(), session.get_outputs()
    expect([i.name for i in inputs] == [onnx_export.INPUT_NAME],
           f"the graph's input is called {[i.name for i in inputs]}, but the service, the parity check and the "
           f"benchmark feed {onnx_export.INPUT_NAME!r}: name it (input_names=[INPUT_NAME])")
    expect(outputs[0].name == onnx_export.OUTPUT_NAME,
           f"the graph's output is called {outputs[0].name!r}, but its readers ask for {onnx_export.OUTPUT_NAME!r}: "
           "name it (output_names=[OUTPUT_NAME])")
    batch_dimension = inputs[0].shape[0]
    expect(not isinstance(batch_dimension, int),
           f"the input's batch dimension is fixed at {batch_dimension}, the example's size: no dynamic batch axis, "
           "so ONNX Runtime refuses any other batch. Declare dimension 0 dynamic "
           "(dynamic_shapes=({0: torch.export.Dim('batch')},) with dynamo=True)")
    for n in (1, 3, 7):
        x = images(n, seed=n)
        try:
            got = session.run(None, {onnx_export.INPUT_NAME: x})[0]
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime's refusal becomes a diagnosis
            expect(False, f"ONNX Runtime refused a batch of {n}: {str(exc).strip()[:200]}. "
                          "Is there no dynamic batch axis?")
        expected = eval_logits(model, x)
        expect(got.shape == expected.shape,
               f"a batch of {n} gave logits of shape {got.shape}, expected {expected.shape}")
        error = float(np.abs(got - expected).max())
        expect(error < 1e-4, f"ONNX Runtime's logits differ from the eval-mode model's by {error:.2g} on a batch of "
                             f"{n}: the graph computes something else (was it exported in train mode?)")


@wrong_answer("p3-onnx.1", diagnosis="no dynamic batch axis")
def export_without_dynamic_batch(model, example, onnx_path, *, opset=onnx_export.OPSET):
    """The batch dimension is left as traced: the file accepts only batches of 2."""
    program = torch.onnx.export(model, (example,), input_names=[onnx_export.INPUT_NAME],
                                output_names=[onnx_export.OUTPUT_NAME], opset_version=opset, dynamo=True)
    program.save(str(onnx_path))


@wrong_answer("p3-onnx.1", diagnosis="feed 'images'")
def export_with_default_names(model, example, onnx_path, *, opset=onnx_export.OPSET):
    """Input and output are not named: the exporter calls them after the Python argument and the last layer."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(model, (example,), dynamic_shapes=({0: batch},), opset_version=opset, dynamo=True)
    program.save(str(onnx_path))


# --------------------------------------------------------------------------- p3-onnx.2 parity


class FakeSession:
    """Stands in for an ONNX Runtime session: returns the eval-mode logits, plus differences planted per image."""

    def __init__(self, model: torch.nn.Module, x: np.ndarray, planted: dict[int, np.ndarray] | None = None):
        self.logits = eval_logits(model, x)
        for index, delta in (planted or {}).items():
            self.logits[index] += delta
        self.rows = {row.tobytes(): i for i, row in enumerate(x)}
        self.calls = 0

    def get_inputs(self):
        return [SimpleNamespace(name=onnx_export.INPUT_NAME, shape=["batch", 3, 6, 6], type="tensor(float)")]

    def get_outputs(self):
        return [SimpleNamespace(name=onnx_export.OUTPUT_NAME, shape=["batch", 5], type="tensor(float)")]

    def run(self, output_names, feed):
        self.calls += 1
        expect(output_names is None or list(output_names) == [onnx_export.OUTPUT_NAME],
               f"the session was asked for outputs {output_names}; its only output is {onnx_export.OUTPUT_NAME!r} "
               "(or pass None for all outputs)")
        expect(isinstance(feed, dict) and list(feed) == [onnx_export.INPUT_NAME],
               f"the session was fed {list(feed) if isinstance(feed, dict) else type(feed).__name__}; "
               f"ONNX Runtime takes a dict {{{onnx_export.INPUT_NAME!r}: batch}}")
        x = feed[onnx_export.INPUT_NAME]
        expect(isinstance(x, np.ndarray) and x.dtype == np.float32,
               f"the session was fed {getattr(x, 'dtype', type(x).__name__)}; ONNX Runtime wants a float32 NumPy array")
        indices = [self.rows.get(row.tobytes()) for row in x]
        expect(None not in indices, "the session was fed images that are not the ones given to parity()")
        return [self.logits[indices].copy()]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    return shifted / shifted.sum(1, keepdims=True)


def check_result_shape(result) -> None:
    expect(isinstance(result, dict) and {"max_abs_diff", "same_class"} <= set(result),
           "parity() returns a dict with 'max_abs_diff' and 'same_class' (and 'images'), got "
           f"{sorted(result) if isinstance(result, dict) else type(result).__name__}")


@exercise("p3-onnx.2")
def test_parity_of_identical_computations_is_exact():
    model, x = tiny_cnn(seed=3), images(10, seed=3)   # the model arrives in train mode, as after training
    session = FakeSession(model, x)
    result = onnx_export.parity(model, session, x, batch_size=4)
    check_result_shape(result)
    expect(session.calls > 0, "the session was never run: compare its logits with PyTorch's")
    diff = float(result["max_abs_diff"])
    expect(diff < 1e-5, f"the session computes exactly what the model computes in eval mode, yet max_abs_diff is "
                        f"{diff:.3g}: is the model left in train mode? Dropout zeroes random units and BatchNorm "
                        "uses the batch's statistics there; call model.eval() first")
    expect(result["same_class"] == len(x), f"same_class is {result['same_class']} for {len(x)} images that all agree: "
                                           "count the rows whose argmax over the classes (axis 1) is the same")


@exercise("p3-onnx.2")
def test_parity_reports_the_largest_logit_difference_of_any_batch():
    model, x = tiny_cnn(seed=4, confident=True).eval(), images(10, seed=4)
    clean = eval_logits(model, x)
    top2 = np.sort(clean, axis=1)[:, -2:]
    big = float(2 * (top2[:, 1] - top2[:, 0]).max() + 1.0)    # larger than any class flip below
    raise_winner = np.zeros(5, np.float32)
    raise_winner[clean[0].argmax()] = big                        # image 0, first batch: same class, logit far off
    flip = np.zeros(5, np.float32)
    runner_up = int(np.argsort(clean[5])[-2])
    flip[runner_up] = top2[5, 1] - top2[5, 0] + 0.05             # image 5, middle batch: the class changes
    session = FakeSession(model, x, planted={0: raise_winner, 5: flip})
    result = onnx_export.parity(model, session, x, batch_size=4)
    check_result_shape(result)
    onnx_logits = session.logits
    expected_diff = float(np.abs(clean - onnx_logits).max())
    expected_same = int((clean.argmax(1) == onnx_logits.argmax(1)).sum())
    diff = float(result["max_abs_diff"])
    if abs(diff - expected_diff) > 1e-4:
        as_probabilities = float(np.abs(softmax(clean) - softmax(onnx_logits)).max())
        last_batch = float(np.abs(clean[8:] - onnx_logits[8:]).max())
        expect(abs(diff - as_probabilities) > 1e-4,
               f"max_abs_diff is {diff:.3g}, the largest difference of probabilities, while the logits of image 0 "
               f"differ by {expected_diff:.3g}: compare the logits, not probabilities (softmax squashes differences, "
               "so a check on probabilities passes a broken export)")
        expect(abs(diff - last_batch) > 1e-4,
               f"max_abs_diff is {diff:.3g}, the last batch's largest difference, while image 0 in the first batch "
               f"differs by {expected_diff:.3g}: keep the maximum over every batch, not the last one's")
        expect(False, f"max_abs_diff is {diff:.3g}, but the largest |PyTorch logit - session logit| over all images "
                      f"and classes is {expected_diff:.3g} (image 0, first batch of 4)")
    expect(result["same_class"] == expected_same,
           f"same_class is {result['same_class']}, expected {expected_same}: image 5's predicted class differs, the "
           "other 9 agree. Count the rows whose argmax over the classes (axis 1) matches")


@wrong_answer("p3-onnx.2", diagnosis="left in train mode")
def parity_in_train_mode(model, session, images, batch_size=250):
    """The model is used as it arrives, in train mode: Dropout and batch statistics change its outputs."""
    worst, same = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].astype(np.float32)
            a = model(torch.from_numpy(x)).numpy()
            b = session.run(None, {onnx_export.INPUT_NAME: x})[0]
            worst = max(worst, float(np.abs(a - b).max()))
            same += int((a.argmax(1) == b.argmax(1)).sum())
    return {"images": len(images), "max_abs_diff": worst, "same_class": same}


@wrong_answer("p3-onnx.2", diagnosis="compare the logits, not probabilities")
def parity_on_probabilities(model, session, images, batch_size=250):
    """Both sides go through softmax before the comparison, which hides large logit differences."""
    model = model.eval()
    worst, same = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].astype(np.float32)
            a = torch.softmax(model(torch.from_numpy(x)), 1).numpy()
            b = softmax(session.run(None, {onnx_export.INPUT_NAME: x})[0])
            worst = max(worst, float(np.abs(a - b).max()))
            same += int((a.argmax(1) == b.argmax(1)).sum())
    return {"images": len(images), "max_abs_diff": worst, "same_class": same}


@wrong_answer("p3-onnx.2", diagnosis="keep the maximum over every batch")
def parity_last_batch_only(model, session, images, batch_size=250):
    """The worst difference is overwritten by each batch instead of kept: only the last batch counts."""
    model = model.eval()
    worst, same = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].astype(np.float32)
            a = model(torch.from_numpy(x)).numpy()
            b = session.run(None, {onnx_export.INPUT_NAME: x})[0]
            worst = float(np.abs(a - b).max())
            same += int((a.argmax(1) == b.argmax(1)).sum())
    return {"images": len(images), "max_abs_diff": worst, "same_class": same}


# --------------------------------------------------------------------------- p3-onnx.3 timed calls


class FakeClock:
    """A clock that moves only when the fake engine works: every duration is known exactly."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class SlowStartEngine:
    """An engine whose first calls are slow (lazy initialisation), then fast with some spread."""

    DURATIONS_MS = [80.0, 40.0, 20.0, 1.0, 3.0, 1.5, 2.0, 9.0, 1.0, 1.2, 1.1]

    def __init__(self, clock: FakeClock):
        self.clock, self.batches = clock, []

    def __call__(self, batch):
        self.batches.append(batch)
        self.clock.now += self.DURATIONS_MS[min(len(self.batches) - 1, len(self.DURATIONS_MS) - 1)] / 1000.0
        return np.zeros((len(batch), 5), np.float32)


@exercise("p3-onnx.3")
def test_time_engine_calls_discards_the_warm_up_and_times_each_call():
    clock = FakeClock()
    engine = SlowStartEngine(clock)
    batch = np.zeros((2, 3, 6, 6), np.float32)
    samples = inference_benchmark.time_engine_calls(engine, batch, warmup=3, repeats=5, clock=clock)
    expect(len(engine.batches) == 8, f"the engine was called {len(engine.batches)} times; expected warmup + repeats "
                                     "= 3 + 5 = 8 calls")
    expect(all(b is batch for b in engine.batches), "the engine was called with something other than the batch")
    samples_ms = [1000.0 * float(s) for s in samples]
    expect(len(samples_ms) == 5, f"{len(samples_ms)} samples for 5 timed calls: one sample per timed call")
    expected = SlowStartEngine.DURATIONS_MS[3:8]
    if np.allclose(samples_ms, 0.0, atol=1e-3):
        expect(False, "every sample is about 0 ms: read the time with the clock argument, not a clock of your own")
    expect(not np.allclose(samples_ms, SlowStartEngine.DURATIONS_MS[:5]),
           f"the samples {[round(s, 3) for s in samples_ms]} ms start with the first calls (80, 40, 20 ms: lazy "
           "initialisation): run warmup calls first and throw their times away")
    expect(not np.allclose(samples_ms, np.mean(expected)),
           f"every sample is {samples_ms[0]:.2f} ms, the average: time each call on its own (clock before and after "
           "each call), or the tail (p95, p99) is lost")
    expect(np.allclose(samples_ms, expected),
           f"samples {[round(s, 3) for s in samples_ms]} ms, expected {expected} ms: the engine's calls 4 to 8, each "
           "timed from just before to just after the call, in seconds")


@wrong_answer("p3-onnx.3", diagnosis="run warmup calls first")
def time_without_warm_up(run, batch, *, warmup, repeats, clock=None):
    """Every call is timed from the first one: the warm-up count is ignored."""
    samples = []
    for _ in range(warmup + repeats):
        start = clock()
        run(batch)
        samples.append(clock() - start)
    return samples[:repeats]


@wrong_answer("p3-onnx.3", diagnosis="time each call on its own")
def time_the_loop_and_divide(run, batch, *, warmup, repeats, clock=None):
    """The loop is timed once and divided by the number of calls: one average, repeated."""
    for _ in range(warmup):
        run(batch)
    start = clock()
    for _ in range(repeats):
        run(batch)
    return [(clock() - start) / repeats] * repeats


# --------------------------------------------------------------------------- p3-onnx.4 percentiles


def describe_position(n: int, q: float, ordered: list[float]) -> str:
    position = (n - 1) * q / 100
    lower = int(position)
    upper = min(lower + 1, n - 1)
    return f"position (n - 1) * q / 100 = {position:g}, between {ordered[lower]:g} and {ordered[upper]:g}"


def check_summary(samples: list[float]) -> None:
    summary = inference_benchmark.latency_summary(list(samples))
    keys = ("mean_ms", "p50_ms", "p95_ms", "p99_ms")
    missing = [k for k in keys if not isinstance(summary, dict) or k not in summary]
    expect(not missing, f"latency_summary returns no {', '.join(missing)}")
    ordered = sorted(samples)
    mean, median = float(np.mean(samples)), float(np.median(samples))
    expect(abs(summary["mean_ms"] - mean) < 1e-9, f"mean_ms is {summary['mean_ms']:g}, expected {mean:g}: "
                                                  "the sum of the samples over their count")
    if abs(summary["p50_ms"] - median) > 1e-9 and abs(summary["p50_ms"] - mean) < 1e-9:
        expect(False, f"p50_ms is {summary['p50_ms']:g}, the mean: p50 is the median, not the mean "
                      f"({median:g} here; a few slow calls pull the mean up, the median is the typical call)")
    for q in (50, 95, 99):
        got, want = float(summary[f"p{q}_ms"]), float(np.percentile(samples, q))
        if abs(got - want) > 1e-9:
            expect(abs(got - _interpolate(list(samples), q)) > 1e-9,
                   f"p{q}_ms is {got:g}, read from the samples in the order they came: sort them first")
        expect(abs(got - want) < 1e-9,
               f"p{q}_ms is {got:g}, expected {want:g} for {len(samples)} samples "
               f"({describe_position(len(samples), q, ordered)}): is the position off by one (n * q / 100 instead "
               "of (n - 1) * q / 100), or not interpolated between the two samples around it?")


def _interpolate(values: list[float], q: float) -> float:
    position = (len(values) - 1) * q / 100
    lower = int(position)
    upper = min(lower + 1, len(values) - 1)
    return values[lower] + (values[upper] - values[lower]) * (position - lower)


@exercise("p3-onnx.4")
def test_latency_summary_by_hand():
    check_summary([4.0, 1.0, 3.0, 100.0, 2.0])   # sorted 1, 2, 3, 4, 100: p50 = 3, p95 = 4 + 0.8 * 96 = 80.8


@exercise("p3-onnx.4")
def test_latency_summary_matches_numpy_on_skewed_latencies():
    rng = np.random.default_rng(7)
    check_summary([float(v) for v in rng.lognormal(0.0, 0.6, 57)])
    check_summary([2.5])


@wrong_answer("p3-onnx.4", diagnosis="the median, not the mean")
def summary_with_mean_as_p50(samples_ms):
    """The mean is reported as p50."""
    ordered = sorted(samples_ms)
    mean = sum(ordered) / len(ordered)
    return {"mean_ms": mean, "p50_ms": mean, "p95_ms": _interpolate(ordered, 95), "p99_ms": _interpolate(ordered, 99)}


@wrong_answer("p3-onnx.4", diagnosis="is the position off by one")
def summary_position_off_by_one(samples_ms):
    """Percentile q is read at position n * q / 100: one place too far, and the last sample for the tail."""
    ordered = sorted(samples_ms)

    def percentile(q):
        position = min(len(ordered) * q / 100, len(ordered) - 1)
        lower = int(position)
        upper = min(lower + 1, len(ordered) - 1)
        return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)

    return {"mean_ms": sum(ordered) / len(ordered), "p50_ms": percentile(50), "p95_ms": percentile(95),
            "p99_ms": percentile(99)}


@wrong_answer("p3-onnx.4", diagnosis="sort them first")
def summary_unsorted(samples_ms):
    """The percentiles are read from the samples in arrival order."""
    values = list(samples_ms)
    return {"mean_ms": sum(values) / len(values), "p50_ms": _interpolate(values, 50),
            "p95_ms": _interpolate(values, 95), "p99_ms": _interpolate(values, 99)}


# --------------------------------------------------------------------------- p3-onnx.5 the distillation loss


def numpy_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def hand_distillation(student, teacher, labels, temperature, alpha, smoothing=0.0, *, t_squared=True,
                      reverse=False, soften_teacher=True, per_class_mean=False) -> float:
    """The loss in NumPy, written out term by term; the keyword arguments make the common mistakes on purpose."""
    log_q = numpy_log_softmax(student / temperature)
    log_p = numpy_log_softmax(teacher / (temperature if soften_teacher else 1.0))
    p, q = np.exp(log_p), np.exp(log_q)
    terms = q * (log_q - log_p) if reverse else p * (log_p - log_q)
    kl = terms.mean() if per_class_mean else terms.sum(1).mean()
    soft = kl * (temperature ** 2 if t_squared else 1.0)
    n, k = student.shape
    target = np.full((n, k), smoothing / k)
    target[np.arange(n), labels] += 1 - smoothing
    hard = -(target * numpy_log_softmax(student)).sum(1).mean()
    return float(alpha * soft + (1 - alpha) * hard)


def distill_case(seed: int = 0, n: int = 8, k: int = 5):
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 2, (n, k)).astype(np.float32), rng.normal(0, 3, (n, k)).astype(np.float32),
            rng.integers(0, k, n))


def our_distillation(student, teacher, labels, **kwargs) -> float:
    from phase3_production import distill

    value = distill.distillation_loss(torch.from_numpy(student), torch.from_numpy(teacher), torch.from_numpy(labels),
                                      **kwargs)
    expect(torch.is_tensor(value) and value.ndim == 0, "distillation_loss must return one number, a 0-d tensor "
                                                       "the trainer can call backward() on")
    return float(value)


@exercise("p3-onnx.5")
def test_distillation_loss_matches_the_formula_term_by_term():
    student, teacher, labels = distill_case()
    for temperature, alpha, smoothing in ((4.0, 0.9, 0.0), (2.0, 0.5, 0.1), (1.0, 0.7, 0.0)):
        ours = our_distillation(student, teacher, labels, temperature=temperature, alpha=alpha,
                                label_smoothing=smoothing)
        expected = hand_distillation(student, teacher, labels, temperature, alpha, smoothing)
        if abs(ours - expected) < 1e-4:
            continue
        mistakes = {"the soft term is not multiplied by T * T (its gradients shrink as 1 / T^2; scaling keeps the "
                    "two terms balanced at any temperature)": dict(t_squared=False),
                    "the KL divergence runs the wrong way: F.kl_div takes the student's log-probabilities first "
                    "and the teacher's probabilities second": dict(reverse=True),
                    "the teacher's probabilities must be softened too: divide the teacher's logits by T too":
                        dict(soften_teacher=False),
                    "the KL divergence is averaged over classes as well as images: use reduction=\"batchmean\" "
                    "(the sum over classes, averaged over the batch)": dict(per_class_mean=True)}
        found = [why for why, mistake in mistakes.items()
                 if abs(ours - hand_distillation(student, teacher, labels, temperature, alpha, smoothing,
                                                 **mistake)) < 1e-4]
        expect(False, f"T = {temperature}, alpha = {alpha}, label smoothing {smoothing}: loss {ours:.5f}, expected "
                      f"{expected:.5f}: " + (found[0] if found else
                                             "alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy"))


@exercise("p3-onnx.5")
def test_distillation_loss_mixes_the_two_terms_by_alpha():
    student, teacher, labels = distill_case(seed=1)
    only_labels = our_distillation(student, teacher, labels, temperature=4.0, alpha=0.0, label_smoothing=0.1)
    cross_entropy = float(torch.nn.functional.cross_entropy(torch.from_numpy(student), torch.from_numpy(labels),
                                                            label_smoothing=0.1))
    expect(abs(only_labels - cross_entropy) < 1e-5,
           f"with alpha = 0 the loss is {only_labels:.5f}, but it should be plain cross-entropy with the labels "
           f"({cross_entropy:.5f}), at temperature 1, with the label smoothing passed in")
    same = our_distillation(teacher, teacher, labels, temperature=4.0, alpha=1.0)
    expect(abs(same) < 1e-5, f"a student equal to its teacher has nothing left to learn from it, yet alpha = 1 "
                             f"gives {same:.5f}: the soft term is a KL divergence, 0 when the distributions agree")


@exercise("p3-onnx.5")
def test_no_gradient_flows_into_the_teacher():
    from phase3_production import distill

    student, teacher, labels = distill_case(seed=2)
    s = torch.from_numpy(student).requires_grad_(True)
    t = torch.from_numpy(teacher).requires_grad_(True)
    distill.distillation_loss(s, t, torch.from_numpy(labels), temperature=4.0, alpha=0.9).backward()
    expect(s.grad is not None and float(s.grad.abs().sum()) > 0, "the student's logits got no gradient: the loss "
                                                                  "must be computed from them")
    expect(t.grad is None or float(t.grad.abs().sum()) == 0,
           "a gradient reached the teacher's logits: they are targets, so no gradient may flow into the "
           "teacher (detach them)")


@wrong_answer("p3-onnx.5", diagnosis="multiplied by T * T")
def distillation_without_t_squared(student_logits, teacher_logits, labels, *, temperature, alpha, label_smoothing=0.0):
    """The softened term is left unscaled: at T = 4 it weighs 16 times too little against the labels."""
    F = torch.nn.functional
    soft = F.kl_div(F.log_softmax(student_logits / temperature, 1), F.softmax(teacher_logits.detach() / temperature, 1),
                    reduction="batchmean")
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)


@wrong_answer("p3-onnx.5", diagnosis="runs the wrong way")
def distillation_kl_reversed(student_logits, teacher_logits, labels, *, temperature, alpha, label_smoothing=0.0):
    """The teacher's log-probabilities and the student's probabilities: KL(student || teacher)."""
    F = torch.nn.functional
    soft = F.kl_div(F.log_softmax(teacher_logits.detach() / temperature, 1), F.softmax(student_logits / temperature, 1),
                    reduction="batchmean") * temperature * temperature
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)


@wrong_answer("p3-onnx.5", diagnosis="divide the teacher's logits by T too")
def distillation_teacher_not_softened(student_logits, teacher_logits, labels, *, temperature, alpha,
                                      label_smoothing=0.0):
    """Only the student is softened; the teacher's sharp distribution hides its dark knowledge."""
    F = torch.nn.functional
    soft = F.kl_div(F.log_softmax(student_logits / temperature, 1), F.softmax(teacher_logits.detach(), 1),
                    reduction="batchmean") * temperature * temperature
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)


@wrong_answer("p3-onnx.5", diagnosis="batchmean")
def distillation_mean_reduction(student_logits, teacher_logits, labels, *, temperature, alpha, label_smoothing=0.0):
    """reduction="mean" divides by images x classes: the soft term is 10 times too small on CIFAR-10."""
    import warnings

    F = torch.nn.functional
    with warnings.catch_warnings():   # PyTorch warns about this very mistake; the check must catch it without
        warnings.simplefilter("ignore")
        soft = F.kl_div(F.log_softmax(student_logits / temperature, 1),
                        F.softmax(teacher_logits.detach() / temperature, 1), reduction="mean") * temperature * temperature
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)


@wrong_answer("p3-onnx.5", diagnosis="no gradient may flow into the teacher")
def distillation_teacher_not_detached(student_logits, teacher_logits, labels, *, temperature, alpha,
                                      label_smoothing=0.0):
    """The teacher's logits stay in the graph: backward() would train the teacher towards the student."""
    F = torch.nn.functional
    soft = F.kl_div(F.log_softmax(student_logits / temperature, 1), F.softmax(teacher_logits / temperature, 1),
                    reduction="batchmean") * temperature * temperature
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
