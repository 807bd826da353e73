"""Train the embedded prior on procedural renders.

    python -m lab.priors.train_prior --out DIR --steps N --batch-size B --seed S

Renders the dataset once (cached as a tensor file under ``~/.cache/threestudio_like``, never in
the repository), then trains the UNet and the text encoder together on the epsilon objective
with min-SNR weighting, AdamW with linear warmup and cosine decay, and an EMA of the weights.
Every ``--save-every`` steps it writes the EMA model folder to DIR and the full training state
to DIR/train_state.pt, so an interrupted run resumes where it stopped (rerun the same command).
``--edit`` trains an editing model (InstructPix2Pix, ``builtin:edit32``) on procedural edit pairs
instead: the UNet also sees the source image, and a text-to-image ``--init-from`` gains zero
weights for it. ``--n-view 4`` trains a multi-view (MVDream) prior; ``--snr-floor``,
``--front-share`` and ``--side-feature-weight`` make it learn which side each camera sees.
DIR/training_log.csv holds the loss curve and DIR/training_info.json how the model was made;
a warm start (``--init-from``) carries both over from the folder it starts from, so a model
trained in stages keeps every stage's curve (column ``stage``) and settings.
"""

from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Optional

import torch
import torch.nn as nn

from threestudio_like.data.random_camera import step_seed
from threestudio_like.guidance.multiview_unet import CAMERA_DIM, MultiViewUNet2DConditionModel
from lab import lab_side
from lab.priors import edit_pairs, procedural
from lab.priors.prior_model import PriorArchitecture, PriorModel, copy_text_encoder_by_word, parameter_count, with_image_condition
from lab.priors.view_head import VIEW_SHAPES  # the shapes whose front shows
from threestudio_like.utils.io import atomic_path, atomic_write_text
from threestudio_like.utils.typing import Float, Int, Tensor

STATE_FILE = "train_state.pt"
LOG_FILE = "training_log.csv"
INFO_FILE = "training_info.json"
MIN_SNR_GAMMA = 5.0  # min-SNR loss weighting (Hang et al. 2023): faster convergence for eps-prediction


@dataclass
class TrainConfig:
    out: str
    steps: int = 1500
    batch_size: int = 64
    seed: int = 0
    dataset_size: int = 24000
    dataset_seed: int = 0
    lr: float = 6e-4
    warmup: int = 100
    weight_decay: float = 0.01
    ema_decay: float = 0.995
    save_every: int = 200
    threads: int = 1  # on a shared CPU one thread per process is faster than oversubscribing
    bf16: bool = True  # autocast matmuls / convolutions to bfloat16 (AMX / AVX512-BF16 CPUs, CUDA)
    keep_state: bool = False
    init_from: Optional[str] = None  # start from this prior folder's weights (fine-tuning / extending a run)
    # > 1: a multi-view prior (MVDream): groups of n_view views of one object, told their cameras;
    # batch_size and dataset_size count views. A 2D init_from gains a zero camera embedding.
    n_view: int = 1
    camera_lr_scale: float = 10.0  # the new camera embedding learns this much faster than the rest
    # Which side a view shows is decided at high noise, where the epsilon loss hardly sees x0
    # (its x0 weight is the SNR). snr_floor > 0 keeps the x0 weight at least snr_floor there
    # (truncated SNR weighting, Salimans & Ho 2022, combined with min-SNR); front_share draws
    # this share of the groups from the shapes whose front shows, the only ones a camera tells
    # apart; side_feature_weight weights the pixels of their door and handle (a few percent of
    # the image, all that differs between a front and a back) 1 + this much; high_t_share
    # draws this share of the groups' timesteps from the upper half [T/2, T), where the
    # camera decides the picture.
    snr_floor: float = 0.0
    front_share: float = 0.0
    side_feature_weight: float = 0.0
    high_t_share: float = 0.0
    # An editing model (InstructPix2Pix, builtin:edit32): trained on procedural edit pairs to
    # denoise the edited image given the instruction and the source image. A text-to-image
    # init_from gains zero input weights for the source image.
    edit: bool = False
    architecture: PriorArchitecture = field(default_factory=PriorArchitecture)


# --------------------------------------------------------------------------- data
def dataset_cache_path(n_images: int, seed: int, n_view: int = 1, edit: bool = False) -> str:
    """Cache file keyed by size, seed, views per object and the generators' source, so edited shapes re-render."""
    digest = hashlib.sha256()
    for module in (procedural, edit_pairs) if edit else (procedural,):
        with open(module.__file__, "rb") as f:
            digest.update(f.read())
    root = os.environ.get("THREESTUDIO_LIKE_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "threestudio_like"))
    kind = "-edit" if edit else "" if n_view == 1 else f"-mv{n_view}"
    return os.path.join(root, "prior_data", f"shapes32-n{n_images}-seed{seed}{kind}-{digest.hexdigest()[:12]}.pt")


def to_uint8(images: Float[Tensor, "N 3 H W"]) -> Tensor:
    return (images * 255.0 + 0.5).clamp(0, 255).to(torch.uint8)


def load_or_render_dataset(n_images: int, seed: int, log=print, n_view: int = 1, edit: bool = False) -> dict:
    """{"images": uint8 [N,3,32,32], "side_features": uint8 [N,1,32,32], "captions": [N], "shape_ids", "colour_ids", "flat"}; for
    ``n_view > 1`` also "cameras" [N,16] (MVDream's condition) and captions without view suffixes;
    for ``edit`` edit pairs: "images" the targets, "conditions" the sources, "captions" the instructions."""
    path = dataset_cache_path(n_images, seed, n_view, edit)
    if os.path.isfile(path):
        log(f"dataset: {n_images} images from cache {path}")
        return torch.load(path, weights_only=False)
    start = time.time()

    def progress(done: int, total: int) -> None:
        if done == total or done % 4096 < 256:
            log(f"rendering {done}/{total} ({time.time() - start:.0f} s)")

    if edit:
        pairs = edit_pairs.generate_pairs(n_images, seed=seed, progress=progress)
        data = {"images": to_uint8(pairs.targets), "conditions": to_uint8(pairs.sources), "captions": pairs.instructions}
        data.update(shape_ids=pairs.shape_ids, colour_ids=pairs.target_colour_ids, render_seconds=time.time() - start)
        with atomic_path(path) as tmp:
            torch.save(data, tmp)
        log(f"dataset: rendered {n_images} edit pairs in {data['render_seconds']:.1f} s -> {path}")
        return data
    batch = procedural.generate_dataset(n_images, seed=seed, progress=progress, n_view=n_view)
    data = {
        "images": to_uint8(batch.images),
        "side_features": to_uint8(batch.side_features),
        "captions": batch.captions if n_view == 1 else batch.object_captions,
        "shape_ids": batch.shape_ids,
        "colour_ids": batch.colour_ids,
        "flat": batch.flat,
        "render_seconds": time.time() - start,
    }
    if n_view > 1:
        from threestudio_like.guidance.multiview_unet import mvdream_camera

        data["cameras"] = mvdream_camera(batch.c2w)
    with atomic_path(path) as tmp:
        torch.save(data, tmp)
    log(f"dataset: rendered {n_images} images in {data['render_seconds']:.1f} s -> {path}")
    return data


# --------------------------------------------------------------------------- training pieces
class EMA:
    """Exponential moving average of a module's parameters and buffers."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        # warm-started decay: early on the average follows the fast-moving weights closely
        decay = min(self.decay, (1 + step) / (10 + step))
        for ema_p, p in zip(self.shadow.parameters(), module.parameters()):
            ema_p.lerp_(p.detach(), 1.0 - decay)
        for ema_b, b in zip(self.shadow.buffers(), module.buffers()):
            ema_b.copy_(b)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup then cosine decay to 5% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))


def min_snr_weights(
    alphas_cumprod: Float[Tensor, "T"], timesteps: Int[Tensor, "B"], gamma: float = MIN_SNR_GAMMA, floor: float = 0.0
) -> Float[Tensor, "B"]:
    """Per-sample weights clamp(SNR, floor, gamma) / SNR for the epsilon loss: an x0 loss
    weighted by the SNR, clipped above at ``gamma`` (min-SNR) and below at ``floor``."""
    abar = alphas_cumprod[timesteps]
    snr = abar / (1.0 - abar)
    return snr.clamp(min=floor, max=gamma) / snr


def draw_groups(data: dict, objects: int, n_view: int, front_share: float, g: torch.Generator) -> Int[Tensor, "G"]:
    """Indices of ``objects`` groups: uniform, or ``front_share`` of them from ``VIEW_SHAPES``."""
    n_groups = len(data["images"]) // n_view
    group = torch.randint(n_groups, (objects,), generator=g)
    if front_share > 0:
        shapes = data["shape_ids"][::n_view]
        front = torch.isin(shapes, torch.tensor([procedural.SHAPE_NAMES.index(s) for s in VIEW_SHAPES])).nonzero()[:, 0]
        pick = front[torch.randint(len(front), (objects,), generator=g)]
        group = torch.where(torch.rand(objects, generator=g) < front_share, pick, group)
    return group


def draw_timesteps(objects: int, n_timesteps: int, high_t_share: float, g: torch.Generator) -> Int[Tensor, "G"]:
    """One timestep per group: uniform on [0, T), or ``high_t_share`` of them on [T/2, T)."""
    timesteps = torch.randint(n_timesteps, (objects,), generator=g)
    if high_t_share > 0:
        high = torch.randint(n_timesteps // 2, n_timesteps, (objects,), generator=g)
        timesteps = torch.where(torch.rand(objects, generator=g) < high_t_share, high, timesteps)
    return timesteps


def training_batch(data: dict, token_ids: Int[Tensor, "N L"], empty_ids: Int[Tensor, "L"], step: int, cfg: TrainConfig, n_timesteps: int):
    """The batch for ``step``: a pure function of (seed, step), so resumed runs see the same data.

    Draws whole objects (groups of ``n_view`` adjacent views); a group shares its caption
    dropout and its timestep, as the multi-view guidance uses one timestep per group. Edit pairs
    come with their source image (``condition``), dropped like InstructPix2Pix's."""
    g = torch.Generator().manual_seed(step_seed(cfg.seed, step))
    n_view, objects = cfg.n_view, cfg.batch_size // cfg.n_view
    group = draw_groups(data, objects, n_view, cfg.front_share, g)
    index = (group[:, None] * n_view + torch.arange(n_view)).reshape(-1)
    images = data["images"][index].float() / 127.5 - 1.0
    ids = token_ids[index].clone()
    p_empty = edit_pairs.EMPTY_INSTRUCTION_PROBABILITY if cfg.edit else procedural.EMPTY_CAPTION_PROBABILITY
    dropped = (torch.rand(objects, generator=g) < p_empty).repeat_interleave(n_view)
    ids[dropped] = empty_ids
    timesteps = draw_timesteps(objects, n_timesteps, cfg.high_t_share, g).repeat_interleave(n_view)
    noise = torch.randn(images.shape, generator=g)
    unet_options: dict = {"camera": data["cameras"][index], "num_frames": n_view} if n_view > 1 else {}
    if cfg.edit:
        condition = data["conditions"][index].float() / 127.5 - 1.0
        no_image = torch.rand(objects, generator=g) < edit_pairs.EMPTY_IMAGE_PROBABILITY
        unet_options["condition"] = torch.where(no_image[:, None, None, None], torch.zeros_like(condition), condition)
    pixel_weights = 1.0 + cfg.side_feature_weight * data["side_features"][index].float() / 255.0 if cfg.side_feature_weight else None
    return images, ids, timesteps, noise, unet_options, pixel_weights


def machine_description() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


# --------------------------------------------------------------------------- loop
def train(cfg: TrainConfig, command: Optional[list[str]] = None) -> PriorModel:
    torch.set_num_threads(cfg.threads)
    os.makedirs(cfg.out, exist_ok=True)
    start_time = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - start_time:7.1f}s] {msg}", flush=True)

    data = load_or_render_dataset(cfg.dataset_size, cfg.dataset_seed, log, cfg.n_view, cfg.edit)
    state_path = os.path.join(cfg.out, STATE_FILE)
    state = torch.load(state_path, weights_only=False) if os.path.isfile(state_path) else None
    if state is not None:
        cfg.architecture = PriorArchitecture(**state["architecture"])

    torch.manual_seed(cfg.seed)
    initial = PriorModel.load(cfg.init_from) if state is None and cfg.init_from else None
    if initial is not None:
        cfg.architecture = initial.arch
    if cfg.n_view > 1:
        cfg.architecture = replace(cfg.architecture, camera_dim=CAMERA_DIM)
    if cfg.edit:
        cfg.architecture = replace(cfg.architecture, image_condition=True)
    model = PriorModel.create(cfg.out, cfg.architecture, seed=cfg.seed)
    if initial is not None:  # same tokenizer (written deterministically), so token ids match
        unet = initial.unet
        if cfg.n_view > 1 and not isinstance(unet, MultiViewUNet2DConditionModel):
            unet = MultiViewUNet2DConditionModel.from_2d(unet)  # MVDream's start: a zero camera embedding
        if cfg.edit and not initial.arch.image_condition:
            unet = with_image_condition(unet)  # InstructPix2Pix's start: zero weights on the source image
        model.unet.load_state_dict(unet.state_dict())
        copy_text_encoder_by_word(model, initial)
        log(f"initialised from {cfg.init_from}")
    model.train()
    ema = EMA(model, cfg.ema_decay)
    camera = [p for n, p in model.named_parameters() if n.startswith("unet.class_embedding.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("unet.class_embedding.")]
    groups = [{"params": rest}] + ([{"params": camera, "lr": cfg.lr * cfg.camera_lr_scale}] if camera else [])
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg.warmup, cfg.steps))
    first_step, wall_before = 0, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        ema.shadow.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        first_step, wall_before = state["step"], state["wall_seconds"]
        log(f"resumed from {state_path} at step {first_step}")

    token_ids = model.tokenize(data["captions"])
    empty_ids = model.tokenize([""])[0]
    alphas_cumprod = model.scheduler.alphas_cumprod.float()
    n_timesteps = model.scheduler.config.num_train_timesteps
    log(
        f"unet {parameter_count(model.unet) / 1e6:.2f}M params, text encoder {parameter_count(model.text_encoder) / 1e6:.2f}M; "
        f"{cfg.steps} steps of {cfg.batch_size}"
    )

    log_path = os.path.join(cfg.out, LOG_FILE)
    stage = training_stage(cfg.init_from)
    start_log(log_path, first_step, stage, carried_from=cfg.init_from)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    smoothed = state.get("loss_smoothed") if state is not None else None
    session_start = time.time()
    for step in range(first_step, cfg.steps):
        images, ids, timesteps, noise, unet_options, pixel_weights = training_batch(data, token_ids, empty_ids, step, cfg, n_timesteps)
        noisy = model.scheduler.add_noise(images, noise, timesteps)
        # The math attention kernel: on CPU its backward is faster than the flash kernel at these sizes.
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16), sdpa_kernel(SDPBackend.MATH):
            prediction = model(noisy, timesteps, ids, **unet_options)
        error = (prediction.float() - noise).pow(2)
        per_sample = (error if pixel_weights is None else error * pixel_weights).mean(dim=(1, 2, 3))
        loss = (per_sample * min_snr_weights(alphas_cumprod, timesteps, floor=cfg.snr_floor)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        ema.update(model, step)

        value = float(loss.detach())
        smoothed = value if smoothed is None else 0.98 * smoothed + 0.02 * value
        elapsed = wall_before + time.time() - session_start
        with open(log_path, "a", newline="") as f:
            csv.writer(f).writerow(
                [step + 1, f"{value:.5f}", f"{smoothed:.5f}", f"{scheduler.get_last_lr()[0]:.3e}", f"{elapsed:.1f}", stage]
            )
        done = step + 1
        if done % 25 == 0 or done == cfg.steps:
            rate = (time.time() - session_start) / (done - first_step)
            log(f"step {done}/{cfg.steps} loss {smoothed:.4f} lr {scheduler.get_last_lr()[0]:.2e} {rate:.2f} s/step, eta {rate * (cfg.steps - done) / 60:.1f} min")
        if done % cfg.save_every == 0 or done == cfg.steps:
            ema.shadow.save(cfg.out)
            write_info(cfg, data, elapsed, done, smoothed, command, model)
            if done < cfg.steps or cfg.keep_state:
                save_state(state_path, model, ema, optimizer, scheduler, cfg, done, elapsed, smoothed)
            log(f"saved EMA model at step {done} to {cfg.out}")
    if not cfg.keep_state and os.path.isfile(state_path):
        os.remove(state_path)
    return ema.shadow


LOG_COLUMNS = ["step", "loss", "loss_smoothed", "lr", "elapsed_seconds", "stage"]


def training_stage(init_from: Optional[str]) -> int:
    """1 for a run from scratch; a warm start is one stage past the run it starts from."""
    stage, info = 1, previous_training_info(init_from)
    while info is not None:
        stage, info = stage + 1, info.get("initialised_from")
    return stage


def read_log(folder: str, stage: int) -> list[list[str]]:
    """The rows of ``folder``'s loss log; rows of logs written before the ``stage`` column get ``stage``."""
    path = os.path.join(lab_side(folder), LOG_FILE)
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        header, *rows = list(csv.reader(f)) or [[]]
    return [r if "stage" in header else r + [str(stage)] for r in rows if r]


def start_log(path: str, first_step: int, stage: int, carried_from: Optional[str] = None) -> None:
    """A fresh loss log holding the earlier stages' rows of a warm start, or on resume the old
    one with this stage cut back to the steps the saved state has seen."""
    if first_step > 0:
        rows = [r for r in read_log(os.path.dirname(path), stage) if int(r[5]) < stage or int(r[0]) <= first_step]
    else:
        rows = read_log(carried_from, stage - 1) if carried_from else []
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(LOG_COLUMNS)
            writer.writerows(rows)


def save_state(
    path: str, model: PriorModel, ema: EMA, optimizer, scheduler, cfg: TrainConfig, step: int, wall: float, smoothed: Optional[float]
) -> None:
    state = {
        "loss_smoothed": smoothed,
        "model": model.state_dict(),
        "ema": ema.shadow.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "architecture": asdict(cfg.architecture),
        "step": step,
        "wall_seconds": wall,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def write_info(cfg: TrainConfig, data: dict, wall: float, step: int, loss: float, command, model: PriorModel) -> None:
    info = {
        "steps_done": step,
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "dataset_size": cfg.dataset_size,
        "dataset_seed": cfg.dataset_seed,
        "dataset_render_seconds": data.get("render_seconds"),
        "wall_seconds": round(wall, 1),
        "seconds_per_step": round(wall / max(step, 1), 3),
        "final_loss_smoothed": loss,
        "unet_parameters": parameter_count(model.unet),
        "text_encoder_parameters": parameter_count(model.text_encoder),
        "config": {k: v for k, v in asdict(cfg).items() if k != "out"},
        "machine": machine_description(),
        "command": " ".join(command or sys.argv),
        "initialised_from": previous_training_info(cfg.init_from),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    atomic_write_text(os.path.join(cfg.out, INFO_FILE), json.dumps(info, indent=2, default=str))


def previous_training_info(folder: Optional[str]) -> Optional[dict]:
    """The training_info.json of the run a warm start came from (provenance of extended runs)."""
    if not folder:
        return None
    path = os.path.join(lab_side(folder), INFO_FILE)  # a built-in prior's is in lab/weights/<name>
    if not os.path.isfile(path):
        return {"folder": folder}
    with open(path) as f:
        return {"folder": folder, **json.load(f)}


def parse_args(argv: Optional[list[str]] = None) -> TrainConfig:
    defaults = TrainConfig(out="")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (diffusers layout); rerun to resume")
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--dataset-size", type=int, default=defaults.dataset_size)
    p.add_argument("--dataset-seed", type=int, default=defaults.dataset_seed)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--warmup", type=int, default=defaults.warmup)
    p.add_argument("--ema-decay", type=float, default=defaults.ema_decay)
    p.add_argument("--save-every", type=int, default=defaults.save_every)
    p.add_argument("--threads", type=int, default=defaults.threads)
    p.add_argument("--no-bf16", action="store_true", help="train in float32")
    p.add_argument("--keep-state", action="store_true", help="keep train_state.pt after the last step")
    p.add_argument("--init-from", default=None, help="start from the weights of this prior folder (fresh optimiser)")
    p.add_argument("--n-view", type=int, default=defaults.n_view, help="views per object: > 1 trains a multi-view (MVDream) prior")
    p.add_argument("--edit", action="store_true", help="train an editing model (InstructPix2Pix) on procedural edit pairs")
    p.add_argument("--camera-lr-scale", type=float, default=defaults.camera_lr_scale)
    p.add_argument("--snr-floor", type=float, default=defaults.snr_floor, help="lower clip of the loss's x0 weight (the SNR): > 0 weights high noise up")
    p.add_argument("--front-share", type=float, default=defaults.front_share, help=f"share of groups drawn from {', '.join(VIEW_SHAPES)}")
    p.add_argument("--side-feature-weight", type=float, default=defaults.side_feature_weight, help="extra loss weight on door / handle pixels")
    p.add_argument("--high-t-share", type=float, default=defaults.high_t_share, help="share of groups trained at timesteps in the upper half")
    p.add_argument("--channels", type=str, default=",".join(map(str, defaults.architecture.block_out_channels)), help="UNet block_out_channels")
    args = p.parse_args(argv)
    arch = PriorArchitecture(block_out_channels=tuple(int(c) for c in args.channels.split(",")))
    if args.steps <= 0 or args.batch_size <= 0:
        p.error("--steps and --batch-size must be positive")
    if args.edit and (args.front_share or args.side_feature_weight):
        p.error("--front-share and --side-feature-weight are for multi-view priors, not --edit")
    if args.n_view < 1 or args.batch_size % args.n_view or args.dataset_size % args.n_view:
        p.error(f"--batch-size and --dataset-size must be multiples of --n-view ({args.n_view})")
    return TrainConfig(
        out=args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        dataset_size=args.dataset_size,
        dataset_seed=args.dataset_seed,
        lr=args.lr,
        warmup=args.warmup,
        ema_decay=args.ema_decay,
        save_every=args.save_every,
        threads=args.threads,
        bf16=not args.no_bf16,
        keep_state=args.keep_state,
        init_from=args.init_from,
        n_view=args.n_view,
        camera_lr_scale=args.camera_lr_scale,
        snr_floor=args.snr_floor,
        front_share=args.front_share,
        side_feature_weight=args.side_feature_weight,
        high_t_share=args.high_t_share,
        edit=args.edit,
        architecture=arch,
    )


def main(argv: Optional[list[str]] = None) -> None:
    cfg = parse_args(argv)
    train(cfg, command=["python -m lab.priors.train_prior", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    main()
