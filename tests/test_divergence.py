"""A diverging run stops at the step it diverged, names what went bad, and leaves good checkpoints.

Through the CLI on the tiny recipe: a geometry learning rate jumps to infinity (the parameters
turn NaN) or to 1e30 (the parameters stay finite but the field's density overflows, so the
renders turn NaN). And under mixed precision the GradScaler's skipped overflow steps are not
mistaken for a divergence.
"""

from __future__ import annotations

import glob
import os

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from recipe_overrides import RECIPE, tiny_recipe
from threestudio_like.cli import main
from threestudio_like.experiment import finalize_config, load_config
from threestudio_like.experiment import find_part
from threestudio_like.systems.divergence import DivergenceGuard, TrainingDivergedError
from threestudio_like.systems.dreamfusion import DreamFusion

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def float_tensors(checkpoint: dict) -> dict[str, torch.Tensor]:
    """Every floating-point tensor of a checkpoint: weights, buffers and the optimiser state."""
    found = {k: v for k, v in checkpoint["state_dict"].items() if v.is_floating_point()}
    for i, optimizer in enumerate(checkpoint["optimizer_states"]):
        for index, state in optimizer["state"].items():
            found.update({f"optimizer{i}.{index}.{k}": v for k, v in state.items() if torch.is_tensor(v)})
    return found


@pytest.mark.parametrize(
    "lr, jump_step, failing_step, named",
    [
        # inf: the step-5 update makes the weights NaN; Lightning writes the step-6 checkpoint in its
        # batch-end hook right after, so the check must run inside the optimiser step.
        (".inf", 5, 5, ["after the optimiser step", "geometry.encoding.params"]),
        # 1e30: the step-4 update leaves finite weights near 1e29 whose density overflows to NaN;
        # the step-5 render shows it (and the message points at the huge parameters).
        ("1e30", 4, 5, ["render's comp_rgb, opacity", "the largest is geometry."]),
    ],
)
def test_divergence_stops_at_its_step_and_keeps_good_checkpoints(
    tiny_model_dir, tmp_path, capsys, lr, jump_step, failing_step, named
):
    schedule = f"[[0,0.01],[{jump_step - 1},0.01],[{jump_step},{lr}]]"
    args = tiny_recipe(
        tiny_model_dir, str(tmp_path), **{"trainer.max_steps": 10, "system.optimizer.params.geometry.lr": schedule}
    )
    assert main(["--config", os.path.join(ROOT, RECIPE), "--train", *args]) == 1
    err = capsys.readouterr().err
    assert f"training diverged at step {failing_step}:" in err
    for part in named:
        assert part in err, err

    ckpts = os.path.join(str(tmp_path), "outputs", "dreamfusion-sd", "a_red_cube", "ckpts")
    steps = sorted(int(p.split("step=")[1][: -len(".ckpt")]) for p in glob.glob(os.path.join(ckpts, "epoch=*")))
    assert steps == [2, 4]  # nothing written from the diverged steps on
    last = torch.load(os.path.join(ckpts, "last.ckpt"), map_location="cpu", weights_only=True)
    assert last["global_step"] == 4
    step4 = torch.load(glob.glob(os.path.join(ckpts, "*step=4.ckpt"))[0], map_location="cpu", weights_only=True)
    for name, value in float_tensors(last).items():
        assert torch.isfinite(value).all(), f"{name} is not finite in last.ckpt"
        assert value.abs().max() < 1e6, f"{name} holds huge values in last.ckpt"
        assert torch.equal(value, float_tensors(step4)[name])


class InfiniteGradientAtStep2(DreamFusion):
    """Adds sqrt(0) to the loss at step 2: the loss stays finite, the geometry's gradient is inf,
    as when an fp16 backward overflows under a GradScaler."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        if self.global_step == 2:
            param = next(self.geometry.parameters())
            loss = loss + (param - param.detach()).sum().sqrt()
        return loss


def fit_with_infinite_gradient(model_dir: str, tmp: str, plugins: list) -> pl.Trainer:
    exp = finalize_config(load_config(os.path.join(ROOT, RECIPE), cli_args=tiny_recipe(model_dir, tmp)))
    system = InfiniteGradientAtStep2(exp.system, save_dir=os.path.join(tmp, "save"))
    trainer = pl.Trainer(
        max_steps=4, accelerator="cpu", plugins=plugins, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, inference_mode=False,
        num_sanity_val_steps=0, limit_val_batches=0,
    )
    trainer.fit(system, datamodule=find_part(exp.data_type)(exp.data, seed=0))
    return trainer


def test_grad_scaler_overflow_skips_are_not_a_divergence(tiny_model_dir, tmp_path):
    # 16-mixed as on the GPU (CPU autocast); init_scale 1 so the only overflow is the injected one
    scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    trainer = fit_with_infinite_gradient(tiny_model_dir, str(tmp_path), [MixedPrecision("16-mixed", "cpu", scaler)])
    assert trainer.global_step == 4
    assert scaler.get_scale() == 0.5  # the scaler skipped exactly that step and halved its scale
    assert all(torch.isfinite(p).all() for p in trainer.lightning_module.parameters())


def test_infinite_gradient_without_a_scaler_is_a_divergence(tiny_model_dir, tmp_path):
    with pytest.raises(TrainingDivergedError, match=r"at step 2: the gradients of geometry\.\S+ became NaN/inf"):
        fit_with_infinite_gradient(tiny_model_dir, str(tmp_path), [])


def test_overflowing_optimiser_state_is_named_even_when_the_weights_stay_finite(tiny_model_dir, tmp_path):
    # A finite gradient of 1e22 overflows Adam's second moment (0.01 * 1e44 > float32 max): the update
    # m / sqrt(v) is 0, so the weights look fine while the optimiser state is already ruined.
    exp = finalize_config(load_config(os.path.join(ROOT, RECIPE), cli_args=tiny_recipe(tiny_model_dir, str(tmp_path))))
    system = find_part(exp.system_type)(exp.system, save_dir=str(tmp_path))
    optimizer = system.configure_optimizers()["optimizer"]
    for param in system.geometry.parameters():
        param.grad = torch.full_like(param, 1e22)
    system.on_before_optimizer_step(optimizer)  # finite gradients: no complaint
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in system.parameters())
    with pytest.raises(TrainingDivergedError, match=r"hold NaN/inf: optimizer state of group geometry\. "):
        system.check_state_after_step(optimizer)


# --------------------------------------------------------------------------- host syncs (issue 31, 9)
class ManyLoRATensors(DivergenceGuard, pl.LightningModule):
    """Hundreds of small parameter tensors, as a LoRA critic has; ``step`` runs one optimiser step
    in Lightning's order: the closure renders, checks the render and loss, backpropagates, then
    ``on_before_optimizer_step``; after the step ``check_state_after_step``."""

    def __init__(self, n: int = 300) -> None:
        super().__init__()
        self.lora = torch.nn.ParameterList(torch.nn.Parameter(torch.full((4, 4), 0.01)) for _ in range(n))

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            value = torch.sigmoid(torch.stack([p.sum() for p in self.lora]).sum())
            out = {"comp_rgb": value.expand(1, 2, 2, 3), "opacity": value.expand(1, 2, 2, 1)}
            self.check_render(out)
            loss = (out["comp_rgb"] - 0.3).pow(2).mean()
            self.check_loss(loss, {"loss_fit": loss})
            loss.backward()
            self.on_before_optimizer_step(optimizer)
            return loss

        self.optimizer_step(0, 0, optimizer, closure)


@pytest.fixture
def host_syncs(monkeypatch):
    """Counts the calls that read a tensor's value on the host (each a device sync on a GPU) and the
    per-tensor ``torch.isfinite`` checks."""
    counts = {"sync": 0, "isfinite": 0}
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "numpy"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            counts["sync"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    isfinite = torch.isfinite

    def counted_isfinite(*args, **kwargs):
        counts["isfinite"] += 1
        return isfinite(*args, **kwargs)

    monkeypatch.setattr(torch, "isfinite", counted_isfinite)
    return counts


def test_a_step_checks_hundreds_of_tensors_with_one_host_sync(host_syncs):
    # before: one sync each for the render, the loss, the gradients and the state (4 per step),
    # and one isfinite per tensor (~900 here: 300 weights, 300 gradients, 300 momentum buffers)
    module = ManyLoRATensors()
    # SGD with momentum: optimiser state to check, and no syncs of its own (CPU Adam reads its step count)
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-3, momentum=0.9)
    module.step(optimizer)  # the momentum buffers appear at the first step
    host_syncs.update(sync=0, isfinite=0)
    module.step(optimizer)
    assert host_syncs["sync"] == 1
    assert host_syncs["isfinite"] < 10


def test_a_nan_in_one_lora_tensor_is_still_found_and_named():
    module = ManyLoRATensors()
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    module.step(optimizer)
    # a NaN gradient in one tensor, found in the step (before the checkpoint)
    hook = module.lora[137].register_hook(lambda grad: grad * float("nan"))
    with pytest.raises(TrainingDivergedError, match=r"the gradients of lora\.137 became NaN/inf"):
        module.step(optimizer)
    hook.remove()
    # a NaN weight in one tensor, after a step
    with torch.no_grad():
        for p in module.lora:
            p.fill_(0.01)
        module.lora[211][1, 2] = float("nan")
    with pytest.raises(TrainingDivergedError, match=r"hold NaN/inf: lora\.211(,|$)"):
        module.check_state_after_step(optimizer)


def test_finite_flags_tell_huge_values_from_nan_and_inf():
    from threestudio_like.systems.divergence import finite_flags

    tensors = [
        torch.full((1000,), 3e38),  # finite; its 2-norm overflows to inf
        torch.tensor([1.0, float("nan")]),
        torch.tensor([float("-inf"), 0.0]),
        torch.zeros(0),  # empty: finite
        torch.tensor([1.0, float("nan")], dtype=torch.float16),
        torch.full((3,), 6e4, dtype=torch.float16),  # finite fp16 whose 2-norm overflows
    ]
    order, flags = finite_flags(tensors)
    found = dict(zip(order, flags.tolist()))
    assert found == {0: True, 1: False, 2: False, 4: False, 5: True}
