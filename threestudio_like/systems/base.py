"""The Lift3D system: owns the parts, the shared losses, optimisation and saving.

Recipes (DreamFusion, later Magic3D, ProlificDreamer, ...) subclass ``BaseLift3DSystem`` and
write only their ``training_step``; regularisers, loss weighting, optimiser construction,
validation / test outputs, export and checkpoint state live here once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from threestudio_like.config import ConfigError, Schedule, parse_structured, schedule_value
from threestudio_like.data.cameras import orbit_views
from threestudio_like.guidance.models import check_model_folder
from threestudio_like.mesh.isosurface import silhouette_matched_level
from threestudio_like.mesh.regularisers import laplacian_smoothness_loss, normal_consistency_loss
from threestudio_like.registry import find
from threestudio_like.systems.divergence import DivergenceGuard
from threestudio_like.systems.optim import build_optimizer, build_scheduler
from threestudio_like.trials import StageCheckpoint, check_state_matches, load_checkpoint, resolve_checkpoint
from threestudio_like.utils.io import save_image, save_video
from threestudio_like.utils.ranks import global_rank, rank_seed
from threestudio_like.utils.typing import CameraBatch, RenderOutput, Tensor


SHARED_REGULARISERS = ("orient", "sparsity", "opaque", "z_variance", "normal_consistency", "laplacian_smoothness")
GUIDANCE_DIAGNOSTICS = ("min_step", "max_step", "grad_norm", "grad_nonfinite")  # logged when a guidance returns them


def restore_cuda_rng_states(states: list[Tensor]) -> None:
    """Each visible GPU's RNG from a checkpoint's per-device ``states``. A checkpoint written with
    more GPUs than this run has (2 saved, 1 here) restores the first ones; the rest are dropped;
    GPUs beyond the saved ones keep their seeded state."""
    for index, state in enumerate(states[: torch.cuda.device_count()]):
        torch.cuda.set_rng_state(state, index)


@dataclass
class ParticleParts:
    """One 3D model: the geometry, material and background its renderer draws."""

    geometry: Any
    material: Any
    background: Any
    renderer: Any

    def parts(self) -> list[Any]:
        return [self.geometry, self.material, self.background, self.renderer]


class Particle(torch.nn.Module):
    """Storage of particle k > 0 (checkpoint keys ``particles.<k>.geometry...``). Particle 0 is the
    system's own ``geometry`` / ``material`` / ``background`` / ``renderer``, so a single-particle
    run has the same keys as ever and any stage can hand over to any other."""

    def __init__(self, parts: ParticleParts) -> None:
        super().__init__()
        self.geometry, self.material, self.background, self.renderer = parts.parts()

    def view(self) -> ParticleParts:
        return ParticleParts(self.geometry, self.material, self.background, self.renderer)


class BaseLift3DSystem(DivergenceGuard, pl.LightningModule):
    @dataclass
    class Config:
        loggers: dict = field(default_factory=dict)  # tensorboard / wandb (threestudio's keys); CSV is always written
        loss: dict[str, Schedule] = field(default_factory=dict)
        optimizer: dict = field(default_factory=dict)
        scheduler: Optional[dict] = None
        weights: Optional[str] = None  # initialise from this checkpoint (a fresh run, not a resume)
        weights_ignore_modules: Optional[list[str]] = None  # e.g. [background] to keep those fresh
        # independent 3D models sharing the guidance (e.g. one VSD critic); each step trains one picked at
        # random; each is validated, tested and exported under save/particle<k>/
        n_particles: int = 1
        # start from a previous stage (trial dir or checkpoint; LAST picks the newest trial)
        geometry_convert_from: Optional[str] = None
        geometry_convert_inherit_texture: bool = False  # also take its feature network, material, background
        geometry_convert_override: dict = field(default_factory=dict)  # geometry config keys for the conversion

        geometry_type: str = "implicit-volume"
        geometry: dict = field(default_factory=dict)
        material_type: str = "diffuse-with-point-light-material"
        material: dict = field(default_factory=dict)
        background_type: str = "neural-environment-map-background"
        background: dict = field(default_factory=dict)
        renderer_type: str = "nerf-volume-renderer"
        renderer: dict = field(default_factory=dict)
        guidance_type: Optional[str] = "stable-diffusion-guidance"  # null: a recipe without a diffusion model
        guidance: dict = field(default_factory=dict)
        prompt_processor_type: Optional[str] = "stable-diffusion-prompt-processor"
        prompt_processor: dict = field(default_factory=dict)
        exporter_type: str = "mesh-exporter"
        exporter: dict = field(default_factory=dict)

    cfg: Config

    def __init__(self, cfg: Any, save_dir: str = ".", resumed: bool = False) -> None:
        """``resumed``: a checkpoint will be loaded into this system, so no stage conversion."""
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg, "system")
        for name in self.cfg.loss:
            if not name.startswith("lambda_"):
                raise ConfigError(f"system.loss.{name}: loss weights are named lambda_<loss>, e.g. lambda_sds.")
        if self.cfg.n_particles < 1:
            raise ConfigError(f"system.n_particles must be at least 1; got {self.cfg.n_particles}.")
        self.save_dir = save_dir
        convert = self.cfg.geometry_convert_from is not None and not resumed and self.cfg.weights is None
        previous = self._previous_stage() if convert else None
        self.geometry, self.material, self.background, self.renderer = self._build_particle(previous, 0).parts()
        if self.cfg.n_particles > 1:
            self.particles = torch.nn.ModuleDict(
                {str(k): Particle(self._build_particle(previous, k)) for k in range(1, self.cfg.n_particles)}
            )
        self.active_particle = 0  # the particle forward() renders
        # The guidance is built by prepare_for_training (the fit's setup), prompts at first use:
        # validation, test and export never load a diffusion model.
        self._prompt_utils: Any = None
        self._loaded_step = 0
        self.configure()
        # Config mistakes surface now, before a trial folder exists or a diffusion model loads.
        self._check_loss_names()
        # unknown groups, optimiser names or arguments; a "guidance" group is checked when it is built
        build_optimizer(self, self.cfg.optimizer, later_parts=("guidance",))
        if self.cfg.weights is not None:
            self.load_initial_weights(self.cfg.weights, self.cfg.weights_ignore_modules or [])

    def configure(self) -> None:
        """Recipe-specific parts (e.g. a trainable guidance critic) are built here."""

    def _previous_stage(self) -> Any:
        return StageCheckpoint.load(self.cfg.geometry_convert_from)

    def _build_particle(self, previous: Any, index: int) -> ParticleParts:
        """Fresh parts, or, when starting from a ``previous`` stage, its particle ``index`` converted."""
        geometry = find(self.cfg.geometry_type)(self.cfg.geometry)
        material = find(self.cfg.material_type)(self.cfg.material)
        background = find(self.cfg.background_type)(self.cfg.background)
        if previous is not None:
            geometry = self.convert_from_previous_stage(previous, index, material, background)
        renderer = find(self.cfg.renderer_type)(self.cfg.renderer, geometry=geometry, material=material, background=background)
        return ParticleParts(geometry, material, background, renderer)

    def convert_from_previous_stage(self, previous: Any, index: int, material: Any, background: Any) -> Any:
        """A geometry converted from particle ``index`` of the ``previous`` stage (its particle 0 when it
        had fewer), e.g. NeRF -> DMTet at the NeRF's isosurface threshold. With
        ``geometry_convert_inherit_texture`` the appearance carries over too: the feature network, and
        ``material`` / ``background`` of the same type."""
        source = index if index < previous.n_particles else 0
        inherit = self.cfg.geometry_convert_inherit_texture
        geometry_cfg = OmegaConf.merge(self.cfg.geometry, self.cfg.geometry_convert_override)
        previous_geometry = previous.build_part("geometry", particle=source)
        threshold = None  # the level create_from reads from geometry_cfg, unless resolved here
        if geometry_cfg.get("isosurface_threshold") == "silhouette":
            # the one level that needs more than the previous geometry: its stage's renders
            parts = {name: previous.build_part(name, source) for name in ("material", "background")}
            renderer = previous.build_part("renderer", source, geometry=previous_geometry, **parts)
            threshold = silhouette_matched_level(previous_geometry, renderer, orbit_views(previous.data_config, 8, 64))
        geometry = find(self.cfg.geometry_type).create_from(
            previous_geometry, geometry_cfg, copy_net=inherit, threshold=threshold
        )
        print(f"Geometry converted from the previous stage {previous.path}" + (f" (particle {source})" if source else ""))
        if inherit:
            for name, part in (("material", material), ("background", background)):
                if previous.system_config.get(f"{name}_type") == getattr(self.cfg, f"{name}_type"):
                    part.load_state_dict(previous.part_state(name, particle=source))
        return geometry

    def load_initial_weights(self, path: str, ignore_modules: list[str]) -> None:
        path = resolve_checkpoint(path)
        state = load_checkpoint(path)["state_dict"]
        # checked as a resume is (missing, unexpected, wrongly shaped), before any trial folder
        # exists; the guidance is built later and is not part of the starting weights
        ignore = (*ignore_modules, "guidance")
        check_state_matches(self, state, f"system.weights={path}", ignore=ignore)
        self.load_state_dict({k: v for k, v in state.items() if not k.startswith(tuple(m + "." for m in ignore))}, strict=False)

    # ------------------------------------------------------------------ parts
    def prepare_for_training(self, device: Optional[torch.device] = None) -> None:
        """Build the guidance (once) on ``device``, so the first step's ``update_step`` reaches it.

        A submodule named ``guidance``: a trainable guidance (e.g. a VSD critic) gets its
        parameters into the checkpoint and can be an optimiser group ``guidance``; the frozen
        diffusion model stays outside the module tree.
        """
        if "guidance" in self._modules or self.cfg.guidance_type is None:
            return
        # fork_rng: model loading may draw random initial weights; the training stream must not
        # depend on whether the components were already cached in this process.
        with torch.random.fork_rng(devices=[]):
            guidance = find(self.cfg.guidance_type)(self.cfg.guidance, device=device or self.device)
        self.guidance = guidance  # nn.Module.__setattr__ registers it (the property below only reads)

    def setup(self, stage: str) -> None:
        # Runs before a resumed checkpoint is restored and before configure_optimizers.
        if stage == "fit":
            self.prepare_for_training(self.trainer.strategy.root_device)

    @property
    def guidance(self) -> torch.nn.Module:
        """The guidance; built here on first use outside a fit (e.g. a test driving the system)."""
        if "guidance" not in self._modules:
            self.prepare_for_training()
        if self.cfg.guidance_type is None:
            raise ConfigError(f"{type(self).__name__} has no guidance (system.guidance_type is null).")
        return self._modules["guidance"]

    @property
    def prompt_utils(self) -> Any:
        if self._prompt_utils is None:
            processor = find(self.cfg.prompt_processor_type)(self.cfg.prompt_processor, device=self.device)
            self._prompt_utils = processor()
        return self._prompt_utils

    def check_models_available(self) -> None:
        """Fail now, not at the first step, when a diffusion model or a part of it is missing."""
        for kind in ("guidance", "prompt_processor"):
            if getattr(self.cfg, f"{kind}_type") is None:
                continue
            part = getattr(self.cfg, kind)
            required = getattr(find(getattr(self.cfg, f"{kind}_type")), "required_models", {})
            for key, components in required.items():
                if part.get(key):
                    check_model_folder(part[key], components)

    def particle(self, index: int) -> ParticleParts:
        """Particle ``index``'s parts (0: the system's own ``geometry``, ``material``, ...)."""
        if index == 0:
            return ParticleParts(self.geometry, self.material, self.background, self.renderer)
        return self.particles[str(index)].view()

    @property
    def leaves_parameters_unused(self) -> bool:
        """Whether a training step may leave parameters without a gradient: with several particles
        each step renders one, so multi-device runs need DDP's ``find_unused_parameters``."""
        return self.cfg.n_particles > 1

    def parts(self) -> list[Any]:
        parts = [p for k in range(self.cfg.n_particles) for p in self.particle(k).parts()]
        return parts + ([self._modules["guidance"]] if "guidance" in self._modules else [])

    def update_step(self, global_step: int) -> None:
        for part in self.parts():
            part.update_step(global_step)

    def forward(self, batch: CameraBatch, **render_options: Any) -> RenderOutput:
        """Render the active particle (a volume renderer renders evaluation views in chunks of
        ``renderer.eval_chunk_size`` rays)."""
        out = self.particle(self.active_particle).renderer(**batch, **render_options)
        if self.training:
            self.check_render(out)
        return out

    def guided_loss(self, out: RenderOutput, batch: CameraBatch, image: Tensor) -> Tensor:
        """The guidance's losses on ``image`` (a render of ``out``) plus the shared regularisers,
        weighted; the guidance gets the whole camera batch."""
        guidance_out = self.guidance(image, self.prompt_utils, **batch)
        losses = {k: v for k, v in guidance_out.items() if k.startswith("loss_")}
        losses.update(self.regularisers(out))
        for key in GUIDANCE_DIAGNOSTICS:
            if key in guidance_out:
                self.log(f"train/{key}", float(guidance_out[key]))
        return self.weighted_loss(losses)

    # ------------------------------------------------------------------ losses
    def lambda_(self, name: str) -> float:
        """Weight of ``loss_<name>`` at the current step (0 when not configured)."""
        spec = self.cfg.loss.get(f"lambda_{name}", 0.0)
        return schedule_value(spec, self.global_step)

    def regularisers(self, out: RenderOutput) -> dict[str, Tensor]:
        """The losses every recipe shares; each is computed only while its weight is non-zero."""
        losses: dict[str, Tensor] = {}
        if self.lambda_("orient") > 0:
            if "normal" not in out:
                raise ConfigError(
                    "system.loss.lambda_orient > 0 needs normals: set system.geometry.normal_type "
                    "(analytic or finite_difference) and use a material that requires normals."
                )
            facing_camera = (out["normal"] * out["t_dirs"]).sum(-1, keepdim=True).clamp_min(0.0)
            visible = (out["opacity"] > 0).sum().clamp_min(1)
            losses["loss_orient"] = (out["weights"].detach() * facing_camera**2).sum() / visible
        if self.lambda_("sparsity") > 0:
            losses["loss_sparsity"] = (out["opacity"] ** 2 + 0.01).sqrt().mean()
        if self.lambda_("opaque") > 0:
            opacity = out["opacity"].clamp(1e-3, 1.0 - 1e-3)
            losses["loss_opaque"] = F.binary_cross_entropy(opacity, opacity)
        if self.lambda_("z_variance") > 0 and "z_variance" in out:
            losses["loss_z_variance"] = out["z_variance"][out["opacity"] > 0.5].mean()
        if "mesh" in out:  # mesh renderers hand over the mesh they drew
            mesh = out["mesh"]
            if self.lambda_("normal_consistency") > 0:
                losses["loss_normal_consistency"] = normal_consistency_loss(mesh.v_pos, mesh.t_pos_idx)
            if self.lambda_("laplacian_smoothness") > 0:
                losses["loss_laplacian_smoothness"] = laplacian_smoothness_loss(mesh.v_pos, mesh.t_pos_idx)
        return losses

    def weighted_loss(self, losses: dict[str, Tensor]) -> Tensor:
        """Sum of ``lambda_X * loss_X``; logs every term and fails on NaN."""
        total = torch.zeros((), device=self.device)
        for name, value in losses.items():
            weight = self.lambda_(name[len("loss_") :])
            self.log(f"train/{name}", value.detach(), prog_bar=False)
            if weight != 0:
                total = total + weight * value
        self.log("train/loss", total.detach(), prog_bar=True)
        if torch.is_grad_enabled() and not total.requires_grad:
            # nothing was drawn (every sample pruned, e.g. a few patches early on): a zero step, not a crash
            total = total + sum(0.0 * p.sum() for p in self.parameters() if p.requires_grad)
        self.check_loss(total, losses)  # inside an optimiser step: read with the step's one sync
        return total

    def _check_loss_names(self) -> None:
        produced = set(SHARED_REGULARISERS) | set(self.extra_loss_names())
        for key in self.cfg.loss:
            if key[len("lambda_") :] not in produced:
                raise ConfigError(
                    f"system.loss.{key}: no loss named loss_{key[len('lambda_'):]} is computed by this recipe. "
                    f"Available: {', '.join('lambda_' + p for p in sorted(produced))}."
                )

    def extra_loss_names(self) -> list[str]:
        """The ``loss_<name>`` terms this recipe computes besides the shared regularisers
        (its guidance's among them), so ``system.loss.lambda_<name>`` can be checked up front."""
        return []

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        optimizer, lr_lambdas = build_optimizer(self, self.cfg.optimizer)
        result: dict[str, Any] = {"optimizer": optimizer}
        scheduler = build_scheduler(optimizer, self.cfg.scheduler, lr_lambdas)
        if scheduler is not None:
            result["lr_scheduler"] = scheduler
        return result

    def on_train_start(self) -> None:
        self.train()  # Lightning keeps whatever mode the module was left in

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.update_step(self.global_step)
        if self.cfg.n_particles > 1:  # drawn from the training stream, so a resumed run picks the same
            self.active_particle = int(torch.randint(self.cfg.n_particles, (1,)))

    @property
    def current_step(self) -> int:
        """The training step reached: the trainer's, or the loaded checkpoint's (``--test`` and
        ``--validate`` restore weights, not the trainer's step)."""
        return max(self.global_step if self._trainer is not None else 0, self._loaded_step)

    def on_validation_epoch_start(self) -> None:
        self.update_step(self.current_step)  # in eval mode: only step-determined state changes

    def on_test_epoch_start(self) -> None:
        self.update_step(self.current_step)

    def loadable_state(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """``state_dict`` without the entries of parts this system has not built: a trainable
        guidance's weights are needed to train on, not to validate, test or export."""
        if "guidance" in self._modules:
            return state_dict
        return {k: v for k, v in state_dict.items() if not k.startswith("guidance.")}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = self.loadable_state(checkpoint["state_dict"])
        # RNG restored so a resumed run draws the same noise / timesteps as an uninterrupted one.
        rng = checkpoint.get("rng_state")
        if rng is not None:
            torch.set_rng_state(rng["torch"])
            if torch.cuda.is_available() and rng.get("cuda"):
                restore_cuda_rng_states(rng["cuda"])
            rank = global_rank()
            if rank > 0:  # the checkpoint holds rank 0's stream: give the other ranks their own again
                torch.manual_seed(rank_seed(int(torch.randint(2**31, (1,))), rank))
        # Parts are brought to this step when training or evaluation starts, not here:
        # an update now (e.g. of the occupancy grid) would run twice on resume.
        self._loaded_step = int(checkpoint.get("global_step", 0))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_state"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    # ------------------------------------------------------------------ evaluation outputs
    def _each_particle(self) -> Iterator[str]:
        """Make each particle active in turn; yields its folder under save/ ("" for a single particle)."""
        try:
            for k in range(self.cfg.n_particles):
                self.active_particle = k
                yield f"particle{k}" if self.cfg.n_particles > 1 else ""
        finally:
            self.active_particle = 0

    def validation_step(self, batch: CameraBatch, batch_idx: int) -> None:
        for folder in self._each_particle():
            with torch.random.fork_rng(devices=[]):  # keep the training RNG stream untouched
                out = self(batch)
            for i, index in enumerate(batch["index"].tolist()):
                save_image(self._save_path(folder, f"it{self.current_step}-{index}.png"), self._image_grid(out, i))

    def test_step(self, batch: CameraBatch, batch_idx: int) -> None:
        for folder in self._each_particle():
            with torch.random.fork_rng(devices=[]):
                out = self(batch)
            for i, index in enumerate(batch["index"].tolist()):
                path = self._save_path(folder, f"it{self.current_step}-test", f"{index}.png")
                save_image(path, self._image_grid(out, i))

    def on_test_epoch_end(self) -> None:
        import imageio.v3 as iio

        for particle in self._each_particle():
            folder = os.path.join(self.save_dir, particle, f"it{self.current_step}-test")
            frames = sorted((f for f in os.listdir(folder) if f.endswith(".png")), key=lambda f: int(f[:-4]))
            images = [iio.imread(os.path.join(folder, f)) for f in frames]
            path = save_video(self._save_path(particle, f"it{self.current_step}-test.mp4"), images, fps=30)
            print(f"Turntable video: {path}")

    def export(self, **exporter_overrides: Any) -> list[str]:
        """Extract each particle's surface and write the configured mesh files; returns their paths.
        ``exporter_overrides`` replace keys of ``system.exporter`` for this export only."""
        exporter = find(self.cfg.exporter_type)({**self.cfg.exporter, **exporter_overrides})
        self.eval()
        self.update_step(self.current_step)
        paths = []
        with torch.no_grad():
            for particle in self._each_particle():
                parts = self.particle(self.active_particle)
                folder = os.path.join(self.save_dir, particle, f"it{self.current_step}-export")
                paths += exporter(parts.geometry, parts.material, folder)
        return paths

    def _save_path(self, *parts: str) -> str:
        """A path under the run's save/ folder (parent folders created)."""
        path = os.path.join(self.save_dir, *parts)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    @staticmethod
    def _image_grid(out: RenderOutput, i: int) -> np.ndarray:
        """rgb | normal | opacity side by side (those rendered), float in [0, 1], (H, W*k, 3)."""
        tiles = [out["comp_rgb"][i]] if "comp_rgb" in out else []  # a geometry-only stage renders no colour
        if "comp_normal" in out:
            tiles.append(out["comp_normal"][i])
        tiles.append(out["opacity"][i].expand(*out["opacity"][i].shape[:-1], 3))
        return torch.cat(tiles, dim=1).detach().float().clamp(0, 1).cpu().numpy()

