"""Instruct-NeRF2NeRF (Haque et al. 2023): edit a reconstructed scene by a text instruction.

The NeRF trains on the capture's images with the photometric losses of the reconstruction
system, while the dataset changes under it: from ``start_editing_step`` on, every
``per_editing_step`` steps one training frame is rendered from the current NeRF, edited by
InstructPix2Pix (conditioned on the frame's original photo) and put in the dataset in place of
what was there. Frames never edited go first, then the one edited longest ago. Edits made from
ever more consistent renders converge on one edited scene.

Unlike threestudio and the original, the edited frames and when each was made are part of the
run's state (the data module's ``state_dict``, in every checkpoint), and an edit's randomness is
a function of (seed, step), so resuming mid-edit continues the uninterrupted run exactly.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from threestudio_like.config import ConfigError
from threestudio_like.data.random_camera import step_seed
from threestudio_like.registry import register
from threestudio_like.systems.reconstruction import NeRFReconstruction
from threestudio_like.utils.io import save_image
from threestudio_like.utils.perceptual import perceptual_loss
from threestudio_like.utils.typing import CameraBatch, Tensor

EDIT_STREAM = 0x1D17  # offset of the edits' random stream from the data module's seed
PERCEPTUAL_MIN_SIZE = 11  # the perceptual loss compares neighbourhoods: image patches at least this wide


@register("instructnerf2nerf-system")
class InstructNeRF2NeRF(NeRFReconstruction):
    @dataclass
    class Config(NeRFReconstruction.Config):
        guidance_type: Optional[str] = "stable-diffusion-instructpix2pix-guidance"
        prompt_processor_type: Optional[str] = "stable-diffusion-prompt-processor"
        start_editing_step: int = 1000
        per_editing_step: int = 10  # 0: never edit (a plain reconstruction)
        # ours: frames are rendered for editing at 1 / edit_downsample resolution and the edit is
        # upsampled to the frame (a small editor, like the built-in 32 x 32 one, needs no more)
        edit_downsample: int = 1

    cfg: Config

    def configure(self) -> None:
        super().configure()
        if self.lambda_("sds") != 0:
            raise ConfigError("system.loss.lambda_sds must be 0: Instruct-NeRF2NeRF trains on edited images, not on a score (threestudio ignores it too).")
        if self.cfg.edit_downsample < 1 or self.cfg.per_editing_step < 0:
            raise ConfigError(
                f"system.edit_downsample must be >= 1 and system.per_editing_step >= 0; got {self.cfg.edit_downsample} and {self.cfg.per_editing_step}."
            )
        self._perceptual = None
        self._warned_no_patches = False

    def extra_loss_names(self) -> list[str]:
        return super().extra_loss_names() + ["p", "sds"]  # lambda_sds: threestudio's configs carry it at 0

    # ------------------------------------------------------------------ the dataset update
    def edit_due(self, step: int) -> bool:
        every, start = self.cfg.per_editing_step, self.cfg.start_editing_step
        return every > 0 and step >= start and (step - start) % every == 0

    @staticmethod
    def next_frame(edit_step: Tensor) -> int:
        """The training frame to edit next: a never-edited one (step -1) first, else the one
        edited longest ago; ties go to the lowest position."""
        return int(torch.argmin(edit_step))

    def edit_frame(self, k: int, step: int) -> dict[str, Tensor]:
        """Render training frame ``k`` from the current NeRF, edit it and put the edit in the dataset."""
        data = self.trainer.datamodule
        frame = data.training_frame(k, self.cfg.edit_downsample)
        view = {key: value.to(self.device) if torch.is_tensor(value) else value for key, value in frame.items()}
        was_training = self.training
        self.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            render = self(view)["comp_rgb"]
            generator = torch.Generator().manual_seed(step_seed(data.seed + EDIT_STREAM, step))
            edited = self.guidance(render, view["original_rgb"], self.prompt_utils, generator=generator)["edit_images"]
        self.train(was_training)
        H, W = view["original_rgb"].shape[1:3]
        edited = F.interpolate(edited.permute(0, 3, 1, 2), (H, W), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
        data.replace_frame(k, edited[0], step)
        return {"render": render[0], "edited": edited[0]}

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if self.edit_due(self.global_step):
            data = self.trainer.datamodule
            self.edit_frame(self.next_frame(data.edit_step), self.global_step)
            self.log("train/edited_frames", float((data.edit_step >= 0).sum()))
        out = self(batch)
        losses = self.photometric_losses(out, batch)
        if self.lambda_("p") > 0:
            loss_p = self.perceptual_term(out, batch)
            if loss_p is not None:
                losses["loss_p"] = loss_p
        return self.weighted_loss({**losses, **self.regularisers(out)})

    def perceptual_term(self, out: dict[str, Any], batch: CameraBatch) -> Optional[Tensor]:
        """``lambda_p``'s loss on image batches; random-ray batches have no neighbourhoods (said once)."""
        if min(batch["height"], batch["width"]) < PERCEPTUAL_MIN_SIZE:
            if not self._warned_no_patches:
                self._warned_no_patches = True
                warnings.warn(
                    f"system.loss.lambda_p needs image patches of at least {PERCEPTUAL_MIN_SIZE} pixels, but the training batches "
                    f"are {batch['height']} x {batch['width']}: training with the other losses only. Set data.patch_size (e.g. 32) to use it."
                )
            return None
        if self._perceptual is None:
            self._perceptual = perceptual_loss()
        return self._perceptual(out["comp_rgb"].permute(0, 3, 1, 2), batch["rgb"].permute(0, 3, 1, 2))

    # ------------------------------------------------------------------ what the edits did
    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self.save_edit_grids()

    def save_edit_grids(self) -> list[str]:
        """save/it<N>-edits/<frame>.png: each edited training view, original photo | current edit."""
        data = self.trainer.datamodule if self._trainer is not None else None
        if data is None or not hasattr(data, "edit_step"):
            return []
        paths = []
        for k in (data.edit_step >= 0).nonzero().flatten().tolist():
            frame = data.training_frame(k)
            grid = torch.cat([frame["original_rgb"][0], frame["rgb"][0]], dim=1).clamp(0, 1).numpy()
            path = self._save_path(f"it{self.current_step}-edits", f"{int(frame['index'][0])}.png")
            save_image(path, grid)
            paths.append(path)
        if paths:
            print(f"Edited training views (original | edit): {os.path.dirname(paths[0])} ({len(paths)} frames)")
        return paths
