"""Explain the pipeline: one CIFAR-10 JPEG, from the archive to a served answer, every step named in the code.

``python -m phase3_production.pipeline`` writes two files beside this one:

* ``PIPELINE.md``: each step in one sentence, with the files and functions
  that do it and the constants it uses;
* ``pipeline.png``: the same steps as boxes and arrows, the training side on
  the left, the export in the middle, the serving side on the right, and the
  normalisation the two sides must share highlighted.

Nothing on the page is copied by hand.  A function is named by what
``inspect.getsourcefile`` and ``__qualname__`` say about the object itself,
so a renamed or moved function changes the page, and a deleted one stops
this module from importing.  A value is read from the code: module constants
by name, the service's settings from ``Settings``' defaults (and their
environment variables from ``Settings.from_env``), a default from a
function's signature, and the few facts that live inside a function body
(the resize filter, the metadata keys written at export and read at start,
the fields of a reply) from the function's syntax tree.
``tests/test_pipeline_page.py`` regenerates the page in memory and compares
it with the committed one: a changed constant or a renamed function fails
that test, with the command that regenerates the page, instead of leaving the
page quietly wrong.  ``--check`` does the same comparison here.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import os
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
PAGE_NAME, PICTURE_NAME = "PIPELINE.md", "pipeline.png"
COMMAND = "python -m phase3_production.pipeline"
SIDES = {"training": "Training side (phase 2)", "export": "The hand-over (p3-onnx)",
         "serving": "Serving side (p3-serve, p3-monitor)"}
MIB = 1024 * 1024


class PipelineError(RuntimeError):
    """A fact the page needs could not be read from the code: the message says which and where."""


# --------------------------------------------------------------------------- reading the code


@dataclass(frozen=True)
class Code:
    """Where a function or class lives: its file (from the repository root) and its qualified name."""

    path: str
    qualname: str

    @property
    def module(self) -> str:
        return ".".join(Path(self.path).with_suffix("").parts)


@dataclass(frozen=True)
class Constant:
    name: str        # "MAX_PIXELS", "VALIDATION_SIZE", "decode_images(mode=)"
    shown: str       # the value as the page prints it
    source: str      # "phase3_production/serving/config.py: Settings.max_pixels"
    brief: str | None = None   # a shorter value for the picture (None: ``shown``)


@dataclass(frozen=True)
class Step:
    number: int
    title: str
    side: str                      # a key of SIDES
    what: str                      # one sentence
    code: tuple[Code, ...]
    constants: tuple[Constant, ...]
    shared: bool = False           # part of the normalisation both sides must agree on


def relative(path: str | Path) -> str:
    return Path(path).resolve().relative_to(ROOT).as_posix()


def code_of(obj) -> Code:
    """The file and qualified name of a function, method or class, asked of the object itself."""
    target = inspect.unwrap(obj)
    source = inspect.getsourcefile(target)
    if source is None:
        raise PipelineError(f"{obj!r} has no source file")
    return Code(relative(source), target.__qualname__)


def resolve(code: Code):
    """The object a :class:`Code` names, imported afresh from its file's module: the page's names must exist."""
    import importlib

    owner = importlib.import_module(code.module)
    for part in code.qualname.split("."):
        owner = getattr(owner, part)
    return owner


def show(value) -> str:
    """A value as the page prints it: ints with thousands separators, floats short, sequences in brackets."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, Path):
        return repr(value.as_posix())
    if isinstance(value, (list, tuple)):
        inner = ", ".join(show(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(value) == 1 else ''})"
    return repr(value)


def unit(value: int) -> str:
    """``4 MiB``: a byte count in its binary unit when it has a round one, else with separators."""
    if value and value % MIB == 0:
        return f"{value // MIB} MiB"
    if value and value % 1024 == 0:
        return f"{value // 1024} KiB"
    return f"{value:,}"


def size(value: int) -> str:
    """``4,194,304 (4 MiB)``: a byte count with its binary unit when it has a round one."""
    short = unit(value)
    return f"{value:,}" if short == f"{value:,}" else f"{value:,} ({short})"


def constant(module, name: str, *, shown: str | None = None, brief: str | None = None) -> Constant:
    """A module-level constant, read by name (a renamed constant is an AttributeError, not a stale page)."""
    if not hasattr(module, name):
        raise PipelineError(f"{relative(module.__file__)} has no constant {name}")
    value = getattr(module, name)
    return Constant(name, shown if shown is not None else show(value), f"{relative(module.__file__)}: {name}", brief)


def default_of(function, parameter: str) -> Constant:
    """The default of one parameter, from the function's signature."""
    signature = inspect.signature(function)
    if parameter not in signature.parameters:
        raise PipelineError(f"{code_of(function).qualname} has no parameter {parameter!r}")
    code = code_of(function)
    return Constant(f"{code.qualname}({parameter}=)", show(signature.parameters[parameter].default),
                    f"{code.path}: {code.qualname}")


def syntax(obj) -> ast.AST:
    return ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(obj))))


def resize_filters(function) -> tuple[str, ...]:
    """The Pillow filters ``function`` passes to ``resize`` (``Image.BILINEAR``, ``Image.Resampling.BILINEAR``)."""
    found = []
    for node in ast.walk(syntax(function)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "resize":
            given = list(node.args[1:2]) + [k.value for k in node.keywords if k.arg == "resample"]
            found += [g.attr for g in given if isinstance(g, ast.Attribute)]
            if not given:
                found.append("BICUBIC (Pillow's default)")
    if not found:
        raise PipelineError(f"{code_of(function).path}: {code_of(function).qualname} calls no resize(..., filter)")
    return tuple(dict.fromkeys(found))


def dict_keys(function, variable: str | None = None) -> tuple[str, ...]:
    """The string keys of the dict literal assigned to ``variable`` in ``function`` (None: the one it returns)."""
    for node in ast.walk(syntax(function)):
        if variable and isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict) and any(
                isinstance(t, ast.Name) and t.id == variable for t in node.targets):
            return tuple(k.value for k in node.value.keys if isinstance(k, ast.Constant))
        if variable is None and isinstance(node, ast.Return) and isinstance(node.value, ast.Dict):
            return tuple(k.value for k in node.value.keys if isinstance(k, ast.Constant))
    where = f"a dict assigned to {variable}" if variable else "a returned dict"
    raise PipelineError(f"{code_of(function).path}: {code_of(function).qualname} has no {where}")


def subscript_keys(function, name: str) -> tuple[str, ...]:
    """The string keys ``function`` reads as ``name["..."]``, in order of appearance."""
    found = []
    for node in ast.walk(syntax(function)):
        if (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == name
                and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str)):
            found.append((node.lineno, node.col_offset, node.slice.value))
    if not found:
        raise PipelineError(f"{code_of(function).path}: {code_of(function).qualname} reads no {name}[...]")
    return tuple(dict.fromkeys(key for *_, key in sorted(found)))


def settings_defaults() -> dict:
    from phase3_production.serving.config import Settings

    return {f.name: f.default for f in dataclasses.fields(Settings)}


def environment_names() -> dict[str, str]:
    """``{field: environment variable}`` as ``Settings.from_env`` reads them (``intra_op_threads: ORT_THREADS``)."""
    from phase3_production.serving.config import Settings

    names = {}
    for node in ast.walk(syntax(Settings.from_env)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "cls":
            for keyword in node.keywords:
                for inner in ast.walk(keyword.value):
                    if (isinstance(inner, ast.Call) and isinstance(inner.func, ast.Name) and inner.func.id == "_env"
                            and inner.args and isinstance(inner.args[0], ast.Constant)):
                        names[keyword.arg] = inner.args[0].value
                        break
    if not names:
        raise PipelineError("Settings.from_env: no cls(field=_env('NAME', ...)) call found")
    return names


def setting(field: str, *, shown: str | None = None, brief: str | None = None, nbytes: bool = False) -> Constant:
    """A service setting: its environment variable, its default, and where both are written."""
    from phase3_production.serving import config

    defaults, env = settings_defaults(), environment_names()
    if field not in defaults or field not in env:
        raise PipelineError(f"{relative(config.__file__)}: Settings has no field {field!r} read from the environment")
    value = defaults[field]
    if nbytes:
        shown, brief = size(value), unit(value)
    return Constant(env[field], shown if shown is not None else show(value),
                    f"{relative(config.__file__)}: Settings.{field}", brief)


def dict_literal(function, variable: str) -> dict:
    """The dict literal assigned to ``variable`` in ``function``: its string keys, each with its literal value or None.

    A value that is not a literal (a call, a name) is None; ``**spread``
    entries are left out.
    """
    for node in ast.walk(syntax(function)):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict) and any(
                isinstance(t, ast.Name) and t.id == variable for t in node.targets):
            found = {}
            for key, value in zip(node.value.keys, node.value.values):
                if isinstance(key, ast.Constant):
                    try:
                        found[key.value] = ast.literal_eval(value)
                    except ValueError:
                        found[key.value] = None
            return found
    raise PipelineError(f"{code_of(function).path}: {code_of(function).qualname} has no dict assigned to {variable}")


def checkpoint_fields() -> dict:
    """What ``save_model`` records in ``model.pt``: its keys, with the input shape it writes as a literal.

    Read from ``save_model``'s syntax, not by running it: a learner's tree
    with phase 2's exercises still to write must generate the same page.
    """
    from phase2_depth.p2_cnn import save_model

    blob = dict_literal(save_model, "blob")
    shape = blob.get("input_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(n, int) for n in shape)):
        raise PipelineError(f"{code_of(save_model).path}: save_model's blob has no literal input_shape [C, H, W]")
    return blob


# --------------------------------------------------------------------------- the steps


def build_steps() -> list[Step]:
    """Every step from the archive to the drift monitor, each read from the code as it is now.

    Each step's code is listed with the function that does its work first
    (the picture shows that one), then the ones it calls or is called by.
    """
    from common import augment, data as common_data, formats, loaders
    from phase2_depth import data as p2_data, models, p2_cnn
    from phase3_production import manifest, model_input, onnx_export, p3_onnx, quantize, runtime
    from phase3_production.serving import app, batcher, config, decoding, drift, images, limits, model, routes

    env = environment_names()
    defaults = settings_defaults()
    blob = checkpoint_fields()
    input_shape = tuple(blob["input_shape"])
    classes = common_data.CIFAR10_CLASSES
    published_mean, published_std = common_data.PUBLISHED_STATS["cifar10"]
    written = dict_keys(onnx_export.export_onnx, "metadata")
    read = subscript_keys(model.ServedModel.load, "metadata")
    recipes = p2_cnn.RECIPES
    data_py, cnn_py, onnx_py = relative(common_data.__file__), relative(p2_cnn.__file__), relative(p3_onnx.__file__)
    save_py, load_py = code_of(p2_cnn.save_model).path, code_of(model.ServedModel.load).path

    def recipe(name: str) -> Constant:
        r = recipes[name]
        return Constant(f"RECIPES['{name}']", f"widths {show(models.WIDTHS[r['widths']])}, {r['epochs']} epochs, "
                        f"batch {r['batch_size']}, lr {show(r['lr'])}, label smoothing "
                        f"{show(r['label_smoothing'])}, cutout {r['cutout']}", f"{cnn_py}: RECIPES",
                        f"{r['widths']}, {r['epochs']} epochs")

    def augmentation(name: str) -> Constant:
        recipe_ = getattr(p2_data, name)
        fields = ", ".join(f"{f.name}={getattr(recipe_, f.name)}" for f in dataclasses.fields(recipe_))
        return constant(p2_data, name, brief=fields)

    def c(*objects) -> tuple[Code, ...]:
        return tuple(code_of(o) for o in objects)

    threshold = defaults["batch_threshold"]
    threshold_shown = f"None (then MAX_BATCH, {defaults['max_batch']})" if threshold is None else show(threshold)
    return [
        Step(1, "Raw JPEG in the archive", "training",
             "The CIFAR-10 image-folder archive (`train/<class>/` and `test/<class>/`, one JPEG per image) is found "
             f"in the data folder (`{common_data.DATA_DIR_ENV}` or `DATA_DIR`) and extracted once into the cache, "
             "refusing any member that could write outside it.",
             c(common_data.load_dataset, common_data.extract_archive, common_data.safe_extract),
             (constant(common_data, "CIFAR10_CLASSES", brief=f"{len(classes)} classes, {classes[0]} ... {classes[-1]}"),
              constant(common_data, "DATA_DIR_ENV"), constant(common_data, "CACHE_DIR_ENV"))),
        Step(2, "Decoded to uint8", "training",
             "Pillow decodes every JPEG, converted to RGB, into one uint8 tensor (N, C, H, W), cached and keyed on "
             "the files' paths, sizes and modification times.",
             c(formats.decode_images, common_data.load_image_folder, common_data.cached_tensors),
             (default_of(formats.decode_images, "mode"),
              Constant("resize filter", " / ".join(resize_filters(formats.decode_images)),
                       f"{code_of(formats.decode_images).path}: decode_images (only when image_size is given)"))),
        Step(3, "Train / validation / test", "training",
             "The official training set is split, seeded and stratified, into training and validation; the "
             "official test set is kept for one final judgement.",
             c(p2_data.cifar_splits, p2_data.stratified_split),
             (constant(p2_data, "VALIDATION_SIZE"),
              Constant("per class", show(p2_data.VALIDATION_SIZE // len(classes)),
                       f"VALIDATION_SIZE / {len(classes)} classes"))),
        Step(4, "Training-split statistics", "training",
             "One mean and one std per channel, over every pixel of the training split only, on the 0..1 scale "
             "(float64 sums): the numbers both sides normalise with. A run records its own in `model.pt`; "
             "CIFAR-10's published values are beside them here.",
             c(p2_data.channel_stats),
             (Constant("mean (published)", show(published_mean), f"{data_py}: PUBLISHED_STATS['cifar10']"),
              Constant("std (published)", show(published_std), f"{data_py}: PUBLISHED_STATS['cifar10']")),
             shared=True),
        Step(5, "Augmentation", "training",
             "Each training batch, still uint8, gets a random crop of the zero-padded image and a left-right flip "
             "(and cutout where the recipe asks), drawn per image from one seeded generator.",
             c(p2_data.CifarAugment.__call__, p2_data.random_crop, p2_data.random_flip, augment.cutout),
             (augmentation("AUGMENT"), augmentation("AUGMENT_CUTOUT"),
              Constant("recipes with cutout", show([n for n, r in recipes.items() if r["cutout"]]),
                       f"{cnn_py}: RECIPES"))),
        Step(6, "Normalise each batch", "training",
             "The loader scales the batch to 0..1 and normalises it per channel with the training split's mean and "
             "std, `(x / 255 - mean) / std`, channels first; p3-onnx's parity check and INT8 calibration use the "
             "same function.",
             c(augment.normalize, loaders.TensorLoader.__iter__),
             (Constant("mean, std", "CifarSplits.mean / .std (step 4)", f"{relative(p2_data.__file__)}: "
                                                                         "CifarSplits.loaders", "step 4's"),
              default_of(augment.normalize, "dtype")),
             shared=True),
        Step(7, "CNN training", "training",
             "The five-layer CNN trains with SGD (Nesterov momentum), weight decay on weights only, a one-cycle "
             "learning rate and label smoothing; validation chooses, the test set judges once.",
             c(models.FiveLayerCNN.forward, p2_cnn.CnnTrainer, p2_cnn.one_cycle_multiplier, p2_cnn.build_model,
               p2_cnn.main),
             (recipe("cpu"), recipe("gpu"), constant(p2_cnn, "WARMUP_FRACTION"), constant(p2_cnn, "TARGETS"))),
        Step(8, "Checkpoint", "training",
             "`model.pt` holds the weights with everything needed to use them: the architecture, the class names, "
             "the mean and std, and the input shape.",
             c(p2_cnn.save_model, p2_cnn.load_model),
             (Constant("input_shape", show(input_shape), f"{save_py}: save_model"),
              constant(p2_cnn, "MODEL_FORMAT"),
              Constant("keys", ", ".join(blob), f"{save_py}: save_model"))),
        Step(9, "ONNX export and parity", "export",
             "The model is traced to ONNX with a dynamic batch axis, its class names, input shape and normalisation "
             "written into the file's metadata; PyTorch's and ONNX Runtime's logits must agree on real test images.",
             c(onnx_export.export_onnx, onnx_export.export_graph, onnx_export.parity, onnx_export.verify_onnx,
               p3_onnx.main),
             (constant(onnx_export, "OPSET"), constant(p3_onnx, "PARITY_TOLERANCE"),
              constant(onnx_export, "INPUT_NAME"), constant(onnx_export, "OUTPUT_NAME"),
              constant(p3_onnx, "PARITY_IMAGES"),
              Constant("metadata written", ", ".join(written), f"{code_of(onnx_export.export_onnx).path}: export_onnx"))),
        Step(10, "INT8", "export",
             "Static INT8 (QDQ, per-channel weights), calibrated on training images, never test images, beside "
             "dynamic INT8; each is scored for accuracy and size.",
             c(quantize.quantize_static_int8, quantize.quantize_dynamic_int8, quantize.ArrayCalibrationReader),
             (constant(p3_onnx, "CALIBRATION_IMAGES"), constant(quantize, "CALIBRATION_BATCH"),
              Constant("accuracy loss at most (points)", show(p3_onnx.TARGETS["int8_accuracy_loss_points"]),
                       f"{onnx_py}: TARGETS['int8_accuracy_loss_points']"),
              Constant("size ratio at least", show(p3_onnx.TARGETS["int8_size_ratio"]),
                       f"{onnx_py}: TARGETS['int8_size_ratio']"))),
        Step(11, "Manifest with sha256", "export",
             "`manifest.json` lists every ONNX file with its sha256 and size, the input shape, the classes, the mean "
             "and std, and the drift reference statistics with their own sha256.",
             c(onnx_export.export_onnx, onnx_export.add_variant, onnx_export.add_reference,
               p3_onnx.write_drift_reference, drift.write_reference, manifest.sha256_of),
             (constant(manifest, "MANIFEST_NAME"), constant(drift, "REFERENCE_NAME"),
              Constant("fields", ", ".join(dict_keys(onnx_export.export_onnx, "manifest")),
                       f"{code_of(onnx_export.export_onnx).path}: export_onnx"))),
        Step(12, "Service start: verify, then load", "serving",
             "Before the server accepts a connection the model file's sha256 is checked against the manifest, then "
             "ONNX Runtime loads it and the class names, input shape and normalisation are read from its metadata; "
             "any mismatch stops the start.",
             c(model.ServedModel.load, manifest.verify_sha256, manifest.read_manifest, app.lifespan),
             (setting("model_dir"), setting("model_file"),
              Constant("metadata read", ", ".join(read), f"{load_py}: ServedModel.load"))),
        Step(13, "Upload checks", "serving",
             "Each upload is checked cheapest first: the body counted on the stream, the file's size, the format "
             "sniffed from its first bytes, the pixel count from its header, and the decode priced from the header; "
             "each refusal is a 4xx JSON error, never a 500.",
             c(images.open_checked, images.sniff_format, images.read_header, images.decode_cost, routes.predict,
               routes.one_image, limits.RequestLimits),
             (setting("max_image_bytes", nbytes=True), setting("max_pixels"),
              setting("max_body_bytes", nbytes=True), setting("decode_memory_bytes", nbytes=True),
              Constant("allowed formats", show(defaults["allowed_formats"]),
                       f"{relative(config.__file__)}: Settings.allowed_formats"),
              setting("max_batch_files"))),
        Step(14, "Decode: inline or pool", "serving",
             "A small plain PNG whose bytes prove it cheap decodes on the event loop; every other upload, every JPEG "
             "included, is priced, admitted into the shared memory budget and decoded on a worker thread.",
             c(decoding.decode, decoding.cheap_enough_for_the_loop, decoding.price_and_decode,
               decoding.decode_upload, decoding.DecodeBudget.acquire, routes.decode),
             (setting("inline_decode_bytes", nbytes=True), constant(decoding, "INLINE_PIXELS"),
              constant(decoding, "INLINE_CHUNKS"), setting("decode_threads"), setting("decode_wait_s"))),
        Step(15, "Preprocess as in training", "serving",
             "The decoded image is turned upright, reduced by whole factors when large, made RGB and resized to the "
             "model's input with the same filter as training, then normalised with the mean and std from the "
             "model's metadata, channels first, float32.",
             c(images.to_model_input, images.prepare, images.shrink, images.rgb_array,
               model_input.serve_like_training),
             (Constant("input (C, H, W)", show(input_shape), f"{save_py}: save_model, via the ONNX metadata"),
              Constant("mean, std", "normalize_mean / normalize_std of the metadata (step 12)",
                       f"{load_py}: ServedModel.load", "step 4's, via step 12"),
              Constant("resize filter", " / ".join(resize_filters(images.rgb_array)),
                       f"{code_of(images.rgb_array).path}: rgb_array"),
              constant(images, "REDUCE_MARGIN")),
             shared=True),
        Step(16, "Micro-batcher", "serving",
             f"Below {env['batch_threshold']} images in flight a request gets its own model call; from it on, "
             f"requests queue and the worker runs what queued as one batch of up to {env['max_batch']}; beyond "
             f"{env['max_queue']} images the answer is 503 with Retry-After.",
             c(batcher.MicroBatcher.submit, batcher.gather_batch, batcher.MicroBatcher._run, routes.classify),
             (setting("max_batch"), setting("batch_threshold", shown=threshold_shown, brief="MAX_BATCH"),
              setting("max_queue"), setting("max_wait_ms"), setting("batches_in_flight"), setting("batching"))),
        Step(17, "ONNX Runtime", "serving",
             "One model thread calls ONNX Runtime, all graph optimisations on and no spinning threads, on the "
             "float32 batch, fed by the input's name.",
             c(model.ServedModel.predict_probabilities, runtime.onnx_session, batcher.MicroBatcher._call_model),
             (setting("intra_op_threads"), default_of(runtime.onnx_session, "spinning"),
              constant(onnx_export, "INPUT_NAME"))),
        Step(18, "Softmax and the answer", "serving",
             "The logits become probabilities by a numerically stable softmax; the reply names the top class with "
             "its confidence and every class's probability, and the prediction is remembered for feedback.",
             c(routes.answer, model.ServedModel.predict_probabilities),
             (Constant("reply fields", ", ".join(dict_keys(routes.answer)), f"{code_of(routes.answer).path}: answer",
                       f"{len(dict_keys(routes.answer))}, from prediction_id"),
              Constant("classes", show(classes), f"{data_py}: CIFAR10_CLASSES, served from the metadata's "
                       "class_names", f"{len(classes)}"))),
        Step(19, "Drift features and monitor", "serving",
             f"The pixels the model saw give {len(drift.INPUT_FEATURES)} input features and the answer its "
             f"confidence; every {env['drift_check_every']} requests the last {env['drift_window']} are compared "
             "with the reference (Kolmogorov-Smirnov with Holm's correction, chi-square for the class mix).",
             c(drift.DriftMonitor.check, drift.rgb_features, drift.image_features, drift.DriftMonitor.observe,
               drift.drifted_features, drift.batch_features),
             (setting("drift_window"), setting("drift_check_every"), setting("drift_alpha"),
              constant(drift, "INPUT_FEATURES", brief=f"{len(drift.INPUT_FEATURES)} features"))),
    ]


def shared_path() -> list[tuple[str, Code]]:
    """Where the normalisation is computed, carried and applied, in that order: ``(role, code)``."""
    from common import augment
    from phase2_depth import data as p2_data, p2_cnn
    from phase3_production import onnx_export
    from phase3_production.serving import images, model

    return [("computed on the training split", code_of(p2_data.channel_stats)),
            ("recorded in model.pt", code_of(p2_cnn.save_model)),
            ("written into the ONNX metadata and the manifest", code_of(onnx_export.export_onnx)),
            ("read back when the service starts", code_of(model.ServedModel.load)),
            ("applied in training (and to p3-onnx's parity and calibration images)", code_of(augment.normalize)),
            ("applied in the service", code_of(images.to_model_input))]


def agreements() -> list[tuple[str, bool, str]]:
    """The facts both sides must agree on, each read from both sides' code: ``(what, holds, detail)``."""
    from common import formats
    from phase3_production import onnx_export
    from phase3_production.serving import images, model

    written = dict_keys(onnx_export.export_onnx, "metadata")
    read = subscript_keys(model.ServedModel.load, "metadata")
    missing = [k for k in read if k not in written]
    training, serving = resize_filters(formats.decode_images), resize_filters(images.rgb_array)
    return [
        ("every metadata key the service reads is written at export", not missing,
         f"read: {', '.join(read)}" + (f"; never written: {', '.join(missing)}" if missing else "")),
        ("training and the service resize with the same filter", training == serving,
         f"decode_images: {' / '.join(training)}; rgb_array: {' / '.join(serving)}"),
    ]


# --------------------------------------------------------------------------- the page


def target(code: Code) -> str:
    return os.path.relpath(ROOT / code.path, HERE).replace(os.sep, "/")


def link(code: Code) -> str:
    return f"[`{code.path}`]({target(code)}) `{code.qualname}`"


def by_file(codes: tuple[Code, ...]) -> str:
    """``common/data.py``: ``a``, ``b``; ``common/formats.py``: ``c``: the step's code, grouped by file, in order."""
    groups: dict[str, list[str]] = {}
    for code in codes:
        groups.setdefault(code.path, []).append(f"`{code.qualname}`")
    return "; ".join(f"`{path}`: {', '.join(names)}" for path, names in groups.items())


def render_page(steps: list[Step] | None = None) -> str:
    """PIPELINE.md's text, generated from the code as it is now."""
    steps = steps if steps is not None else build_steps()
    lines = [
        "# The pipeline: from a CIFAR-10 JPEG to a served answer",
        "",
        f"<!-- Generated by `{COMMAND}` from the code's own names and constants. Do not edit by hand: "
        "tests/test_pipeline_page.py fails when this page and the code disagree. -->",
        "",
        f"![The pipeline: the training side, the hand-over, the serving side]({PICTURE_NAME})",
        "",
        f"One JPEG's path in {len(steps)} steps, each with the functions that take it and the constants they use. "
        "Every file and function is named by the object itself (`inspect.getsourcefile`, `__qualname__`); every "
        "value is read from the code: a module's constants, the service's `Settings` defaults and the environment "
        "variables `Settings.from_env` reads, a signature's defaults, and what the syntax tree of a function "
        f"holds. Regenerate with `{COMMAND}`; the guide's [Explain the pipeline](README.md#explain-the-pipeline) "
        "section says how to read it.",
        "",
        "| # | step | side | the code that does it |",
        "|---:|---|---|---|",
    ]
    for step in steps:
        mark = " (shared normalisation)" if step.shared else ""
        lines.append(f"| {step.number} | [{step.title}](#step-{step.number}){mark} | {step.side} | "
                     f"{by_file(step.code)} |")
    lines += ["", "## The normalisation both sides share", "",
              "A model answers confidently whatever it is fed: if the service prepares pixels differently from "
              "training, nothing fails, accuracy just falls. The mean and std are one fact, and these are the "
              "places it is computed, carried and applied:", ""]
    lines += [f"- {role}: {link(code)}" for role, code in shared_path()]
    lines += ["", "Checked here, each read from both sides' code:", ""]
    for what, holds, detail in agreements():
        lines.append(f"- {'yes' if holds else '**NO**'}: {what} ({detail})")
    lines += ["", "Exercise [p3-serve.5](README.md#p3-serve.5) writes the whole serving-side path from the raw JPEG "
              "bytes and the manifest alone, and its checks hold the result against both training and the service."]
    for side, heading in SIDES.items():
        lines += ["", f"## {heading}"]
        for step in (s for s in steps if s.side == side):
            lines += ["", f'<a id="step-{step.number}"></a>', f"### {step.number}. {step.title}", "", step.what, "",
                      "Code:", ""]
            lines += [f"- {link(code)}" for code in step.code]
            lines += ["", "| constant | value | read from |", "|---|---|---|"]
            lines += [f"| `{k.name}` | {k.shown.replace('|', '/')} | `{k.source}` |" for k in step.constants]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the picture


COLORS = {"training": "#e7f0fb", "export": "#efe9f7", "serving": "#e6f4ea", "shared": "#ffe3c2"}
EDGES = {"training": "#3f6fae", "export": "#6f52a0", "serving": "#2f7d4a", "shared": "#d9480f"}


def short_path(code: Code) -> str:
    """The file without the ``phase3_production/`` in front (the picture is phase 3's)."""
    return code.path.removeprefix(f"{HERE.name}/")


def picture_lines(step: Step, width: int = 62) -> list[str]:
    """A box's lines: the title, where its main function lives, then its constants, as many as fit on two lines."""
    first = step.code[0]
    lines = [f"{step.number}. {step.title}", f"{short_path(first)}: {first.qualname}"[:width]]
    current = ""
    for k in step.constants:
        value = k.brief if k.brief is not None else k.shown
        item = f"{k.name} = {value}"
        if len(item) > width:
            continue
        if current and len(current) + 2 + len(item) > width:
            lines.append(current)
            current = ""
            if len(lines) == 4:
                break
        current = f"{current}; {item}" if current else item
    if current and len(lines) < 4:
        lines.append(current)
    return lines


def draw(steps: list[Step], path: Path) -> Path:
    """pipeline.png: the training side down the left, the hand-over up the middle, the serving side down the right.

    The boxes of the shared normalisation are orange, tied together by an
    orange note in the middle.  Drawn with matplotlib, then stored with a
    palette of a few dozen colours (flat boxes and text need no more), which
    keeps the file small.
    """
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch
    from PIL import Image

    fig = plt.figure(figsize=(16, 10))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    left = {"training": 0.012, "export": 0.345, "serving": 0.678}
    box_w, box_h, top, pitch = 0.31, 0.094, 0.905, 0.1125
    rows = {"training": range(8), "serving": range(8), "export": (7, 6, 5)}
    boxes: dict[int, tuple[float, float]] = {}
    for side, x in left.items():
        ax.text(x + box_w / 2, 0.962, SIDES[side], ha="center", va="center", fontsize=14, weight="bold",
                color=EDGES[side])
        for row, step in zip(rows[side], [s for s in steps if s.side == side]):
            y = top - row * pitch - box_h
            kind = "shared" if step.shared else side
            ax.add_patch(FancyBboxPatch((x, y), box_w, box_h, boxstyle="round,pad=0.003,rounding_size=0.008",
                                        facecolor=COLORS[kind], edgecolor=EDGES[kind],
                                        linewidth=2.6 if step.shared else 1.3))
            lines = picture_lines(step)
            ax.text(x + 0.007, y + box_h - 0.016, lines[0], fontsize=12, weight="bold", va="center")
            ax.text(x + 0.007, y + box_h - 0.039, lines[1], fontsize=9.5, family="monospace", va="center",
                    color=EDGES[kind])
            for i, line in enumerate(lines[2:]):
                ax.text(x + 0.007, y + box_h - 0.059 - 0.018 * i, line, fontsize=9, va="center", color="#222222")
            boxes[step.number] = (x, y)

    def arrow(start, end, color="#555555", style="-|>", dashed=False, width=1.6, rad=0.0):
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=15, color=color, linewidth=width,
                                     linestyle="--" if dashed else "-", connectionstyle=f"arc3,rad={rad}",
                                     shrinkA=0, shrinkB=0))

    def bottom(n):
        return boxes[n][0] + box_w / 2, boxes[n][1]

    def top_of(n):
        return boxes[n][0] + box_w / 2, boxes[n][1] + box_h

    def side_of(n, right: bool):
        return boxes[n][0] + (box_w if right else 0), boxes[n][1] + box_h / 2

    column = {side: [s.number for s in steps if s.side == side] for side in left}
    for a, b in zip(column["training"], column["training"][1:]):
        arrow(bottom(a), top_of(b))
    for a, b in zip(column["serving"], column["serving"][1:]):
        arrow(bottom(a), top_of(b))
    for a, b in zip(column["export"], column["export"][1:]):   # the hand-over climbs the middle
        arrow(top_of(a), bottom(b))
    arrow(side_of(column["training"][-1], True), side_of(column["export"][0], False))
    ax.text((left["training"] + box_w + left["export"]) / 2, boxes[column["export"][0]][1] + box_h / 2 + 0.014,
            "model.pt", fontsize=9, ha="center", style="italic", color="#555555")
    # From the last export box, up the gutter, into the service's first box.
    gutter = (left["export"] + box_w + left["serving"]) / 2
    start, end = side_of(column["export"][-1], True), side_of(column["serving"][0], False)
    ax.plot([start[0], gutter, gutter], [start[1], start[1], end[1]], color="#555555", linewidth=1.6)
    arrow((gutter, end[1]), end)
    ax.text(gutter - 0.006, end[1] - 1.5 * pitch, "model.onnx + manifest.json", rotation=90, fontsize=9,
            ha="center", va="center", style="italic", color="#555555",
            bbox=dict(facecolor="white", edgecolor="none", pad=1))
    # The note that ties the shared normalisation together, in the middle column's free rows.
    shared = [s for s in steps if s.shared]
    note_y, note_h = top - 4.1 * pitch, 2.85 * pitch
    ax.add_patch(FancyBboxPatch((left["export"], note_y), box_w, note_h, boxstyle="round,pad=0.003,rounding_size=0.01",
                                facecolor="#fff4e6", edgecolor=EDGES["shared"], linewidth=1.6, linestyle="--"))
    note = [f"{role}:\n    {short_path(code)}: {code.qualname}" for role, code in shared_path()]
    note.append(f"resized with the same filter:\n    {agreements()[1][2]}")
    ax.text(left["export"] + 0.008, note_y + note_h - 0.014, "One mean and std, both sides", fontsize=12,
            weight="bold", va="top", color=EDGES["shared"])
    ax.text(left["export"] + 0.008, note_y + note_h - 0.042, "\n".join(note), fontsize=9.2, va="top",
            linespacing=1.2, color="#222222")
    for step in shared:
        x, y = boxes[step.number]
        inside = step.side == "training"
        anchor = (left["export"] if inside else left["export"] + box_w, min(max(y + box_h / 2, note_y + 0.02),
                                                                                note_y + note_h - 0.02))
        arrow(side_of(step.number, inside), anchor, color=EDGES["shared"], style="-", dashed=True, width=2.0)
    ax.legend(handles=[Patch(facecolor=COLORS[k], edgecolor=EDGES[k], label=label) for k, label in (
        ("training", "training"), ("export", "export"), ("serving", "serving"),
        ("shared", "the shared normalisation"))], loc="upper center", bbox_to_anchor=(0.5, 0.935), ncol=2,
        frameon=False, fontsize=10)
    ax.text(0.5, 0.832, f"every name and value read from the code\nby `{COMMAND}`;\n{PAGE_NAME} has them all",
            fontsize=9.5, ha="center", va="center", color="#555555")
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=80, format="png")
    plt.close(fig)
    buffer.seek(0)
    with Image.open(buffer) as image:
        small = image.convert("RGB").quantize(colors=48, method=Image.Quantize.MEDIANCUT,
                                              dither=Image.Dither.NONE)
    path = Path(path)
    small.save(path, optimize=True)
    return path


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help=f"compare {PAGE_NAME} with the code instead of writing it; exit 1 when it is stale")
    parser.add_argument("--out", type=Path, default=HERE, help="where to write the two files (default: beside this)")
    args = parser.parse_args(argv)
    steps = build_steps()
    page = render_page(steps)
    target_page = args.out / PAGE_NAME
    if args.check:
        current = target_page.read_text(encoding="utf-8") if target_page.is_file() else ""
        if current != page:
            print(f"{target_page} is stale: the code changed since it was generated; run `{COMMAND}`")
            return 1
        print(f"{target_page} matches the code")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    target_page.write_text(page, encoding="utf-8")
    picture = draw(steps, args.out / PICTURE_NAME)
    print(f"wrote {target_page} ({len(steps)} steps) and {picture} ({picture.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
