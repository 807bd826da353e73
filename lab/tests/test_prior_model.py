"""The embedded prior's model folder, training pieces and (when shipped) trained behaviour."""

import json
import os

import pytest
import torch

from lab.priors import procedural as P
from lab.priors.prior_model import PriorArchitecture, PriorModel, sample_images
from lab.priors.train_prior import EMA, TrainConfig, draw_groups, draw_timesteps, lr_factor, min_snr_weights, train
from lab.priors.view_head import VIEW_SHAPES

from lab import LAB_WEIGHTS_DIR, lab_side
from threestudio_like.guidance.models import BUILTIN_WEIGHTS_DIR

SHIPPED = os.path.join(BUILTIN_WEIGHTS_DIR, "shapes32")  # what the recipes load (in the wheel)
SHIPPED_LAB = os.path.join(LAB_WEIGHTS_DIR, "shapes32")  # its architecture, training record and classifier (lab only)
TINY = PriorArchitecture(block_out_channels=(16, 32), text_hidden_size=32, text_layers=1, text_heads=2, attention_heads=2)


@pytest.fixture(scope="module")
def prior_folder(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("prior") / "model")
    PriorModel.create(folder, TINY, seed=0).save(folder)
    return folder


def test_folder_loads_with_diffusers_and_transformers(prior_folder):
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(os.path.join(prior_folder, "unet"))
    text_encoder = CLIPTextModel.from_pretrained(os.path.join(prior_folder, "text_encoder"))
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(prior_folder, "tokenizer"))
    scheduler = DDPMScheduler.from_pretrained(os.path.join(prior_folder, "scheduler"))
    assert os.path.isfile(os.path.join(prior_folder, "unet", "diffusion_pytorch_model.safetensors"))
    assert os.path.isfile(os.path.join(prior_folder, "text_encoder", "model.safetensors"))
    assert scheduler.config.beta_schedule == "scaled_linear" and scheduler.config.prediction_type == "epsilon"
    assert scheduler.config.num_train_timesteps == 1000
    assert abs(scheduler.betas[0].item() - 0.00085) < 1e-7 and abs(scheduler.betas[-1].item() - 0.012) < 1e-7
    index = json.load(open(os.path.join(prior_folder, "model_index.json")))
    assert index["_class_name"] == "StableDiffusionPipeline" and index["vae"] == [None, None]
    assert set(json.load(open(os.path.join(prior_folder, "known_words.json")))) == set(P.CAPTION_WORDS)

    # SD-style call: prompt -> tokens padded to the shared length -> hidden states -> UNet
    length = min(tokenizer.model_max_length, text_encoder.config.max_position_embeddings)
    ids = tokenizer(["a red cube, front view"], padding="max_length", max_length=length, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = text_encoder(ids)[0]
        eps = unet(torch.randn(2, 3, 32, 32), torch.tensor([10, 900]), encoder_hidden_states=hidden.expand(2, -1, -1)).sample
    assert eps.shape == (2, 3, 32, 32) and torch.isfinite(eps).all()


def test_folder_loads_through_guidance_models(prior_folder):
    from threestudio_like.guidance.models import load_diffusion_components

    parts = load_diffusion_components(prior_folder)
    assert parts.vae is None and parts.unet.config.in_channels == 3 and parts.unet.config.sample_size == 32


def test_every_caption_word_is_one_token(prior_folder):
    model = PriorModel.load(prior_folder)
    tok = model.tokenizer
    for word in P.CAPTION_WORDS:
        ids = tok(word).input_ids
        assert len(ids) == 3, f"{word!r} -> {ids}"
        assert tok.decode(ids[1:2]).strip() == word
    caption = "a purple cylinder, overhead view"
    assert len(tok(caption).input_ids) == 2 + 6  # bos, 5 words and the comma, eos
    assert model.tokenize([caption]).shape == (1, TINY.text_max_length)


def test_tokenizer_files_agree_and_are_rewritten_identically(prior_folder, tmp_path):
    """Re-creating a model over a folder holding an earlier save (as a resumed run does) must give
    the same token ids, and the saved tokenizer.json (preferred by AutoTokenizer) must encode
    like the saved vocab.json + merges.txt."""
    import shutil

    from transformers import AutoTokenizer

    captions = [P.caption(c, s, "front") for c in P.COLOUR_NAMES for s in P.SHAPE_NAMES]
    expected = AutoTokenizer.from_pretrained(os.path.join(prior_folder, "tokenizer"))(captions).input_ids
    folder = str(tmp_path / "model")
    shutil.copytree(prior_folder, folder)
    recreated = PriorModel.create(folder, TINY, seed=0)
    assert recreated.tokenizer(captions).input_ids == expected
    recreated.save(folder)
    os.remove(os.path.join(folder, "tokenizer", "tokenizer.json"))
    assert AutoTokenizer.from_pretrained(os.path.join(folder, "tokenizer"))(captions).input_ids == expected


def test_save_load_round_trip_keeps_predictions(prior_folder, tmp_path):
    model = PriorModel.load(prior_folder).eval()
    x, t = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([5, 500])
    ids = model.tokenize(["a red cube", ""])
    with torch.no_grad():
        before = model(x, t, ids)
    model.save(str(tmp_path / "copy"))
    again = PriorModel.load(str(tmp_path / "copy")).eval()
    with torch.no_grad():
        assert torch.allclose(again(x, t, ids), before, atol=1e-6)


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_ddim_sampler_reaches_an_oracle_denoisers_target(prior_folder, guidance_scale):
    """With a UNet that predicts exactly the noise of a known clean image, sampling must return that image."""
    from threestudio_like.priors.tiny import TargetImageUNet

    loaded = PriorModel.load(prior_folder)
    target = torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(1))
    oracle = PriorModel(TargetImageUNet(target, loaded.scheduler), loaded.text_encoder, loaded.tokenizer, loaded.scheduler, TINY)
    images = sample_images(oracle, ["a red cube", "a blue cone"], guidance_scale=guidance_scale, steps=10,
                           generator=torch.Generator().manual_seed(0))
    assert torch.allclose(images, target.permute(2, 0, 1).expand(2, 3, 32, 32), atol=1e-3)


def test_learning_rate_schedule_and_loss_weights():
    assert lr_factor(0, 10, 100) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100) == pytest.approx(1.0)
    assert lr_factor(10, 10, 100) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100) == pytest.approx(0.05 + 0.95 * 0.5)
    assert lr_factor(100, 10, 100) == pytest.approx(0.05)
    abar = torch.tensor([0.99, 0.5, 0.01])  # SNR 99, 1, ~0.0101
    w = min_snr_weights(abar, torch.tensor([0, 1, 2]), gamma=5.0)
    assert torch.allclose(w, torch.tensor([5.0 / 99.0, 1.0, 1.0]), atol=1e-5)
    # a floor on the x0 weight weights the high-noise sample up (x0 weight 0.25 instead of its SNR)
    w = min_snr_weights(abar, torch.tensor([0, 1, 2]), gamma=5.0, floor=0.25)
    assert torch.allclose(w, torch.tensor([5.0 / 99.0, 1.0, 0.25 / (0.01 / 0.99)]), atol=1e-4)


def test_front_share_draws_groups_of_shapes_with_a_front():
    n_view, shapes = 4, torch.arange(100) % len(P.SHAPE_NAMES)  # 100 groups, every shape
    data = {"images": torch.zeros(400, 3, 2, 2), "shape_ids": shapes.repeat_interleave(n_view)}
    front = [P.SHAPE_NAMES.index(s) for s in VIEW_SHAPES]

    def share(front_share: float) -> float:
        groups = draw_groups(data, 4000, n_view, front_share, torch.Generator().manual_seed(0))
        return torch.isin(shapes[groups], torch.tensor(front)).float().mean().item()

    assert share(0.0) == pytest.approx(2 / 8, abs=0.03)
    assert share(0.5) == pytest.approx(0.5 + 0.5 * 2 / 8, abs=0.03)
    assert share(1.0) == 1.0


def test_high_t_share_draws_that_share_of_timesteps_from_the_upper_half():
    def upper(high_t_share: float) -> float:
        t = draw_timesteps(8000, 1000, high_t_share, torch.Generator().manual_seed(0))
        assert 0 <= t.min() and t.max() < 1000
        return (t >= 500).float().mean().item()

    assert upper(0.0) == pytest.approx(0.5, abs=0.02)
    assert upper(0.5) == pytest.approx(0.75, abs=0.02)
    assert upper(1.0) == 1.0


def test_ema_tracks_weights_with_warm_started_decay():
    module = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        module.weight.zero_()
    ema = EMA(module, decay=0.9)
    with torch.no_grad():
        module.weight.fill_(1.0)
    ema.update(module, step=0)  # decay min(0.9, 1/10) = 0.1
    assert torch.allclose(ema.shadow.weight, torch.full((1, 2), 0.9))
    ema.update(module, step=1000)  # decay 0.9
    assert torch.allclose(ema.shadow.weight, torch.full((1, 2), 0.9 + 0.1 * 0.1))


def test_tiny_training_run_writes_a_loadable_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("THREESTUDIO_LIKE_CACHE", str(tmp_path / "cache"))
    out = str(tmp_path / "run")
    cfg = TrainConfig(out=out, steps=3, batch_size=4, dataset_size=8, save_every=2, warmup=1, architecture=TINY)
    train(cfg, command=["test"])
    rows = open(os.path.join(out, "training_log.csv")).read().strip().splitlines()
    assert rows[0] == "step,loss,loss_smoothed,lr,elapsed_seconds,stage"
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]
    info = json.load(open(os.path.join(out, "training_info.json")))
    assert info["steps_done"] == 3 and info["batch_size"] == 4 and info["dataset_size"] == 8 and info["command"] == "test"
    assert not os.path.exists(os.path.join(out, "train_state.pt"))  # removed once finished
    assert os.path.isdir(os.path.join(tmp_path, "cache", "prior_data"))  # data cached outside the repo
    PriorModel.load(out)


def test_warm_start_carries_the_earlier_stages_log(tmp_path, monkeypatch):
    monkeypatch.setenv("THREESTUDIO_LIKE_CACHE", str(tmp_path / "cache"))
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    train(TrainConfig(out=first, steps=3, batch_size=4, dataset_size=8, warmup=1, architecture=TINY), command=["1"])
    # a log written before the stage column existed still carries over, as its folder's stage
    log = os.path.join(first, "training_log.csv")
    lines = open(log).read().splitlines()
    open(log, "w").write("\n".join([",".join(line.split(",")[:5]) for line in lines]) + "\n")
    train(TrainConfig(out=second, steps=2, batch_size=4, dataset_size=8, warmup=1, init_from=first), command=["2"])
    rows = [r.split(",") for r in open(os.path.join(second, "training_log.csv")).read().strip().splitlines()[1:]]
    assert [(r[0], r[5]) for r in rows] == [("1", "1"), ("2", "1"), ("3", "1"), ("1", "2"), ("2", "2")]
    info = json.load(open(os.path.join(second, "training_info.json")))
    assert info["initialised_from"]["command"] == "1" and info["initialised_from"]["steps_done"] == 3


# --------------------------------------------------------------------------- shipped weights
def test_shipped_weights_are_present():
    # in git and in the wheel: a missing file is a broken checkout or install, never a reason to skip
    for part in ("model_index.json", "known_words.json", "unet", "text_encoder", "tokenizer", "scheduler"):
        assert os.path.exists(os.path.join(SHIPPED, part)), f"shipped prior incomplete: {part} missing in {SHIPPED}"
    for part in ("architecture.json", "training_info.json", "training_log.csv", "classifier"):
        assert os.path.exists(os.path.join(SHIPPED_LAB, part)), f"the prior's lab files incomplete: {part} missing in {SHIPPED_LAB}"
        assert not os.path.exists(os.path.join(SHIPPED, part)), f"{part} is the lab's: it must not ship in {SHIPPED}"


def test_a_built_in_priors_lab_files_are_found_from_its_folder_or_name():
    for name in ("shapes32", "shapes32-mv", "edit32"):
        assert os.path.samefile(lab_side(os.path.join(BUILTIN_WEIGHTS_DIR, name)), os.path.join(LAB_WEIGHTS_DIR, name))
        assert os.path.samefile(lab_side(f"builtin:{name}"), os.path.join(LAB_WEIGHTS_DIR, name))
    assert lab_side("/some/trained/prior") == "/some/trained/prior"  # a fresh training folder holds both halves


def test_shipped_folder_is_small_and_resolves_as_builtin():
    from threestudio_like.guidance.models import resolve_model_path

    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(SHIPPED) for f in files)
    assert total <= 30 * 2**20
    assert os.path.samefile(resolve_model_path("builtin:shapes32"), SHIPPED)


def test_shipped_classifier_names_procedural_renders():
    from lab.priors.classifier import load_classifier

    classifier = load_classifier(SHIPPED)
    batch = P.render_batch(seed=12345, index=0, batch_size=256)
    shapes, colours, probs = classifier.classify(batch.images)
    correct = [s == P.SHAPE_NAMES[int(i)] and c == P.COLOUR_NAMES[int(j)] for s, c, i, j in zip(shapes, colours, batch.shape_ids, batch.colour_ids)]
    assert sum(correct) / len(correct) >= 0.92  # held-out accuracy when trained: 0.968 (shape), 1.0 (colour)
    assert torch.allclose(probs["shape"].sum(-1), torch.ones(256), atol=1e-5)


def test_shipped_prior_draws_the_requested_colour():
    model = PriorModel.load(SHIPPED).eval()
    images = sample_images(model, ["a red sphere, front view", "a blue cube, side view"] * 2, guidance_scale=3.0, steps=20,
                           generator=torch.Generator().manual_seed(0))
    foreground = images.amin(1) < 0.8  # not the white background
    for i, channel in enumerate([0, 2, 0, 2]):
        pixels = images[i].permute(1, 2, 0)[foreground[i]]
        assert pixels.shape[0] > 30
        mean = pixels.mean(0)
        assert mean.argmax().item() == channel, (i, mean)


def test_install_prior_splits_a_trained_folder_into_the_package_and_the_lab(prior_folder, tmp_path):
    from lab.priors.install_prior import install_prior

    trained = tmp_path / "trained"
    import shutil

    shutil.copytree(prior_folder, trained)
    (trained / "training_info.json").write_text("{}")
    (trained / "train_state.pt").write_bytes(b"state")
    (trained / "classifier").mkdir()
    (trained / "classifier" / "labels.json").write_text("{}")
    package, lab = tmp_path / "package", tmp_path / "lab"
    placed = install_prior(str(trained), "mine", package_dir=str(package), lab_dir=str(lab))
    assert sorted(os.listdir(package / "mine")) == sorted(placed["package"]) == [
        "known_words.json", "model_index.json", "scheduler", "text_encoder", "tokenizer", "unet"]
    assert sorted(os.listdir(lab / "mine")) == ["architecture.json", "classifier", "training_info.json"]
    # the package's half loads as a model on its own, as the recipes load it
    from threestudio_like.guidance.models import load_diffusion_components

    parts = load_diffusion_components(str(package / "mine"))
    assert parts.unet is not None and parts.text_encoder is not None and not parts.latent_space


def test_a_built_in_prior_loads_by_name_with_its_lab_architecture():
    # the package's folder has no architecture.json: it comes from lab/weights/shapes32-mv
    model = PriorModel.load("builtin:shapes32-mv")
    assert model.arch.camera_dim == 16 and not model.arch.image_condition
    assert PriorModel.load(os.path.join(BUILTIN_WEIGHTS_DIR, "edit32")).arch.image_condition
