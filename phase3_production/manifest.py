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
    return manifest


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
