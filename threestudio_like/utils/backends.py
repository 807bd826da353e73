"""Optional CUDA libraries, imported in one guarded place.

Every part has a pure-PyTorch path that runs on any device. When a CUDA library imports
and the tensors live on a CUDA device, ``backend: auto`` uses it; ``backend: torch`` forces
the built-in path; naming a library that is missing is a clear error.

The choice is made per call from the device of the tensors a part is given, never from
``torch.cuda.is_available()``: a model on the CPU of a GPU machine (export, tests, a CPU
evaluation) must take the built-in path. The representations and the rasterizer look a
library up as ``backends.optional_import(...)``, so patching this module reaches them all.
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from types import ModuleType
from typing import Optional

import torch

_INSTALL_HINTS = {
    "tinycudann": "pip install git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch",
    "nerfacc": "pip install nerfacc",
    "nvdiffrast": "pip install git+https://github.com/NVlabs/nvdiffrast",
}


@lru_cache(maxsize=None)
def optional_import(name: str) -> Optional[ModuleType]:
    """The module, or None when it is not installed or fails to import (e.g. no CUDA)."""
    try:
        return importlib.import_module(name)
    except Exception:  # ImportError, or a CUDA library failing to load its kernels
        return None


def is_cuda_device(device: torch.device | str) -> bool:
    """Whether tensors on ``device`` can go to a CUDA library (the one device check, patchable in tests)."""
    return torch.device(device).type == "cuda"


def choose_backend(requested: str, library: str, device: torch.device | str) -> str:
    """Resolve ``auto | torch | <library>`` to ``torch`` or ``library`` for tensors on ``device``."""
    if requested == "torch":
        return "torch"
    available = is_cuda_device(device) and optional_import(library) is not None
    if requested == "auto":
        return library if available else "torch"
    if requested == library:
        if not available:
            raise unavailable_error(library, "it is not installed" if optional_import(library) is None else "the device is not CUDA")
        return library
    raise ValueError(f"unknown backend '{requested}': use auto, torch or {library}")


def unavailable_error(library: str, why: str) -> RuntimeError:
    """The error for an explicitly requested library that cannot run, with how to get it."""
    return RuntimeError(
        f"backend '{library}' was requested but {why}. Install it with `{_INSTALL_HINTS.get(library, 'pip install ' + library)}` "
        f"on a CUDA machine, or set backend: auto (or torch) to use the built-in PyTorch path."
    )
