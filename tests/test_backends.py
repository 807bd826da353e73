"""Which optional CUDA library each part gets, and that the choice is visible.

No GPU and none of the libraries are needed: fakes patched into ``backends.optional_import``
stand for them, and ``backends.is_cuda_device`` is patched to call every tensor "on CUDA".
"""

from __future__ import annotations

import sys
import types
from typing import Any, Optional

import pytest
import torch

from threestudio_like.representations.encodings import get_encoding
from threestudio_like.renderers.volume_renderer import NeRFVolumeRenderer
from threestudio_like.utils import backends

SMALL_GRID = {
    "otype": "HashGrid",
    "n_levels": 4,
    "n_features_per_level": 2,
    "log2_hashmap_size": 10,
    "base_resolution": 4,
    "per_level_scale": 1.5,
}


@pytest.fixture(autouse=True)
def fresh_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts with nothing reported yet in this process."""
    monkeypatch.setattr(backends, "_REPORTED", set())


def _patch_libraries(monkeypatch: pytest.MonkeyPatch, modules: dict[str, Optional[Any]]) -> list[str]:
    """``optional_import`` answers from ``modules`` (None: not installed); the names asked for are recorded."""
    asked: list[str] = []
    real = backends.optional_import

    def fake(name: str) -> Optional[Any]:
        asked.append(name)
        return modules[name] if name in modules else real(name)

    monkeypatch.setattr(backends, "optional_import", fake)
    monkeypatch.setattr(backends, "is_cuda_device", lambda device: True)
    return asked


def _fake_nerfacc(compiled: Any, api_05: bool = True) -> dict[str, Any]:
    """nerfacc's Python package; ``compiled`` is what ``nerfacc.cuda._backend._C`` holds (None: not built)."""
    package = types.SimpleNamespace(__version__="0.5.3" if api_05 else "0.3.5")
    if api_05:
        package.OccGridEstimator = object
    return {"nerfacc": package, "nerfacc.cuda._backend": types.SimpleNamespace(_C=compiled)}


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("backend: ")]


# --------------------------------------------------------------------------- report_backend
def test_report_backend_prints_each_part_and_backend_once(capsys: pytest.CaptureFixture[str]) -> None:
    backends.report_backend("hash grid", "torch", "tinycudann is not installed")
    backends.report_backend("hash grid", "torch", "tinycudann is not installed")
    backends.report_backend("hash grid", "torch", "another reason")  # same pair: still once
    backends.report_backend("hash grid", "tinycudann")
    backends.report_backend("volume renderer", "torch")
    assert _lines(capsys.readouterr().err) == [
        "backend: hash grid -> torch (tinycudann is not installed)",
        "backend: hash grid -> tinycudann",
        "backend: volume renderer -> torch",
    ]


def test_hash_grid_reports_its_fallback_once_per_process(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _patch_libraries(monkeypatch, {"tinycudann": None})
    encoding = get_encoding(3, {**SMALL_GRID, "backend": "auto"})
    for _ in range(3):
        encoding(torch.rand(16, 3))
    get_encoding(3, {**SMALL_GRID, "backend": "auto"})(torch.rand(4, 3))  # another grid: the same part
    assert _lines(capsys.readouterr().err) == ["backend: hash grid -> torch (tinycudann is not installed)"]


def test_a_library_that_fails_to_import_says_why(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # a tiny-cuda-nn built for another torch imports with an undefined symbol
    (tmp_path / "tcnn_for_another_torch.py").write_text("raise ImportError('undefined symbol: _ZN3c1017RegisterOperators')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert backends.optional_import("tcnn_for_another_torch") is None
    problem = backends.library_problem("tcnn_for_another_torch")
    assert problem.startswith("tcnn_for_another_torch failed to import (ImportError: undefined symbol")
    assert backends.library_problem("surely_not_installed_library_xyz") == "surely_not_installed_library_xyz is not installed"
    sys.modules.pop("tcnn_for_another_torch", None)


def test_explicit_backends_fail_loudly_with_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    _patch_libraries(monkeypatch, {"tinycudann": None, "nvdiffrast": None})
    with pytest.raises(RuntimeError, match="no-build-isolation git\\+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch"):
        backends.choose_backend("tinycudann", "tinycudann", "cuda")
    with pytest.raises(RuntimeError, match="pip install --no-build-isolation git\\+https://github.com/NVlabs/nvdiffrast"):
        backends.choose_backend("nvdiffrast", "nvdiffrast", "cuda")
    with pytest.raises(RuntimeError, match="not CUDA"):
        monkeypatch.setattr(backends, "is_cuda_device", lambda device: False)
        backends.choose_backend("nerfacc", "nerfacc", "cpu")


# --------------------------------------------------------------------------- nerfacc
def test_nerfacc_without_its_compiled_backend_counts_as_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    modules = _fake_nerfacc(compiled=None)
    _patch_libraries(monkeypatch, modules)
    assert backends.choose_backend("auto", "nerfacc", "cuda") == "torch"
    assert "compiled CUDA code did not load" in backends.library_problem("nerfacc")
    with pytest.raises(RuntimeError, match="compiled CUDA code did not load"):
        backends.choose_backend("nerfacc", "nerfacc", "cuda")
    modules["nerfacc.cuda._backend"] = None  # the JIT build failed while importing
    assert backends.choose_backend("auto", "nerfacc", "cuda") == "torch"
    modules["nerfacc.cuda._backend"] = types.SimpleNamespace(_C=object())  # built: present
    assert backends.choose_backend("auto", "nerfacc", "cuda") == "nerfacc"


def test_nerfacc_before_the_0_5_api_counts_as_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    _patch_libraries(monkeypatch, _fake_nerfacc(compiled=object(), api_05=False))
    assert backends.choose_backend("auto", "nerfacc", "cuda") == "torch"
    assert "nerfacc>=0.5.2,<0.6" in backends.library_problem("nerfacc")


def _volume_renderer(backend: str) -> NeRFVolumeRenderer:
    part = torch.nn.Identity()  # never called: nothing is rendered here
    return NeRFVolumeRenderer({"backend": backend}, geometry=part, material=part, background=part)


def test_nerfacc_kernels_load_when_the_renderer_moves_to_cuda(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    asked = _patch_libraries(monkeypatch, _fake_nerfacc(compiled=object()))
    renderer = _volume_renderer("auto")
    assert "nerfacc.cuda._backend" not in asked  # building the part loads nothing
    renderer.to("cpu")  # stands for .to("cuda"): every device counts as CUDA here
    assert "nerfacc.cuda._backend" in asked  # the kernels load (or build) now, before any step
    assert _lines(capsys.readouterr().err) == ["backend: volume renderer -> nerfacc"]


def test_a_nerfacc_backend_that_cannot_load_fails_when_moved_to_cuda(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _patch_libraries(monkeypatch, _fake_nerfacc(compiled=None))
    renderer = _volume_renderer("nerfacc")
    with pytest.raises(RuntimeError, match="backend 'nerfacc' was requested but nerfacc's compiled CUDA code did not load"):
        renderer.to("cpu")
    _volume_renderer("auto").to("cpu")  # auto: the built-in sampler, said once
    assert _lines(capsys.readouterr().err) == [
        "backend: volume renderer -> torch (nerfacc's compiled CUDA code did not load "
        "(no prebuilt kernels and no CUDA toolkit to build them))"
    ]


def test_cpu_renderers_never_load_nerfacc(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = _patch_libraries(monkeypatch, _fake_nerfacc(compiled=object()))
    monkeypatch.setattr(backends, "is_cuda_device", lambda device: False)
    renderer = _volume_renderer("auto").to("cpu")
    assert backends.choose_backend("auto", "nerfacc", "cpu", part="volume renderer") == "torch"
    assert not [name for name in asked if name.startswith("nerfacc")]
    assert renderer.cfg.backend == "auto"


def test_the_cuda_extra_pins_the_nerfacc_0_5_api() -> None:
    import os

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    assert extras["cuda"] == ["nerfacc>=0.5.2,<0.6"]
