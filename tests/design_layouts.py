"""Checkpoints written from the key names of DESIGN.md section 3, independent of rcan_deploy.archs,
and an independent functional forward of the official layout to check the loaded networks."""

from __future__ import annotations

import torch
import torch.nn.functional as F

MEAN = torch.tensor([0.4488, 0.4371, 0.4040])


def official_state_dict(groups, blocks, feats, reduction, scale, sr4k, seed=0):
    """Official yulunzhang key names, random conv weights, default MeanShift."""
    g = torch.Generator().manual_seed(seed)

    def conv(cout, cin, k=3):
        return (torch.randn(cout, cin, k, k, generator=g) * (0.5 / (cin * k * k) ** 0.5),
                torch.randn(cout, generator=g) * 0.01)

    sd = {}

    def put(key, wb):
        sd[f"{key}.weight"], sd[f"{key}.bias"] = wb

    put("sub_mean", (torch.eye(3).view(3, 3, 1, 1), -255 * MEAN))
    put("head.0", conv(feats, 3))
    for gi in range(groups):
        for b in range(blocks):
            put(f"body.{gi}.body.{b}.body.0", conv(feats, feats))
            put(f"body.{gi}.body.{b}.body.2", conv(feats, feats))
            if not sr4k:
                put(f"body.{gi}.body.{b}.body.3.conv_du.0", conv(feats // reduction, feats, 1))
                put(f"body.{gi}.body.{b}.body.3.conv_du.2", conv(feats, feats // reduction, 1))
        put(f"body.{gi}.body.{blocks}", conv(feats, feats))
    put(f"body.{groups}", conv(feats, feats))
    if sr4k:
        put("tail.0.0", conv((2 * scale) ** 2 * feats, feats))
    elif scale == 3:
        put("tail.0.0", conv(9 * feats, feats))
    else:
        for i in range(scale.bit_length() - 1):
            put(f"tail.0.{2 * i}", conv(4 * feats, feats))
    put("tail.1", conv(3, feats))
    put("add_mean", (torch.eye(3).view(3, 3, 1, 1), 255 * MEAN))
    return sd


def official_to_basicsr(sd, groups, blocks):
    """DESIGN.md key map official -> BasicSR (MeanShift tensors dropped)."""
    out = {}
    for key, value in sd.items():
        name, kind = key.rsplit(".", 1)
        parts = name.split(".")
        if parts[0] in ("sub_mean", "add_mean"):
            continue
        if name == "head.0":
            new = "conv_first"
        elif name == f"body.{groups}":
            new = "conv_after_body"
        elif name == "tail.1":
            new = "conv_last"
        elif parts[0] == "tail":
            new = f"upsample.{parts[2]}"
        elif parts[3] == str(blocks):
            new = f"body.{parts[1]}.conv"
        elif len(parts) == 6:
            new = f"body.{parts[1]}.residual_group.{parts[3]}.rcab.{parts[5]}"
        else:  # body.g.body.b.body.3.conv_du.{0,2}
            new = (f"body.{parts[1]}.residual_group.{parts[3]}.rcab.3.attention."
                   f"{int(parts[7]) + 1}")
        out[f"{new}.{kind}"] = value
    return out


def official_to_rcan_pytorch(sd, groups, blocks):
    """DESIGN.md key names of RCAN-PyTorch; its forward works on 0..1 features, so the head conv
    is multiplied by 255 and the last conv divided by 255 to compute the same function."""
    out = {"mean": MEAN.view(1, 3, 1, 1).clone()}
    for key, value in sd.items():
        name, kind = key.rsplit(".", 1)
        parts = name.split(".")
        if parts[0] in ("sub_mean", "add_mean"):
            continue
        if name == "head.0":
            new, value = "conv1", value * 255 if kind == "weight" else value
        elif name == f"body.{groups}":
            new = "conv2"
        elif name == "tail.1":
            new, value = "conv3", value / 255
        elif parts[0] == "tail":
            new = f"upsampling.{int(parts[2]) // 2}.upsample_block.0"
        elif parts[3] == str(blocks):
            new = f"trunk.{parts[1]}.residual_group.{blocks}"
        elif len(parts) == 6:
            new = (f"trunk.{parts[1]}.residual_group.{parts[3]}."
                   f"residual_channel_attention_block.{parts[5]}")
        else:
            new = (f"trunk.{parts[1]}.residual_group.{parts[3]}.residual_channel_attention_block."
                   f"3.channel_attention_layer.{int(parts[7]) + 1}")
        out[f"{new}.{kind}"] = value
    return out


def official_forward(sd, x, groups, blocks, scale, sr4k):
    """The official RCAN forward written with torch.nn.functional from DESIGN.md section 3."""
    def conv(key, t, stride=1):
        w = sd[f"{key}.weight"]
        return F.conv2d(t, w, sd[f"{key}.bias"], stride=stride, padding=w.shape[-1] // 2)

    x = conv("sub_mean", x)
    head = conv("head.0", x, stride=2 if sr4k else 1)
    res = head
    for gi in range(groups):
        group_in = res
        for b in range(blocks):
            p = f"body.{gi}.body.{b}.body"
            y = conv(f"{p}.2", F.relu(conv(f"{p}.0", res)))
            if not sr4k:
                a = F.adaptive_avg_pool2d(y, 1)
                a = torch.sigmoid(conv(f"{p}.3.conv_du.2", F.relu(conv(f"{p}.3.conv_du.0", a))))
                y = y * a
            res = res + y
        res = group_in + conv(f"body.{gi}.body.{blocks}", res)
    res = head + conv(f"body.{groups}", res)
    if sr4k:
        res = F.pixel_shuffle(conv("tail.0.0", res), 2 * scale)
    elif scale == 3:
        res = F.pixel_shuffle(conv("tail.0.0", res), 3)
    else:
        for i in range(scale.bit_length() - 1):
            res = F.pixel_shuffle(conv(f"tail.0.{2 * i}", res), 2)
    return conv("add_mean", conv("tail.1", res))
