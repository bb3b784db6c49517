"""How dataset files become arrays: IDX (MNIST family), CIFAR python batches, image folders.

Each reader checks what it reads and raises :class:`DatasetCorruptError` naming
the file and what is wrong with it.  A truncated download must never turn into a
silently shorter dataset: the IDX header says how many bytes follow, so we
compare; a gzip stream says where it ends, so we let it tell us.

None of these readers writes anything, so they work on read-only folders.
"""

from __future__ import annotations

import gzip
# bandit B403: loads go through CifarUnpickler, which admits only NumPy arrays, lists and dicts
import pickle  # nosec B403
import zlib
from pathlib import Path

import numpy as np


class DatasetError(RuntimeError):
    """Base class for every data problem this project reports."""


class DatasetNotFoundError(DatasetError):
    """The dataset is not where we looked, and could not be fetched."""


class DatasetCorruptError(DatasetError):
    """A file exists but its contents are not what its format promises."""


# --------------------------------------------------------------------------- bytes


def read_maybe_gzipped(path: Path) -> bytes:
    """Return the bytes of ``path``, decompressing in memory when it ends in ``.gz``."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DatasetCorruptError(
            f"{path}: the gzip stream is damaged or cut short ({exc}). "
            "Delete the file and fetch it again."
        ) from exc


# --------------------------------------------------------------------------- IDX

# The IDX format (LeCun's MNIST files): two zero bytes, a type code, the number
# of dimensions, then one big-endian int32 per dimension, then the data.
_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def parse_idx(raw: bytes, source: Path | str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes into an array, checking the header against the payload size."""
    if len(raw) < 4:
        raise DatasetCorruptError(f"{source}: {len(raw)} bytes is too short for an IDX header")
    zero, type_code, ndim = int.from_bytes(raw[0:2], "big"), raw[2], raw[3]
    if zero != 0 or type_code not in _IDX_TYPES or ndim == 0:
        raise DatasetCorruptError(
            f"{source}: not an IDX file (magic bytes {raw[:4].hex()}; expected 0000 "
            "then a type code such as 08 and the number of dimensions)"
        )
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DatasetCorruptError(f"{source}: IDX header cut short ({len(raw)} bytes)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_TYPES[type_code]
    expected = int(np.prod(dims)) * dtype.itemsize
    payload = len(raw) - header_len
    if payload != expected:
        what = "truncated" if payload < expected else "has trailing bytes"
        raise DatasetCorruptError(
            f"{source}: file is {what}: its header promises shape {dims} "
            f"({expected:,} bytes of data) but {payload:,} bytes follow the header"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(dims)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file, plain or ``.gz``."""
    return parse_idx(read_maybe_gzipped(path), source=path)


def read_idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read matching image and label IDX files into ``(N, 1, H, W) uint8`` and ``(N,) int64``."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DatasetCorruptError(
            f"{images_path}: expected uint8 images of shape (N, H, W), got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1:
        raise DatasetCorruptError(f"{labels_path}: expected a 1-D label vector, got shape {labels.shape}")
    if len(images) != len(labels):
        raise DatasetCorruptError(
            f"{images_path} holds {len(images):,} images but {labels_path} holds "
            f"{len(labels):,} labels; one of them is from another dataset or cut short"
        )
    return images[:, None, :, :].copy(), labels.astype(np.int64)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as IDX (``.gz`` if the name says so). Used by the tests."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    data = header + array.tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)


# --------------------------------------------------------------------------- CIFAR python batches

CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"
CIFAR10_META = "batches.meta"


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR python batch into ``(N, 3, 32, 32) uint8`` and ``(N,) int64``.

    The batches are Python pickles, as published, read with
    :class:`CifarUnpickler`, which builds arrays, lists and dicts and nothing else.
    """
    entry = _unpickle(path)
    data = entry.get("data")
    labels = entry.get("labels", entry.get("fine_labels"))
    if data is None or labels is None:
        raise DatasetCorruptError(f"{path}: a CIFAR batch needs 'data' and 'labels'; found keys {sorted(entry)}")
    data = np.asarray(data)
    labels = np.asarray(labels, dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetCorruptError(
            f"{path}: 'data' should be uint8 of shape (N, 3072), got {data.dtype} {data.shape}"
        )
    if len(data) != len(labels):
        raise DatasetCorruptError(f"{path}: {len(data)} images but {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32).copy(), labels


def read_cifar_meta(path: Path) -> list[str]:
    """The class names of a CIFAR ``batches.meta`` file, read as safely as the batches."""
    entry = _unpickle(path)
    names = entry.get("label_names")
    if not names:
        raise DatasetCorruptError(f"{path}: no 'label_names' in the CIFAR meta file")
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]


class CifarUnpickler(pickle.Unpickler):
    """A pickle reader that builds only what a CIFAR batch holds: NumPy arrays, lists, dicts, strings, numbers.

    A pickle is a small program: besides building lists and dicts, its
    opcodes can name *any* importable function (``os.system``, say) and call
    it with arguments of the file's choosing.  The plain ``pickle.load`` runs
    such a file's code the moment it is read.  Every function or class a
    pickle names goes through :meth:`find_class`, so refusing all but a short
    list there closes that door: lists, dicts, strings and numbers need no
    name at all, and a NumPy array needs a few (:attr:`ALLOWED`).
    """

    # (module, name) pairs that a CIFAR batch written by NumPy 1 or 2, by Python 2 or 3, may name.
    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"),   # how NumPy 1 pickles an array: build an empty one...
        ("numpy._core.multiarray", "_reconstruct"),  # ...(the same function where NumPy 2 keeps it)...
        ("numpy", "ndarray"),                        # ...of this class...
        ("numpy", "dtype"),                          # ...with this element type, then fill in the bytes
        ("numpy.core.numeric", "_frombuffer"),       # protocol 5 (Python 3.14's default): an array from bytes
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),                       # how Python 3 writes bytes into a protocol-2 pickle...
        ("__builtin__", "bytes"),                    # ...and an empty bytes object (named the Python 2 way)
        ("builtins", "bytes"),
    })

    def __init__(self, file, source: Path | str):
        super().__init__(file, encoding="latin1")  # Python 2's str (the published batches) as text
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise DatasetCorruptError(
                f"{self.source}: refusing to load {module}.{name}: a CIFAR batch holds only arrays, lists "
                "and dicts, and unpickling this file would call that. It is not a CIFAR batch, or it was "
                "tampered with: delete it and fetch the dataset again"
            )
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    """Read a CIFAR pickle with :class:`CifarUnpickler`; a dict with ``str`` keys, or a clear error."""
    try:
        with open(path, "rb") as fh:
            entry = CifarUnpickler(fh, source=path).load()
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError, IndexError, TypeError) as exc:
        raise DatasetCorruptError(f"{path}: not a readable CIFAR batch (truncated or corrupt: {exc})") from exc
    if not isinstance(entry, dict):
        raise DatasetCorruptError(f"{path}: expected a pickled dict, got {type(entry).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}


def write_cifar_batch(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write a batch in the published layout (a pickled dict, protocol 2: what Python 2 reads). Used by the tests."""
    entry = {"data": np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), -1),
             "labels": [int(x) for x in labels], "batch_label": path.name}
    with open(path, "wb") as fh:
        pickle.dump(entry, fh, protocol=2)


# --------------------------------------------------------------------------- image folders

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")


def list_image_folder(split_dir: Path, classes: list[str] | None = None) -> tuple[list[Path], list[int], list[str]]:
    """List ``split_dir/<class>/<image>`` files with their class index.

    Classes are the sorted sub-folder names (torchvision's ``ImageFolder`` rule),
    unless ``classes`` is given (the test split must use the training classes).
    Hidden files are ignored; any other file that is not an image is an error,
    so that nothing is dropped without a word.
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DatasetNotFoundError(f"{split_dir}: folder not found")
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DatasetNotFoundError(f"{split_dir}: no class folders inside (expected {split_dir}/<class>/<image>)")
    if classes is None:
        classes = found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DatasetCorruptError(f"{split_dir}: class folders {unknown} do not exist in the training split {classes}")
    paths: list[Path] = []
    targets: list[int] = []
    for index, name in enumerate(classes):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            continue  # a class may be absent from a small test split
        for entry in sorted(class_dir.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_dir() or entry.suffix.lower() not in IMAGE_EXTENSIONS:
                raise DatasetCorruptError(
                    f"{entry}: not an image file (allowed: {', '.join(IMAGE_EXTENSIONS)}); "
                    "move it out of the dataset folder"
                )
            paths.append(entry)
            targets.append(index)
    if not paths:
        raise DatasetNotFoundError(f"{split_dir}: the class folders hold no images")
    return paths, targets, list(classes)


def decode_images(paths: list[Path], *, mode: str = "RGB", size: tuple[int, int] | None = None,
                  progress=None) -> np.ndarray:
    """Decode image files into one ``(N, C, H, W) uint8`` array.

    Every image is converted to ``mode`` ("RGB" or "L").  With ``size=None`` all
    images must share the first image's size; pass ``size=(H, W)`` to resize.
    """
    from PIL import Image, UnidentifiedImageError

    if not paths:
        raise DatasetNotFoundError("no image files to decode: the list of paths is empty")
    channels = {"RGB": 3, "L": 1}[mode]
    out: np.ndarray | None = None
    iterator = paths if progress is None else progress(paths)
    for i, path in enumerate(iterator):
        try:
            with Image.open(path) as img:
                img.load()
                img = img.convert(mode)
                if size is not None and img.size != (size[1], size[0]):
                    img = img.resize((size[1], size[0]), Image.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise DatasetCorruptError(f"{path}: cannot decode image ({exc})") from exc
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if out is None:
            out = np.empty((len(paths), channels, arr.shape[0], arr.shape[1]), dtype=np.uint8)
        elif arr.shape[:2] != out.shape[2:]:
            raise DatasetCorruptError(
                f"{path}: image is {arr.shape[1]}x{arr.shape[0]} but {paths[0]} is "
                f"{out.shape[3]}x{out.shape[2]}; pass image_size=(H, W) to resize every image"
            )
        out[i] = arr.transpose(2, 0, 1)
    return out
