"""Instruct-NeRF2NeRF: the training images as state (replaced frames, checkpoints, batches drawn
ahead), the edit schedule, the recipes, and a resumed edit run equal to the uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from capture_fixtures import write_blender_capture
from threestudio_like.cli import main
from threestudio_like.config import ConfigError
from threestudio_like.experiment import finalize_config, load_config
from threestudio_like.data.capture import CaptureDataModule
from threestudio_like.priors.tiny import build_tiny_diffusion_model
from threestudio_like.experiment import find_part
from threestudio_like.systems.instructnerf2nerf import InstructNeRF2NeRF

ROOT = Path(__file__).resolve().parents[1]
BLUE = torch.tensor([0.1, 0.2, 0.9])
EDIT_TEST_START, EDIT_TEST_STEPS = 150, 300  # reconstruct, then edit (each training frame about twice)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("THREESTUDIO_LIKE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cube")
    write_blender_capture(folder, shape="cube", colour="red", n_views=8, size=16, holdout=2)
    return folder


def data_module(dataroot: Path, **cfg) -> CaptureDataModule:
    data = CaptureDataModule({"dataroot": str(dataroot), "train_downsample_resolution": 1, "rays_per_batch": 256, **cfg})
    data.setup()
    return data


def test_a_replaced_frame_reaches_batches_drawn_before_the_replacement(capture) -> None:
    data = data_module(capture)
    batch = data.sampler.sample(3)  # drawn ahead, as Lightning's loader does
    before = batch["rgb"].clone()
    data.replace_frame(0, BLUE.expand(16, 16, 3), step=7)
    batch = data.on_after_batch_transfer(batch, 0)
    frame0 = batch["index"] == data.train_set.index[0]
    alpha = batch["mask"][frame0]
    expected = BLUE * alpha + (1 - alpha)  # transparent pixels stay the background (white)
    assert torch.allclose(batch["rgb"][frame0], expected, atol=1 / 255)
    assert torch.equal(batch["rgb"][~frame0], before[~frame0])  # other frames untouched
    assert data.edit_step.tolist() == [7] + [-1] * (len(data.train_indices) - 1)
    frame = data.training_frame(0, downsample=2)
    assert frame["rays_o"].shape == (1, 8, 8, 3) and frame["rgb"].shape == (1, 16, 16, 3)
    assert not torch.allclose(frame["original_rgb"], frame["rgb"])  # the photo as loaded is kept


def test_the_edited_frames_round_trip_through_the_state_dict(capture) -> None:
    data = data_module(capture)
    assert data.state_dict() == {}  # nothing edited: nothing to carry
    data.replace_frame(2, BLUE.expand(16, 16, 3), step=3)
    data.replace_frame(4, torch.rand(16, 16, 3), step=5)
    state = data.state_dict()
    fresh = CaptureDataModule({"dataroot": str(capture), "train_downsample_resolution": 1})
    fresh.load_state_dict(state)  # before setup, as when a checkpoint is read first
    fresh.setup()
    assert torch.equal(fresh.train_set.pixels, data.train_set.pixels) and torch.equal(fresh.edit_step, data.edit_step)
    again = data_module(capture)
    again.replace_frame(1, torch.rand(16, 16, 3), step=1)
    again.load_state_dict(state)  # a loaded state replaces edits made since, not adds to them
    assert torch.equal(again.train_set.pixels, data.train_set.pixels)
    other_split = data_module(capture, train_data_interval=2)
    with pytest.raises(ConfigError, match="another split"):
        other_split.load_state_dict(state)


def test_the_schedule_edits_unedited_frames_first_then_the_oldest() -> None:
    next_frame = InstructNeRF2NeRF.next_frame
    assert next_frame(torch.tensor([-1, -1, -1])) == 0
    assert next_frame(torch.tensor([10, -1, -1])) == 1
    assert next_frame(torch.tensor([10, 20, 30])) == 0
    assert next_frame(torch.tensor([40, 20, 30])) == 1
    system = InstructNeRF2NeRF({"start_editing_step": 5, "per_editing_step": 3, "geometry": {"backend": "torch"}})
    assert [s for s in range(15) if system.edit_due(s)] == [5, 8, 11, 14]


@pytest.mark.parametrize("recipe", ["instructnerf2nerf", "instructnerf2nerf-cpu"])
def test_the_recipes_build(recipe, capture, tmp_path) -> None:
    exp = finalize_config(load_config(str(ROOT / "configs" / f"{recipe}.yaml"), cli_args=[f"data.dataroot={capture}", "data.patch_size=8", "data.train_downsample_resolution=1"]))
    assert exp.system["start_editing_step"] == (600 if recipe == "instructnerf2nerf" else 500)
    guidance = exp.system["guidance"]
    assert (guidance["diffusion_steps"], guidance["guidance_scale"], guidance["condition_scale"]) == (20, 7.5, 1.5)
    assert (guidance["min_step_percent"], guidance["max_step_percent"]) == (0.02, 0.98)
    data = find_part(exp.data_type)(exp.data, seed=0)
    data.setup()
    system = find_part(exp.system_type)(exp.system, save_dir=str(tmp_path))
    assert system.lambda_("l1") + system.lambda_("mse") > 0 and system.lambda_("p") > 0
    if recipe == "instructnerf2nerf":
        assert type(system.renderer).__name__ == "PatchRenderer" and exp.trainer["max_steps"] == 20000


def test_the_patch_renderer_draws_a_sharp_patch_over_a_coarse_image(capture) -> None:
    system = find_part("nerf-reconstruction-system")(
        {"renderer_type": "patch-renderer", "renderer": {"patch_size": 4, "global_downsample": 2, "base_renderer": {"num_samples_per_ray": 16}},
         "geometry": {"backend": "torch", "pos_encoding_config": {"otype": "HashGrid", "n_levels": 4, "log2_hashmap_size": 10}}}
    )
    view = data_module(capture).training_frame(0)
    drawn = []
    system.renderer.base_renderer.register_forward_hook(lambda module, args, out: drawn.append(out["comp_rgb"].detach()))
    system.train()
    out = system(view)["comp_rgb"]
    assert out.shape == (1, 16, 16, 3) and out.requires_grad
    coarse, patch = drawn
    assert coarse.shape == (1, 8, 8, 3) and patch.shape == (1, 4, 4, 3)
    windows = [(r, c) for r in range(13) for c in range(13) if torch.equal(out[0, r : r + 4, c : c + 4].detach(), patch[0])]
    assert len(windows) >= 1  # the full-resolution patch is pasted in place
    outside = torch.ones(16, 16, dtype=torch.bool)
    outside[windows[0][0] : windows[0][0] + 4, windows[0][1] : windows[0][1] + 4] = False
    upsampled = torch.nn.functional.interpolate(coarse.permute(0, 3, 1, 2), (16, 16), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    assert torch.allclose(out[0][outside].detach(), upsampled[0][outside])  # the rest is the coarse render
    system.eval()
    drawn.clear()
    with torch.no_grad():
        system(view)
    assert [d.shape for d in drawn] == [(1, 16, 16, 3)]  # evaluation renders whole


def edit_run(capture: Path, editor: str, out: Path, *overrides: str) -> Path:
    args = [
        "--config", str(ROOT / "configs" / "instructnerf2nerf-cpu.yaml"), "--train", f"data.dataroot={capture}", f"exp_root_dir={out}",
        "use_timestamp=false", "system.geometry.unbounded=false", "data.train_downsample_resolution=1", "data.eval_downsample_resolution=1",
        "data.patch_size=12", "data.batch_size=1", "data.n_test_views=2", "system.renderer.num_samples_per_ray=16",
        "system.geometry.pos_encoding_config.n_levels=4", "system.geometry.isosurface_resolution=16",
        f"system.guidance.ip2p_name_or_path={editor}", f"system.prompt_processor.pretrained_model_name_or_path={editor}",
        "system.guidance.diffusion_steps=2", "system.start_editing_step=1", "system.per_editing_step=2", "system.edit_downsample=2",
        "checkpoint.every_n_train_steps=3", "trainer.val_check_interval=6", "trainer.enable_progress_bar=false", *overrides,
    ]
    assert main(args) == 0
    return out / "instructnerf2nerf-cpu" / f"{capture.name}_make_it_blue"


@pytest.mark.slow  # three short runs through the CLI
def test_resuming_mid_edit_matches_the_uninterrupted_run(capture, tmp_path, on_the_cpu) -> None:
    editor = build_tiny_diffusion_model(str(tmp_path / "editor"), sample_size=8, image_condition=True)
    straight = edit_run(capture, editor, tmp_path / "straight", "trainer.max_steps=6")
    first = edit_run(capture, editor, tmp_path / "resumed", "trainer.max_steps=4")
    middle = torch.load(first / "ckpts" / "last.ckpt", weights_only=True)
    assert (middle["CaptureDataModule"]["edit_step"] >= 0).sum() == 2  # the edits of steps 1 and 3 are in the checkpoint
    edit_run(capture, editor, tmp_path / "resumed", "trainer.max_steps=6", f"resume={first / 'ckpts' / 'last.ckpt'}")
    a = torch.load(straight / "ckpts" / "last.ckpt", weights_only=True)
    b = torch.load(first / "ckpts" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 6
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), f"{key} differs after resume"
    for key, value in a["CaptureDataModule"].items():  # the edited frames and when each was made
        assert torch.equal(value, b["CaptureDataModule"][key]), f"{key} differs after resume"
    assert (a["CaptureDataModule"]["edit_step"] >= 0).sum() == 3
    grids = sorted((straight / "save" / "it6-edits").glob("*.png"))
    assert len(grids) == 3  # before | after of each edited training view


def held_out_renders(checkpoint: Path, capture: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """([V, H, W, 3] colour, [V, H, W] opacity) of the capture's held-out views from a checkpoint."""
    from threestudio_like.experiment import load_trained_system

    system, exp = load_trained_system(str(checkpoint))
    data = find_part(exp.data_type)(exp.data, seed=0)
    data.setup()
    colours, opacities = [], []
    with torch.no_grad():
        for k in range(len(data.val_dataset)):
            out = system(data.val_dataset[k])
            colours.append(out["comp_rgb"][0])
            opacities.append(out["opacity"][0, ..., 0])
    return torch.stack(colours), torch.stack(opacities)


@pytest.mark.slow  # reconstructs then edits a 24-view capture with builtin:edit32 (about 4 minutes)
def test_make_it_blue_turns_a_red_capture_blue_in_every_view(tmp_path) -> None:
    from lab.priors.edit_eval import nearest_colour_by_hue

    capture = tmp_path / "cube"
    write_blender_capture(capture, shape="cube", colour="red", n_views=24, size=64, holdout=4)
    start, steps = EDIT_TEST_START, EDIT_TEST_STEPS
    args = [
        "--config", str(ROOT / "configs" / "instructnerf2nerf-cpu.yaml"), "--train", f"data.dataroot={capture}", f"exp_root_dir={tmp_path}",
        "use_timestamp=false", "system.geometry.unbounded=false", "data.train_downsample_resolution=1", "data.eval_downsample_resolution=1",
        "data.patch_size=0", "data.rays_per_batch=2048", "system.loss.lambda_p=0", "data.n_test_views=2",
        "system.geometry.pos_encoding_config.n_levels=10", "system.geometry.pos_encoding_config.per_level_scale=1.3",
        "system.geometry.isosurface_resolution=32", "system.renderer.occupancy_grid_resolution=32",
        f"system.start_editing_step={start}", "system.per_editing_step=4", "system.edit_downsample=1", "system.guidance.diffusion_steps=10",
        f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}", f"checkpoint.every_n_train_steps={start}", "checkpoint.save_top_k=-1",
        "trainer.enable_progress_bar=false",
    ]
    assert main(args) == 0
    trial = tmp_path / "instructnerf2nerf-cpu" / "cube_make_it_blue"
    (unedited,) = [p for p in (trial / "ckpts").glob(f"*step={start}*.ckpt")]
    _, before = held_out_renders(unedited, capture)
    colours, after = held_out_renders(trial / "ckpts" / "last.ckpt", capture)
    silhouette_before, silhouette_after = before > 0.5, after > 0.5
    iou = (silhouette_before & silhouette_after).sum() / (silhouette_before | silhouette_after).sum()
    blue_share = [
        sum(nearest_colour_by_hue(pixel) == "blue" for pixel in colours[v][silhouette_after[v]]) / int(silhouette_after[v].sum())
        for v in range(len(colours))
    ]
    print(f"make it blue: blue share per held-out view {[round(b, 3) for b in blue_share]}, silhouette IoU {float(iou):.3f}")
    assert float(iou) >= 0.9
    assert min(blue_share) >= 0.9  # every held-out view agrees: one consistent edit, not per-view paint
