import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network

import pytest
import torch

from cpu_only import cuda_hidden

# one thread per xdist worker (the suite runs on two processes), otherwise at most two
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `pytest` (not `python -m pytest`) does not put the checkout first
    sys.path.insert(0, str(ROOT))


def shared_data_dir() -> Path:
    """The real test data (``../shared/data`` beside the checkout; THREESTUDIO_LIKE_TEST_DATA overrides)."""
    return Path(os.environ.get("THREESTUDIO_LIKE_TEST_DATA", ROOT.parent / "shared" / "data"))


def shared_data_path(name: str) -> Path:
    """``name`` in the shared test data. Absent: a failure where REQUIRE_TEST_DATA=1 (CI, so these
    tests cannot silently stop running), a skip that says what is missing elsewhere."""
    path = shared_data_dir() / name
    if not path.exists():
        message = f"test data {path} is absent (see ../shared/data/README.md)"
        if os.environ.get("REQUIRE_TEST_DATA") == "1":
            pytest.fail(message + "; REQUIRE_TEST_DATA=1 requires it", pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture
def on_the_cpu() -> Iterator[None]:
    """The test's runs train on the CPU even on a GPU machine (see ``cpu_only.cuda_hidden``)."""
    with cuda_hidden():
        yield


@pytest.fixture(scope="session")
def shared_data() -> Callable[[str], Path]:
    """``shared_data("bunny.obj")``: the path, or skip / fail as ``shared_data_path`` says."""
    return shared_data_path


@pytest.fixture(scope="session")
def bumpy_sphere() -> Callable[..., Any]:
    """A generated closed, non-convex mesh (trimesh), for tests that need a mesh but not a particular
    scan: ``bumpy_sphere(subdivisions=4)`` has 5,120 faces, about the bunny's count."""
    from benchmarks.meshes import bumpy_sphere as make

    return make


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A random tiny diffusers-format pixel-space model, built in code (no download)."""
    from threestudio_like.priors.tiny import build_tiny_diffusion_model

    return build_tiny_diffusion_model(str(tmp_path_factory.mktemp("tiny-model") / "model"), sample_size=32)
