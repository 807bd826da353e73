"""An export measures how faithfully it reproduces the trained model, and the CPU recipes export
the object, not the haze around it (the recipe runs themselves are checked where they already run:
``test_builtin_recipe`` and ``test_mvdream``, through ``export_checks``)."""

from __future__ import annotations

import json
import os
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import trimesh

from threestudio_like.cli import main
from threestudio_like.mesh.isosurface import extract_isosurface
from threestudio_like.export.fidelity import WHITE, render_unlit
from threestudio_like.export.writers import write_glb
from threestudio_like.mesh.rasterize import make_rasterizer
from threestudio_like.mesh.types import Mesh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "threestudio_like", "configs")
# the eval cameras of the CPU recipes
DATA = {"eval_camera_distance": 1.75, "eval_fovy_deg": 50.0, "eval_elevation_deg": 15.0}
GREEN = (0.10, 0.70, 0.15)


def _mesh(shape: trimesh.Trimesh, colour: tuple[float, float, float]) -> Mesh:
    v = torch.as_tensor(np.asarray(shape.vertices), dtype=torch.float32)
    rgb = torch.tensor(colour).expand(v.shape[0], 3).clone()
    return Mesh(v, torch.as_tensor(np.asarray(shape.faces), dtype=torch.long), rgb)


def _union(*meshes: Mesh) -> Mesh:
    offsets = np.cumsum([0] + [m.n_vertices for m in meshes[:-1]])
    return Mesh(torch.cat([m.v_pos for m in meshes]), torch.cat([m.t_pos_idx + int(o) for m, o in zip(meshes, offsets)]),
                torch.cat([m.v_rgb for m in meshes]))


def _model_of(mesh: Mesh) -> SimpleNamespace:
    """A stand-in for a trained system whose albedo renders are those of ``mesh``."""

    def renderer(shading: str, bg_color: tuple, **views: torch.Tensor) -> dict:
        assert shading == "albedo" and bg_color == WHITE
        image = render_unlit(mesh, mesh.v_rgb, lambda c: c, views, make_rasterizer("torch", "cpu"))
        return {"comp_rgb": image}

    return SimpleNamespace(renderer=renderer, geometry=SimpleNamespace(has_features=True), device="cpu")


@pytest.fixture(scope="module")
def house() -> Mesh:
    body = trimesh.creation.box((0.5, 0.5, 0.4))
    roof = trimesh.creation.cone(0.4, 0.25, sections=4)
    roof.apply_translation((0, 0, 0.2))
    return _union(_mesh(body, GREEN), _mesh(roof, (0.05, 0.35, 0.08)))


def _measure(tmp_path, name: str, model: Mesh, exported: Mesh, capsys) -> tuple[dict, str]:
    from threestudio_like.export.fidelity import check_export

    folder = tmp_path / name
    folder.mkdir()
    path = write_glb(str(folder / "model.glb"), exported)
    check_export(_model_of(model), [path], DATA)
    out = capsys.readouterr().out
    return json.loads((folder / "fidelity.json").read_text()), out


def test_export_that_is_the_model_passes_and_one_with_haze_or_wrong_colours_warns(tmp_path, house, capsys) -> None:
    from threestudio_like.export.fidelity import MIN_EXPORT_PSNR

    good, out = _measure(tmp_path, "good", house, house, capsys)
    assert good["threshold"] == MIN_EXPORT_PSNR == 15.0
    assert good["psnr"] > MIN_EXPORT_PSNR + 10 and good["ok"] and good["views"] == len(good["per_view"])
    assert "Export fidelity: PSNR" in out and "against the model's renders" in out and "warning" not in out

    # the grey haze around the object meshed as a pale shell (item 16), and floaters beside it
    haze = _mesh(trimesh.creation.icosphere(3, radius=0.62), (0.79, 0.87, 0.87))
    floaters = [_mesh(trimesh.creation.icosphere(2, radius=0.25).apply_translation((x, y, z)), (0.8, 0.85, 0.85))
                for x in (-0.45, 0.45) for y in (-0.45, 0.45) for z in (-0.35, 0.35)]
    for name, exported in (("haze", _union(house, haze)), ("floaters", _union(house, *floaters)),
                           ("colours", _union(_mesh(trimesh.creation.box((0.5, 0.5, 0.4)), (0.9, 0.1, 0.1)),
                                              _mesh(trimesh.creation.cone(0.4, 0.25, sections=4), (0.9, 0.1, 0.1))))):
        bad, out = _measure(tmp_path, name, house, exported, capsys)
        assert bad["psnr"] < MIN_EXPORT_PSNR and not bad["ok"], name
        warnings = [line for line in out.splitlines() if line.startswith("warning:")]
        assert len(warnings) == 1 and "does not match the model's renders" in warnings[0], out
        assert "isosurface_threshold" in warnings[0]


def test_a_failure_to_measure_never_fails_the_export(tmp_path, house, capsys) -> None:
    from threestudio_like.export.fidelity import check_export

    folder = tmp_path / "broken"
    folder.mkdir()
    path = folder / "model.glb"
    path.write_bytes(b"not a glb")
    assert check_export(_model_of(house), [str(path)], DATA) == []
    assert capsys.readouterr().out.startswith("warning: export fidelity not measured")


def hazy_object(p: torch.Tensor) -> torch.Tensor:
    """A NeRF-like density: a solid ball (r 0.3, density 15) in a thin haze (to r 0.55, density 0.8,
    rendering at most half opaque) and a faint fringe (to r 0.9, density 0.05), as SDS leaves them."""
    r = p.norm(dim=-1, keepdim=True)
    return torch.where(r < 0.3, 15.0, torch.where(r < 0.55, 0.8, torch.where(r < 0.9, 0.05, 0.0)))


def test_the_opacity_level_meshes_the_object_not_its_haze() -> None:
    box = torch.tensor([[-1.0] * 3, [1.0] * 3])
    solid = extract_isosurface(hazy_object, box, 48, "opacity")
    assert solid.is_watertight and abs(float(solid.v_pos.norm(dim=-1).mean()) - 0.3) < 0.05
    # the mean occupied density ("auto", the level the recipes used) wraps the haze instead
    haze = extract_isosurface(hazy_object, box, 48, "auto")
    assert abs(float(haze.v_pos.norm(dim=-1).mean()) - 0.55) < 0.05


def _short_run(out: str, config: str, prompt: str, **extra: object) -> list[str]:
    overrides = {
        "system.prompt_processor.prompt": prompt,
        "system.prompt_processor.cache_dir": f"{out}/cache",
        "exp_root_dir": f"{out}/outputs",
        "use_timestamp": "false",
        "trainer.val_check_interval": 1000,
        "checkpoint.every_n_train_steps": 1000,
        "data.n_val_views": 1,
        "data.n_test_views": 2,
        "system.exporter.texture_size": 128,
        **extra,
    }
    return ["--config", os.path.join(CONFIGS, config), *[f"{k}={v}" for k, v in overrides.items()]]


def test_export_writes_its_fidelity(tmp_path, capsys) -> None:
    tiny = {"trainer.max_steps": 2, "data.width": 16, "data.height": 16, "data.eval_width": 16, "data.eval_height": 16,
            "system.geometry.isosurface_resolution": 24, "system.renderer.num_samples_per_ray": 16,
            "system.exporter.max_faces": 2000}
    args = _short_run(str(tmp_path), "dreamfusion-cpu.yaml", "a red cube", **tiny)
    assert main([args[0], args[1], "--train", *args[2:]]) == 0
    trial = tmp_path / "outputs" / "dreamfusion-cpu" / "a_red_cube"
    folder = trial / "save" / "it2-export"
    (folder / "fidelity.json").unlink()  # the end-of-training export wrote one; --export writes its own
    capsys.readouterr()
    assert main([args[0], args[1], "--export", *args[2:], f"resume={trial}/ckpts/last.ckpt"]) == 0
    out = capsys.readouterr().out
    report = json.loads((folder / "fidelity.json").read_text())
    assert report["file"] == "model.glb" and report["views"] == len(report["per_view"]) > 0 and report["size"] > 0
    printed = re.search(rf"Export fidelity: PSNR ([0-9.]+) dB against the model's renders \({report['views']} views\)", out)
    # the line rounds to 0.1 dB and the file to 0.01 dB: compare the numbers, not their strings
    assert printed and abs(float(printed.group(1)) - report["psnr"]) <= 0.051
