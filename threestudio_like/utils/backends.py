"""Optional CUDA libraries, imported in one guarded place.

Every part has a pure-PyTorch path that runs on any device. When a CUDA library imports
(and its compiled code loads) and the tensors live on a CUDA device, ``backend: auto`` uses
it; ``backend: torch`` forces the built-in path; naming a library that cannot run is a clear
error. Each part prints the backend it ends up with once per process (:func:`report_backend`),
so a library that quietly fails to load (e.g. built for another torch) shows as a fallback.

The choice is made per call from the device of the tensors a part is given, never from
``torch.cuda.is_available()``: a model on the CPU of a GPU machine (export, tests, a CPU
evaluation) must take the built-in path. The representations and the rasterizer look a
library up as ``backends.optional_import(...)``, so patching this module reaches them all.
"""

from __future__ import annotations

import importlib
import sys
from functools import lru_cache
from types import ModuleType
from typing import Optional

import torch

from threestudio_like.utils.ranks import global_rank

NERFACC_API = "nerfacc>=0.5.2,<0.6"  # the 0.5 API (OccGridEstimator), as pinned by the `cuda` extra
# tiny-cuda-nn's and nvdiffrast's setup.py import torch, which pip's isolated build env lacks
_INSTALL_HINTS = {
    "tinycudann": "pip install --no-build-isolation git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch",
    "nerfacc": f'pip install "{NERFACC_API}"',
    "nvdiffrast": "pip install --no-build-isolation git+https://github.com/NVlabs/nvdiffrast",
}

_IMPORT_ERRORS: dict[str, str] = {}  # name -> why its import failed (for the messages)
_REPORTED: set[tuple[str, str]] = set()  # (part, backend) pairs already printed in this process


@lru_cache(maxsize=None)
def optional_import(name: str) -> Optional[ModuleType]:
    """The module, or None when it is not installed or fails to import (e.g. no CUDA)."""
    try:
        return importlib.import_module(name)
    except Exception as error:  # ImportError, or a CUDA library failing to load or build its kernels
        missing = isinstance(error, ModuleNotFoundError) and (name == error.name or name.startswith(f"{error.name}."))
        first_line = (str(error).strip().splitlines() or [""])[0]
        _IMPORT_ERRORS[name] = "" if missing else f"{type(error).__name__}: {first_line}"[:300]
        return None


def is_cuda_device(device: torch.device | str) -> bool:
    """Whether tensors on ``device`` can go to a CUDA library (the one device check, patchable in tests)."""
    return torch.device(device).type == "cuda"


def library_problem(library: str) -> str:
    """Why ``library`` cannot run here ("" when it can): not installed, failing to import, or,
    for nerfacc, not the 0.5 API or without its compiled CUDA code.

    nerfacc 0.5 imports without its kernels: ``nerfacc.cuda._backend`` loads them when it is
    first imported (a prebuilt ``nerfacc.csrc``, else a JIT build with nvcc that takes minutes,
    else ``_C = None``). Importing it here makes that happen at the availability check (at part
    set-up) rather than at the first kernel call inside a training step, and a nerfacc whose
    ``_C`` is missing counts as absent.
    """
    module = optional_import(library)
    if module is None:
        error = _IMPORT_ERRORS.get(library, "")
        return f"{library} failed to import ({error})" if error else f"{library} is not installed"
    if library == "nerfacc":
        if not hasattr(module, "OccGridEstimator"):
            version = getattr(module, "__version__", "?")
            return f"nerfacc {version} is not the 0.5 API ({NERFACC_API})"
        compiled = optional_import("nerfacc.cuda._backend")
        if compiled is None or getattr(compiled, "_C", None) is None:
            error = _IMPORT_ERRORS.get("nerfacc.cuda._backend", "")
            return "nerfacc's compiled CUDA code did not load (" + (error or "no prebuilt kernels and no CUDA toolkit to build them") + ")"
    return ""


def choose_backend(requested: str, library: str, device: torch.device | str, part: str = "") -> str:
    """Resolve ``auto | torch | <library>`` to ``torch`` or ``library`` for tensors on ``device``.

    With ``part`` (e.g. ``"hash grid"``) the outcome is reported once per process (:func:`report_backend`).
    """
    backend, why = resolve_backend(requested, library, device)
    if part:
        report_backend(part, backend, why)
    return backend


def resolve_backend(requested: str, library: str, device: torch.device | str) -> tuple[str, str]:
    """:func:`choose_backend`'s answer and why the PyTorch path was taken ("" when it was not)."""
    if requested == "torch":
        return "torch", "backend: torch"
    if requested not in ("auto", library):
        raise ValueError(f"unknown backend '{requested}': use auto, torch or {library}")
    # the device first: a CPU tensor never loads (or builds) a CUDA library
    problem = "" if is_cuda_device(device) else f"the inputs are on {torch.device(device).type}, not CUDA"
    problem = problem or library_problem(library)
    if problem and requested == library:
        raise unavailable_error(library, problem)
    return ("torch", problem) if problem else (library, "")


def report_backend(part: str, backend: str, why: str = "") -> None:
    """Print ``backend: <part> -> <backend> (<why>)`` to stderr, once per process per (part, backend)
    (on rank 0 only), so a quiet fallback to the PyTorch path is visible in every run's log."""
    key = (part, backend)
    if key in _REPORTED:
        return
    _REPORTED.add(key)
    if global_rank() == 0:
        print(f"backend: {part} -> {backend}" + (f" ({why})" if why else ""), file=sys.stderr, flush=True)


def install_hint(library: str) -> str:
    """The command that installs ``library``."""
    return _INSTALL_HINTS.get(library, "pip install " + library)


def unavailable_error(library: str, why: str) -> RuntimeError:
    """The error for an explicitly requested library that cannot run, with how to get it."""
    return RuntimeError(
        f"backend '{library}' was requested but {why}. Install it with `{install_hint(library)}` "
        f"on a CUDA machine, or set backend: auto (or torch) to use the built-in PyTorch path."
    )
