"""Hiding CUDA from a run (no project imports: conftest.py uses it before the package is imported)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import pytest
import torch


@contextmanager
def cuda_hidden() -> Iterator[None]:
    """Runs inside see no CUDA device (``torch.cuda.is_available()`` is False), so they train on the CPU even on a GPU machine. For runs
    compared bit for bit (a resumed run against an uninterrupted one): CUDA's atomic adds (index_add /
    scatter in the renderer, the hash-grid backward) sum in no fixed order, so two CUDA runs differ in
    the last bits whether or not one was resumed. The GPU path is tested in test_cuda_path.py."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.cuda, "is_available", lambda: False)
        yield
