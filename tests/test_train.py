"""Training: loss goes down, checkpoints in both layouts load back, resume is exact, and the
shipped checkpoints load and beat bicubic on a held-out image."""

import numpy as np
import pytest
import torch

from rcan_deploy.archs import variant_config
from rcan_deploy.checkpoints import (convert_official, load_checkpoint, resolve_model,
                                     shipped_checkpoint)
from rcan_deploy.data.datasets import Dataset, get_dataset
from rcan_deploy.training import TrainOptions, evaluate_model, train

TINY = TrainOptions(steps=30, batch_size=4, patch_size=16, learning_rate=1e-3, val_every=10, seed=1)


@pytest.fixture(scope="module")
def data():
    train_set = get_dataset("samples", 2, split="train")
    heldout = get_dataset("samples", 2, split="heldout")
    one = Dataset("one", heldout.root, 2, heldout.pairs[:1], heldout.lr_source)
    return train_set, one


def test_loss_goes_down_and_card(data, tmp_path):
    record = train("official", "rcan2-sr4k", 2, *data, tmp_path / "m.pt", TINY, progress=False)
    losses = [row["loss"] for row in record["history"]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert record["recipe"]["loss"] == "L1" and record["heldout"]["images"][0]["image"]
    assert set(record["heldout"]) >= {"psnr", "ssim", "bicubic_psnr", "bicubic_ssim", "gain_db"}


@pytest.mark.parametrize("source", ["official", "basicsr"])
def test_checkpoint_round_trip(data, tmp_path, source):
    out = tmp_path / f"{source}.pt"
    options = TrainOptions(steps=3, batch_size=2, patch_size=16, val_every=3)
    train(source, "rcan2-sr4k", 2, *data, out, options, progress=False)
    raw = torch.load(out, weights_only=True)
    assert ("params" in raw) == (source == "basicsr")
    loaded = load_checkpoint(out)
    assert loaded.source == source and loaded.variant == "rcan2-sr4k"


def test_resume_matches_uninterrupted_run(data, tmp_path, monkeypatch):
    from rcan_deploy import training as train_module

    straight = tmp_path / "straight.pt"
    train("official", "rcan2-sr4k", 2, *data, straight, TINY, progress=False)
    resumed = tmp_path / "resumed.pt"
    batches = train_module._patches
    calls = []

    def interrupted(*args):
        calls.append(1)
        if len(calls) > 25:  # killed during step 26; the last state was saved at step 20
            raise KeyboardInterrupt
        return batches(*args)

    monkeypatch.setattr(train_module, "_patches", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train("official", "rcan2-sr4k", 2, *data, resumed, TINY, progress=False)
    assert not resumed.exists()
    monkeypatch.setattr(train_module, "_patches", batches)
    train("official", "rcan2-sr4k", 2, *data, resumed, TINY, resume=True, progress=False)
    a, b = torch.load(straight, weights_only=True), torch.load(resumed, weights_only=True)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


@pytest.mark.parametrize("variant", ["rcan-sr4k", "rcan2-sr4k", "rcan-slim"])
def test_shipped_checkpoints_beat_bicubic(data, variant):
    assert shipped_checkpoint(variant, 2) is not None, f"models/{variant}_x2.pt is missing"
    resolved = resolve_model("official", variant, 2)
    assert resolved.weights["shipped"] and resolved.config == variant_config(variant, 2)
    result = evaluate_model(resolved.model, data[1], 255, resolved.config.head_stride,
                            torch.device("cpu"))
    assert result["psnr"] > result["bicubic_psnr"]


def test_shipped_model_converts_to_basicsr(data):
    assert shipped_checkpoint("rcan-sr4k", 2) is not None, "models/rcan-sr4k_x2.pt is missing"
    official = resolve_model("official", "rcan-sr4k", 2)
    basicsr = resolve_model("basicsr", "rcan-sr4k", 2)
    assert basicsr.source == "basicsr" and basicsr.weights["converted_from"] == "official"
    x = torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        np.testing.assert_allclose(basicsr.model(x).numpy() * 255,
                                   official.model(x * 255).numpy(), atol=1e-3)
    converted = convert_official(official, "basicsr").state_dict()
    assert set(converted) == set(basicsr.model.state_dict())
    for key, tensor in basicsr.model.state_dict().items():
        assert torch.equal(converted[key], tensor), key


def test_torch_runner_rebuilds_a_converted_shipped_model(tmp_path):
    assert shipped_checkpoint("rcan2-sr4k", 2) is not None, "models/rcan2-sr4k_x2.pt is missing"
    import rcan_deploy
    from rcan_deploy.backends import get_runner

    path = tmp_path / "rcan.onnx"
    rcan_deploy.export(path, source="basicsr", variant="rcan2-sr4k", shape=(32, 48))
    x = np.random.default_rng(0).random((1, 3, 32, 48), dtype=np.float32)
    with get_runner("torch", path) as torch_runner, get_runner("ort", path) as ort_runner:
        np.testing.assert_allclose(torch_runner.infer(x), ort_runner.infer(x), atol=1e-4)
