"""Random orbit cameras for score distillation (``random-camera-datamodule``).

Training views are drawn around the origin the way threestudio draws them:

- elevation: with probability 0.5 (one coin per batch) uniform in degrees over
  ``elevation_range`` (which over-samples the poles), otherwise uniform in
  ``sin(elevation)``, i.e. uniform over the sphere's area (inverse-transform sampling);
- azimuth: uniform over ``azimuth_range``; with ``batch_uniform_azimuth`` the range is cut
  into B equal strata and view b is uniform in stratum b, so a batch covers the circle;
- distance, fovy, light distance: uniform over their ranges;
- camera position + uniform noise in [-camera_perturb, camera_perturb] per axis; look-at
  centre + N(0, center_perturb^2); up (+z) + N(0, up_perturb^2);
- light ("dreamfusion"): direction of camera_position + N(0, light_position_perturb^2),
  at a random light distance; ("magic3d"): random direction within 30..90 degrees of
  elevation over the plane orthogonal to the camera direction.

Every batch is a pure function of ``(seed, step)``: the sampler seeds a private
``torch.Generator`` from both and never touches global RNG. The training loader prefetches
and a resumed run recreates it, so a stateful RNG would hand different cameras to the same
step; this one gives step N the same cameras however the run got there. With several
training processes the data module's sampler seed is ``rank_seed(seed, global rank)``, so
ranks draw different views (rank 0, and a single process, keep ``seed``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, List, Literal, Optional, Protocol, Tuple, runtime_checkable

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, IterableDataset

from threestudio_like.config import ConfigError, milestone_value, parse_structured
from threestudio_like.data.cameras import make_camera_batch, spherical_to_cartesian
from threestudio_like.registry import register
from threestudio_like.utils.ranks import global_rank, rank_seed
from threestudio_like.utils.typing import CameraBatch, Float, Tensor

Range = Tuple[float, float]


@dataclass
class RandomCameraConfig:
    """threestudio's option names and defaults. ``height`` / ``width`` / ``batch_size`` are an
    int or a list switched at ``resolution_milestones`` (list i applies once step >= milestone i-1)."""

    height: Any = 64
    width: Any = 64
    batch_size: Any = 1
    resolution_milestones: List[int] = field(default_factory=list)
    eval_height: int = 512
    eval_width: int = 512
    eval_batch_size: int = 1
    n_val_views: int = 1
    n_test_views: int = 120
    elevation_range: Range = (-10, 90)
    azimuth_range: Range = (-180, 180)
    camera_distance_range: Range = (1, 1.5)
    fovy_range: Range = (40, 70)  # degrees, vertical (along height)
    camera_perturb: float = 0.1
    center_perturb: float = 0.2
    up_perturb: float = 0.02
    light_position_perturb: float = 1.0
    light_distance_range: Range = (0.8, 1.5)
    eval_elevation_deg: float = 15.0
    eval_camera_distance: float = 1.5
    eval_fovy_deg: float = 70.0
    light_sample_strategy: Literal["dreamfusion", "magic3d"] = "dreamfusion"
    batch_uniform_azimuth: bool = True
    # > 0: elevation / azimuth ranges open linearly from the eval view (eval elevation,
    # azimuth 0) to the full ranges over this many steps; 0 disables
    progressive_until: int = 0
    rays_d_normalize: bool = True


def step_seed(seed: int, step: int) -> int:
    """A well-mixed 63-bit seed from (seed, step) (splitmix64 finaliser), so nearby
    steps and nearby seeds give unrelated streams."""
    mask = (1 << 64) - 1
    z = (seed * 0x9E3779B97F4A7C15 + step + 0x632BE59BD9B4E019) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return (z ^ (z >> 31)) >> 1


def _uniform(generator: torch.Generator, shape: tuple[int, ...], low: float, high: float) -> Tensor:
    return torch.rand(shape, generator=generator) * (high - low) + low


def _lerp_range(start: float, end: Range, r: float) -> Range:
    return ((1 - r) * start + r * end[0], (1 - r) * start + r * end[1])


class RandomCameraSampler:
    """Draws training ``CameraBatch``es; ``sample(step)`` is deterministic given (seed, step)."""

    def __init__(self, cfg: Any = None, seed: int = 0) -> None:
        self.cfg: RandomCameraConfig = parse_structured(RandomCameraConfig, cfg)
        self.seed = int(seed)
        _check_config(self.cfg)

    def resolution(self, step: int) -> tuple[int, int, int]:
        """(height, width, batch_size) in force at ``step``."""
        milestones = list(self.cfg.resolution_milestones)
        height, width, batch = (
            int(milestone_value(v, milestones, step)) for v in (self.cfg.height, self.cfg.width, self.cfg.batch_size)
        )
        return height, width, batch

    def view_ranges(self, step: int) -> tuple[Range, Range]:
        """(elevation_range, azimuth_range) at ``step``, narrowed while ``progressive_until`` runs."""
        cfg = self.cfg
        r = 1.0 if cfg.progressive_until <= 0 else min(1.0, step / cfg.progressive_until)
        return _lerp_range(cfg.eval_elevation_deg, cfg.elevation_range, r), _lerp_range(0.0, cfg.azimuth_range, r)

    def sample(self, step: int) -> CameraBatch:
        cfg = self.cfg
        height, width, batch = self.resolution(step)
        elevation_range, azimuth_range = self.view_ranges(step)
        g = torch.Generator().manual_seed(step_seed(self.seed, step))

        elevation_deg = self._sample_elevation(g, batch, elevation_range)
        if cfg.batch_uniform_azimuth:
            strata = (torch.rand(batch, generator=g) + torch.arange(batch)) / batch
            azimuth_deg = strata * (azimuth_range[1] - azimuth_range[0]) + azimuth_range[0]
        else:
            azimuth_deg = _uniform(g, (batch,), *azimuth_range)
        camera_distances = _uniform(g, (batch,), *cfg.camera_distance_range)
        camera_positions = spherical_to_cartesian(elevation_deg, azimuth_deg, camera_distances)

        camera_positions = camera_positions + _uniform(g, (batch, 3), -cfg.camera_perturb, cfg.camera_perturb)
        center = torch.randn(batch, 3, generator=g) * cfg.center_perturb
        up = torch.tensor([0.0, 0.0, 1.0]).expand(batch, 3) + torch.randn(batch, 3, generator=g) * cfg.up_perturb
        fovy_deg = _uniform(g, (batch,), *cfg.fovy_range)
        light_positions = self._sample_lights(g, camera_positions)

        return make_camera_batch(
            camera_positions=camera_positions,
            center=center,
            up=up,
            fovy_deg=fovy_deg,
            light_positions=light_positions,
            elevation_deg=elevation_deg,
            azimuth_deg=azimuth_deg,
            camera_distances=camera_distances,
            height=height,
            width=width,
            normalize_rays=cfg.rays_d_normalize,
        )

    @staticmethod
    def _sample_elevation(g: torch.Generator, batch: int, elevation_range: Range) -> Float[Tensor, "B"]:
        low, high = elevation_range
        if torch.rand((), generator=g) < 0.5:
            return _uniform(g, (batch,), low, high)
        # uniform over the sphere's area between the two latitudes
        sin_low, sin_high = math.sin(math.radians(low)), math.sin(math.radians(high))
        return torch.rad2deg(torch.asin(_uniform(g, (batch,), sin_low, sin_high).clamp(-1.0, 1.0)))

    def _sample_lights(self, g: torch.Generator, camera_positions: Float[Tensor, "B 3"]) -> Float[Tensor, "B 3"]:
        cfg = self.cfg
        batch = camera_positions.shape[0]
        light_distances = _uniform(g, (batch,), *cfg.light_distance_range)
        if cfg.light_sample_strategy == "dreamfusion":
            noise = torch.randn(batch, 3, generator=g) * cfg.light_position_perturb
            return F.normalize(camera_positions + noise, dim=-1) * light_distances[:, None]
        # magic3d: spherical coordinates in a frame whose +z is the camera direction
        local_z = F.normalize(camera_positions, dim=-1)
        horizontal = torch.stack([local_z[:, 1], -local_z[:, 0], torch.zeros_like(local_z[:, 0])], dim=-1)
        local_x = F.normalize(horizontal, dim=-1)
        local_y = F.normalize(torch.linalg.cross(local_z, local_x, dim=-1), dim=-1)
        frame = torch.stack([local_x, local_y, local_z], dim=-1)  # columns are the local axes
        light_azimuth = _uniform(g, (batch,), -180.0, 180.0)
        light_elevation = _uniform(g, (batch,), 30.0, 90.0)
        local = spherical_to_cartesian(light_elevation, light_azimuth, light_distances)
        return (frame @ local[..., None])[..., 0]


def _check_config(cfg: RandomCameraConfig) -> None:
    n_stages = len(cfg.resolution_milestones) + 1
    for name in ("height", "width", "batch_size"):
        value = getattr(cfg, name)
        values = value if isinstance(value, (list, tuple)) else [value]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
            raise ConfigError(f"data.{name}: expected a positive integer or a list of them, got {value!r}")
        if isinstance(value, (list, tuple)) and len(value) != n_stages:
            raise ConfigError(
                f"data.{name} has {len(value)} entries but resolution_milestones {list(cfg.resolution_milestones)} "
                f"defines {n_stages} stages; give one value per stage (len(milestones) + 1) or a single integer."
            )
    if list(cfg.resolution_milestones) != sorted(cfg.resolution_milestones):
        raise ConfigError(f"data.resolution_milestones must increase, got {list(cfg.resolution_milestones)}")
    for name in ("elevation_range", "azimuth_range", "camera_distance_range", "fovy_range", "light_distance_range"):
        low, high = getattr(cfg, name)
        if low > high:
            raise ConfigError(f"data.{name}: expected [low, high] with low <= high, got {[low, high]}")
    low, high = cfg.elevation_range
    if low < -90 or high > 90:
        raise ConfigError(f"data.elevation_range must lie within [-90, 90] degrees, got {[low, high]}")
    for name in ("eval_height", "eval_width", "eval_batch_size"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"data.{name} must be positive, got {getattr(cfg, name)}")


@runtime_checkable
class BatchSampler(Protocol):
    """What a training stream draws from: a batch that is a pure function of the step (and seed)."""

    def sample(self, step: int) -> dict[str, Any]: ...


class TrainCameraStream(IterableDataset):
    """Endless stream ``sample(start), sample(start + 1), ...``; ``start_step`` is asked
    each time an iterator is created, so a resumed or reloaded loader continues at the
    trainer's step. Assumes one batch per optimiser step (no gradient accumulation)."""

    def __init__(self, sampler: BatchSampler, start_step: Callable[[], int] = lambda: 0) -> None:
        super().__init__()
        self.sampler = sampler
        self.start_step = start_step

    def __iter__(self) -> Iterator[CameraBatch]:
        step = int(self.start_step())
        while True:
            yield self.sampler.sample(step)
            step += 1


class OrbitCameraDataset(Dataset):
    """``n_views`` cameras evenly spaced in azimuth (from 0, no repeated end view) on a circle
    at a fixed elevation / distance / fovy, looking at the origin; lit from the camera.
    Item i is a ``CameraBatch`` of views ``[i * batch_size, (i + 1) * batch_size)``; rays are
    built per item so a 120-view, 512 x 512 turntable does not sit in memory."""

    def __init__(
        self,
        n_views: int,
        elevation_deg: float,
        camera_distance: float,
        fovy_deg: float,
        height: int,
        width: int,
        batch_size: int = 1,
        normalize_rays: bool = True,
    ) -> None:
        super().__init__()
        if n_views <= 0:
            raise ConfigError(f"an orbit needs at least one view, got n_views={n_views}")
        self.n_views = n_views
        self.height, self.width, self.batch_size = height, width, batch_size
        self.normalize_rays = normalize_rays
        self.azimuth_deg = torch.arange(n_views, dtype=torch.float32) * (360.0 / n_views)
        self.elevation_deg = torch.full_like(self.azimuth_deg, float(elevation_deg))
        self.camera_distances = torch.full_like(self.azimuth_deg, float(camera_distance))
        self.fovy_deg = torch.full_like(self.azimuth_deg, float(fovy_deg))

    def __len__(self) -> int:
        return math.ceil(self.n_views / self.batch_size)

    def __getitem__(self, item: int) -> CameraBatch:
        if not 0 <= item < len(self):
            raise IndexError(f"orbit batch {item} out of range (0..{len(self) - 1})")
        views = torch.arange(item * self.batch_size, min((item + 1) * self.batch_size, self.n_views))
        elevation, azimuth = self.elevation_deg[views], self.azimuth_deg[views]
        positions = spherical_to_cartesian(elevation, azimuth, self.camera_distances[views])
        return make_camera_batch(
            camera_positions=positions,
            center=torch.zeros_like(positions),
            up=torch.tensor([0.0, 0.0, 1.0]).expand_as(positions),
            fovy_deg=self.fovy_deg[views],
            light_positions=positions.clone(),
            elevation_deg=elevation,
            azimuth_deg=azimuth,
            camera_distances=self.camera_distances[views],
            height=self.height,
            width=self.width,
            index=views,
            normalize_rays=self.normalize_rays,
        )


class CameraDataModule(LightningDataModule):
    """Loader plumbing every camera data module shares: ``setup`` builds ``train_dataset`` (an
    endless per-step stream), ``val_dataset`` and ``test_dataset``; ``self.seed`` seeds the loaders."""

    seed: int

    def _global_rank(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.global_rank) if trainer is not None else global_rank()

    def _trainer_step(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.global_step) if trainer is not None else 0

    def _loader(self, dataset: Dataset) -> DataLoader:
        # batch_size=None: datasets already yield whole CameraBatches; workers would
        # only copy tensors that are cheap to build in-process
        # A private generator: creating a loader iterator otherwise draws a seed from the
        # global RNG, which would shift the training noise stream after a resume.
        return DataLoader(dataset, batch_size=None, num_workers=0, generator=torch.Generator().manual_seed(self.seed))

    def _ensure_setup(self) -> None:
        if not hasattr(self, "train_dataset"):
            self.setup()

    def check(self) -> None:
        """Fail with one line if the data on disk cannot be used; runs before a trial folder exists.
        Random cameras read nothing."""

    def train_dataloader(self) -> DataLoader:
        self._ensure_setup()
        return self._loader(self.train_dataset)

    def val_dataloader(self) -> DataLoader:
        self._ensure_setup()
        return self._loader(self.val_dataset)

    def test_dataloader(self) -> DataLoader:
        self._ensure_setup()
        return self._loader(self.test_dataset)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()


@register("random-camera-datamodule")
class RandomCameraDataModule(CameraDataModule):
    """Training stream of random cameras; validation orbit; test / predict turntable."""

    Config = RandomCameraConfig
    Sampler = RandomCameraSampler

    def __init__(self, cfg: Any = None, seed: int = 0) -> None:
        super().__init__()
        self.sampler = self.Sampler(cfg, seed=seed)
        self.cfg: RandomCameraConfig = self.sampler.cfg
        self.seed = int(seed)

    def setup(self, stage: Optional[str] = None) -> None:
        # runs in every training process once the ranks are known: each rank its own camera stream
        self.sampler.seed = rank_seed(self.seed, self._global_rank())
        self.train_dataset = TrainCameraStream(self.sampler, start_step=self._trainer_step)
        self.val_dataset = self._orbit(self.cfg.n_val_views)
        self.test_dataset = self._orbit(self.cfg.n_test_views)

    def _orbit(self, n_views: int) -> OrbitCameraDataset:
        cfg = self.cfg
        return OrbitCameraDataset(
            n_views,
            elevation_deg=cfg.eval_elevation_deg,
            camera_distance=cfg.eval_camera_distance,
            fovy_deg=cfg.eval_fovy_deg,
            height=cfg.eval_height,
            width=cfg.eval_width,
            batch_size=cfg.eval_batch_size,
            normalize_rays=cfg.rays_d_normalize,
        )
