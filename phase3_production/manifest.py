"""The manifest: which model files were exported, and their sha256.

A service must never serve a file it cannot vouch for.  ``manifest.json``
sits beside the ONNX files and lists each one (the fp32 model, then its
variants such as the INT8 one) with its sha256.  Checking a file is reading it
once and comparing digests: a truncated copy, a half-finished upload or a
swapped file is refused before a single request is answered.

This module needs only the standard library, so the service (which imports
no torch and no onnx) can use it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

MANIFEST_NAME = "manifest.json"
# Files that travel with the model, each listed as {"file", "sha256", "bytes"} and verified like it:
# the drift reference statistics, a few test images with their labels for the demo page, and the
# model card (its figures as JSON, and the same card written out for people).
SIDE_FILES = ("reference", "samples", "model_card", "model_card_markdown")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_entries(manifest: dict) -> list[dict]:
    """The main model's entry, then each variant's (``{"onnx_file", "sha256", "bytes", ...}``)."""
    return [manifest, *manifest.get("variants", {}).values()]


def manifest_entry(manifest: dict, file_name: str) -> dict | None:
    return next((e for e in manifest_entries(manifest) if e.get("onnx_file") == file_name), None)


def read_manifest(manifest_path: Path) -> dict:
    manifest_path = Path(manifest_path)
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path}: manifest not found; it must sit beside the ONNX file "
                                "(run `make p3-onnx` first)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{manifest_path}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or "onnx_file" not in manifest:
        raise ValueError(f"{manifest_path}: not an ML60 manifest (no 'onnx_file')")
    problems = manifest_problems(manifest)
    if problems:
        raise ValueError(f"{manifest_path}: {'; '.join(problems)}")
    return manifest


def manifest_problems(manifest: dict) -> list[str]:
    """What is wrong with the manifest's shape, each naming its field; empty when nothing is.

    A manifest is read before anything it names is opened, so its fields are
    checked first: a file name must be a plain name beside the manifest (an
    absolute path or a ``..`` would make the service open, hash and trust a
    file anywhere on the machine), and every field must have its type, so
    that a damaged manifest is a message, not a ``TypeError`` deep inside.
    """
    problems = entry_problems(manifest, "")
    variants = manifest.get("variants", {})
    if not isinstance(variants, dict):
        problems.append(f"'variants' must be an object of named entries, got {type(variants).__name__}")
    else:
        for key, entry in variants.items():
            problems += entry_problems(entry, f"variants.{key}.")
    for key in SIDE_FILES:
        if key not in manifest:
            continue
        side = manifest[key]
        if not isinstance(side, dict):
            problems.append(f"'{key}' must be an object with 'file' and 'sha256', got {type(side).__name__}")
        else:
            problems += file_name_problems(side.get("file"), f"{key}.file")
            problems += sha256_problems(side.get("sha256"), f"{key}.sha256")
    return problems


def entry_problems(entry, prefix: str) -> list[str]:
    """Problems of one model entry: ``onnx_file`` a plain file name, ``sha256`` 64 hex digits."""
    if not isinstance(entry, dict):
        return [f"'{prefix.rstrip('.')}' must be an object with 'onnx_file' and 'sha256', got {type(entry).__name__}"]
    return (file_name_problems(entry.get("onnx_file"), f"{prefix}onnx_file")
            + sha256_problems(entry.get("sha256"), f"{prefix}sha256"))


def file_name_problems(name, field: str) -> list[str]:
    """A file the manifest names must sit beside it: a plain name, not absolute, no folders, no ``..``."""
    if not isinstance(name, str) or not name:
        return [f"'{field}' must be a file name, got {name!r}"]
    if Path(name).is_absolute() or Path(name).name != name or name in (".", ".."):
        return [f"'{field}' must be a plain file name beside the manifest, got {name!r} (absolute paths, "
                "folders and '..' are refused)"]
    return []


def sha256_problems(digest, field: str) -> list[str]:
    if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        return [f"'{field}' must be 64 lowercase hex digits, got {str(digest)[:80]!r}"]
    return []


def verify_sha256(onnx_path: Path, manifest_path: Path | None = None) -> tuple[dict, dict]:
    """Check ``onnx_path`` against its manifest entry; return ``(manifest, entry)``.

    Every failure names the file and what is wrong with it.
    """
    onnx_path = Path(onnx_path)
    manifest_path = Path(manifest_path) if manifest_path else onnx_path.with_name(MANIFEST_NAME)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path}: ONNX model not found (run `make p3-onnx` first)")
    manifest = read_manifest(manifest_path)
    entry = manifest_entry(manifest, onnx_path.name)
    if entry is None:
        raise ValueError(f"{onnx_path}: not listed in {manifest_path} (which knows "
                         f"{', '.join(e['onnx_file'] for e in manifest_entries(manifest))})")
    actual = sha256_of(onnx_path)
    if actual != entry.get("sha256"):
        raise ValueError(f"{onnx_path}: sha256 {actual[:16]}... does not match the manifest's "
                         f"{str(entry.get('sha256'))[:16]}...: the file was changed or damaged after export")
    return manifest, entry
