"""Checkpoint layouts written from DESIGN.md key names load strictly and compute the same function."""

import pytest
import torch

from rcan_deploy.archs import RCANConfig, build_model, variant_config
from rcan_deploy.checkpoints import infer_config, load_checkpoint, read_state_dict, resolve_model
from rcan_deploy.errors import UserError

from design_layouts import (official_forward, official_state_dict, official_to_basicsr,
                            official_to_rcan_pytorch)

# (groups, blocks, feats, reduction, scale, sr4k)
CASES = [(2, 2, 16, 4, 2, False), (1, 2, 8, 2, 3, False), (1, 1, 8, 2, 4, False),
         (1, 1, 8, 4, 8, False), (3, 2, 32, 16, 2, True), (2, 2, 16, 16, 2, True)]


def _x(h=12, w=16, seed=1):
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"g{c[0]}b{c[1]}f{c[2]}x{c[4]}{'-sr4k' if c[5] else ''}")
def test_layouts_from_design_keys_load_and_agree(tmp_path, case):
    groups, blocks, feats, reduction, scale, sr4k = case
    sd = official_state_dict(groups, blocks, feats, reduction, scale, sr4k)
    torch.save(sd, tmp_path / "official.pt")
    official = load_checkpoint(tmp_path / "official.pt")
    expected = RCANConfig(groups, blocks, feats, reduction if not sr4k else 16, scale,
                          "none" if sr4k else "ca", 2 if sr4k else 1,
                          "single" if sr4k else "stages")
    assert official.source == "official" and official.config == expected
    x = _x()
    with torch.no_grad():
        y_official = official.model(x * 255)
        reference = official_forward(sd, x * 255, groups, blocks, scale, sr4k)
    assert y_official.shape == (1, 3, 12 * scale, 16 * scale)
    torch.testing.assert_close(y_official, reference, rtol=0, atol=1e-3)

    bsr = official_to_basicsr(sd, groups, blocks)
    torch.save({"params": bsr, "params_ema": bsr}, tmp_path / "basicsr.pth")
    basicsr = load_checkpoint(tmp_path / "basicsr.pth")
    assert basicsr.source == "basicsr" and basicsr.config == expected
    assert basicsr.weights["param_key"] == "params_ema"
    with torch.no_grad():
        torch.testing.assert_close(basicsr.model(x) * 255, y_official, rtol=0, atol=1e-3)

    if not sr4k:
        lor = official_to_rcan_pytorch(sd, groups, blocks)
        torch.save({"state_dict": lor, "epoch": 3}, tmp_path / "rcan_pytorch.pth.tar")
        rcan_pytorch = load_checkpoint(tmp_path / "rcan_pytorch.pth.tar")
        assert rcan_pytorch.source == "rcan-pytorch" and rcan_pytorch.config == expected
        with torch.no_grad():
            torch.testing.assert_close(rcan_pytorch.model(x) * 255, y_official, rtol=0, atol=1e-3)


def test_sr4k_named_variants_are_inferred(tmp_path):
    for name, source in [("rcan-sr4k", "official"), ("rcan2-sr4k", "basicsr")]:
        model = build_model(source, variant_config(name, 2))
        torch.save(model.state_dict(), tmp_path / "m.pt")
        resolved = load_checkpoint(tmp_path / "m.pt")
        assert resolved.variant == name and resolved.config.head_stride == 2


def test_cbam_variant_roundtrip(tmp_path):
    config = RCANConfig(1, 1, 16, 4, 4, "cbam", 1, "single")
    model = build_model("rcan-pytorch", config)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "ema_state_dict": {**state, "n_averaged": torch.tensor(3)}},
               tmp_path / "cbam.pth.tar")
    resolved = load_checkpoint(tmp_path / "cbam.pth.tar", param_key="ema_state_dict")
    assert resolved.config == config and resolved.weights["param_key"] == "ema_state_dict"
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(resolved.model(x), model(x))
        assert resolved.model(x).max() <= 1.0


def test_infer_config_over_layouts_and_scales():
    for source in ("official", "basicsr", "rcan-pytorch"):
        for scale in (2, 3, 4, 8):
            config = RCANConfig(2, 3, 16, 4, scale)
            assert infer_config(source, build_model(source, config).state_dict()) == config


def test_param_key_choice_and_errors(tmp_path):
    model = build_model("basicsr", variant_config("rcan2-sr4k"))
    sd = model.state_dict()
    torch.save({"params": sd}, tmp_path / "p.pth")
    assert load_checkpoint(tmp_path / "p.pth").weights["param_key"] == "params"
    with pytest.raises(UserError, match="--param-key params_ema: not in .*it holds: params"):
        load_checkpoint(tmp_path / "p.pth", param_key="params_ema")


def _errors(tmp_path, state, **flags):
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(UserError) as info:
        load_checkpoint(tmp_path / "bad.pt", **flags)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_strict_load_names_offending_keys(tmp_path):
    sd = build_model("official", variant_config("rcan-sr4k")).state_dict()
    missing = {k: v for k, v in sd.items() if k != "body.1.body.0.body.2.bias"}
    assert "missing 1: body.1.body.0.body.2.bias" in _errors(tmp_path, missing)
    extra = {**sd, "body.0.body.0.body.5.weight": torch.zeros(3)}
    assert "unexpected 1: body.0.body.0.body.5.weight" in _errors(tmp_path, extra)
    wrong = {**sd, "body.3.weight": torch.zeros(32, 32, 1, 1)}
    assert "wrong shape 1" in _errors(tmp_path, wrong) and "body.3.weight [32, 32, 1, 1]" in _errors(tmp_path, wrong)


def test_contradicting_flags_are_errors(tmp_path):
    sd = build_model("official", variant_config("rcan2-sr4k")).state_dict()
    assert "--source basicsr, but" in _errors(tmp_path, sd, source="basicsr")
    assert "--variant rcan-sr4k, but" in _errors(tmp_path, sd, variant="rcan-sr4k")
    assert "--scale 4, but" in _errors(tmp_path, sd, scale=4)


def test_unreadable_checkpoints(tmp_path):
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a checkpoint" * 10)
    for path, pattern in [(tmp_path / "garbage.pt", "not a readable PyTorch checkpoint"),
                          (tmp_path / "absent.pt", "no such file")]:
        with pytest.raises(UserError, match=pattern):
            read_state_dict(path)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(UserError, match="expected a dict of tensors"):
        read_state_dict(tmp_path / "list.pt")
    torch.save({"conv.weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="match no RCAN layout"):
        load_checkpoint(tmp_path / "other.pt")


def test_resolve_model_requires_weights_choice():
    with pytest.raises(UserError, match="no shipped checkpoint for rcan x2: pass --weights PATH"):
        resolve_model(variant="rcan")
    a = resolve_model(variant="rcan2-sr4k", random_weights=True, seed=3)
    b = resolve_model(variant="rcan2-sr4k", random_weights=True, seed=3)
    assert a.source == "basicsr" and a.weights == {"random": 3}
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
