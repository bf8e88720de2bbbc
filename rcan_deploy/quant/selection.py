"""Choosing per-layer precision by full-frame quality on the runtime the graph is for.

:class:`FrameJudge` runs a fixed-shape graph over whole images of a selection split (padded or
tiled to the graph's shape, as deployment does) on a runtime and reports, per image, the
standard-protocol PSNR drop against the FP32 graph on the same runtime.

:func:`search_precision` starts from the INT8 graph with a float residual stream and moves layers
to ``int8x2`` (INT8 at twice the MACs, ~15-bit input) or ``float``, choosing by the quality
regained per unit of cost (MACs), until the drops are within :class:`Budget` (mean and worst
image); a float move never takes the INT8 share of conv MACs below the budget's floor.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import onnx

from ..backends import get_runner
from ..data.io import to_uint8
from ..graph_analysis import receptive_field
from ..metrics import evaluate
from ..onnx_utils import input_shape
from ..upscaling import upscale
from .precision import apply_plan, int8_macs, layer_macs


# Cost of a move in INT8-MAC equivalents per MAC of the layer: int8x2 adds its MACs once more in
# INT8; float runs them at roughly a third of the INT8 rate (OpenVINO on AVX-512 CPUs).
FLOAT_COST = 2.0


@dataclass(frozen=True)
class Budget:
    """Largest accepted mean and worst-image PSNR drop (dB) on the selection images, and the
    smallest INT8 share of conv MACs a float move may leave."""

    mean: float = 0.05
    worst: float = 0.2
    min_int8_share: float = 0.8

    def excess(self, drops: dict[str, float]) -> float:
        """How far ``drops`` are from the budget: <= 1 when within it."""
        values = list(drops.values())
        return max(float(np.mean(values)) / self.mean, max(values) / self.worst)


@dataclass
class FrameImages:
    """Whole LR images (float RGB 0..1) and their HR images (uint8) of a data set."""

    names: list[str]
    lr: list[np.ndarray]
    hr: list[np.ndarray]
    scale: int
    description: dict

    @classmethod
    def load(cls, dataset, limit: int | None = None) -> "FrameImages":
        pairs = dataset.pairs[:limit] if limit else dataset.pairs
        loaded = [pair.load() for pair in pairs]
        return cls([pair.name for pair in pairs], [lr for lr, _ in loaded],
                   [to_uint8(hr) for _, hr in loaded], dataset.scale,
                   {**dataset.describe(), "count": len(pairs)})


class FrameJudge:
    """Per-image PSNR (standard protocol) of graphs on ``runtime``, against the FP32 graph."""

    def __init__(self, fp32: onnx.ModelProto, images: FrameImages, runtime: str,
                 input_range: int, progress: bool | None = None):
        self.images, self.runtime, self.input_range = images, runtime, input_range
        self.progress = progress
        self.graph_hw = tuple(input_shape(fp32)[2:])
        self.field = receptive_field(fp32)
        self.counter = [0]  # evaluations, shared with subsets
        self.fp32_psnr = self.psnr(fp32)

    @property
    def evaluations(self) -> int:
        return self.counter[0]

    def psnr(self, model: onnx.ModelProto) -> dict[str, float]:
        """PSNR per image of ``model`` on the judge's runtime."""
        from tqdm import tqdm

        from ..defaults import progress_off

        self.counter[0] += 1
        values = {}
        rows = zip(self.images.names, self.images.lr, self.images.hr)
        with get_runner(self.runtime, model) as runner:
            for name, lr, hr in tqdm(list(rows), desc=f"whole images ({self.runtime})",
                                     unit="img", disable=progress_off(self.progress),
                                     leave=False):
                sr, _ = upscale(runner, lr, self.graph_hw, self.images.scale, self.input_range,
                                field=self.field)
                values[name] = evaluate(sr * 255.0, hr, self.images.scale, "standard")["psnr"]
        return values

    def subset(self, names: list[str]) -> "FrameJudge":
        """A judge over the named images only (sharing the FP32 figures and the count)."""
        judge = object.__new__(FrameJudge)
        judge.__dict__.update(self.__dict__)
        keep = [self.images.names.index(name) for name in names]
        judge.images = FrameImages([self.images.names[i] for i in keep],
                                   [self.images.lr[i] for i in keep],
                                   [self.images.hr[i] for i in keep], self.images.scale,
                                   {**self.images.description, "count": len(keep)})
        return judge

    def drops(self, model: onnx.ModelProto) -> dict[str, float]:
        """FP32 minus ``model`` PSNR per image (dB; positive: INT8 is worse)."""
        return {name: self.fp32_psnr[name] - value for name, value in self.psnr(model).items()}


def summarize(drops: dict[str, float]) -> dict:
    """Mean and worst drop and the worst image."""
    worst = max(drops, key=drops.get)
    return {"mean_drop": float(np.mean(list(drops.values()))), "worst_drop": drops[worst],
            "worst_image": worst, "images": {k: float(v) for k, v in drops.items()}}


def noise_power(drops: dict[str, float], fp32_psnr: dict[str, float]) -> dict[str, float]:
    """The error power (0..255 units squared) INT8 adds per image: with the FP32 error power E
    and a drop d dB, E * (10^(d/10) - 1) (INT8 noise taken as uncorrelated with the FP32 error)."""
    return {n: 255.0 ** 2 / 10 ** (fp32_psnr[n] / 10) * (10 ** (d / 10) - 1)
            for n, d in drops.items()}


def predicted_drops(noise: dict[str, float], fp32_psnr: dict[str, float]) -> dict[str, float]:
    """Drops from added noise powers (the inverse of :func:`noise_power`)."""
    return {n: 10 * np.log10(1 + max(v, 0.0) * 10 ** (fp32_psnr[n] / 10) / 255.0 ** 2)
            for n, v in noise.items()}


def search_precision(qdq: onnx.ModelProto, judge: FrameJudge, budget: Budget,
                     plan: dict[str, str], progress: bool | None = None,
                     probe_images: int = 4) -> tuple[dict, dict]:
    """Per-layer precision for the float-stream QDQ graph ``qdq``, starting at ``plan``; returns
    (final plan, search record).

    One sweep measures, on the ``probe_images`` images that lose most, how much INT8 noise each
    layer removes when moved to ``int8x2`` and to ``float``; noise powers add, so the moves are
    then chosen greedily by predicted budget excess removed per unit of cost (MACs; a float MAC
    costs FLOAT_COST more INT8 MACs), and the prediction is checked on all images, resuming until
    the measured drops are within the budget or nothing is left to move.
    """
    from tqdm import tqdm

    from ..defaults import progress_off

    start = time.perf_counter()
    macs = layer_macs(qdq)
    plan = dict(plan)
    fp32 = judge.fp32_psnr
    current = judge.drops(apply_plan(qdq, plan))
    steps: list[dict] = [{"moves": {}, "measured": True, **summarize(current),
                          "excess": budget.excess(current)}]
    sweep: dict[str, dict[str, float]] = {}
    if steps[-1]["excess"] > 1:
        base_noise = noise_power(current, fp32)
        probe = sorted(current, key=current.get, reverse=True)[:probe_images]
        probe_judge = judge.subset(probe)
        moves = [(name, move) for name in _int8_layers(qdq, plan) for move in ("int8x2", "float")]
        removed: dict[tuple[str, str], dict[str, float]] = {}
        for name, move in tqdm(moves, desc="precision sweep", unit="move",
                               disable=progress_off(progress), leave=False):
            trial = noise_power(probe_judge.drops(apply_plan(qdq, {**plan, name: move})), fp32)
            removed[name, move] = {n: max(base_noise[n] - trial[n], 0.0) for n in probe}
            sweep.setdefault(name, {})[move] = float(np.mean(list(removed[name, move].values())))
        plan, steps = _greedy(qdq, judge, budget, plan, current, removed, macs, steps)
    record = {"budget": asdict(budget), "runtime": judge.runtime,
              "images": judge.images.description, "steps": steps,
              "sweep_noise_removed": sweep, "met": steps[-1]["excess"] <= 1,
              "evaluations": judge.evaluations, "seconds": round(time.perf_counter() - start, 1)}
    return plan, record


RANK = {"int8": 0, "int8x2": 1, "float": 2}


def _greedy(qdq, judge, budget, plan, current, removed, macs, steps):
    """Add moves by predicted excess removed per cost until the prediction meets the budget,
    measure, and go on from the measurement until it does (or no move is left)."""
    fp32 = judge.fp32_psnr
    cost = {(n, m): macs[n] * (1 if m == "int8x2" else FLOAT_COST) for n, m in removed}
    probe = list(next(iter(removed.values())))

    def predicted(noise: dict[str, float], moves: dict[str, str]) -> dict[str, float]:
        total = dict(noise)
        for name, move in moves.items():
            for image, value in removed[name, move].items():
                total[image] -= value
        # images outside the probe lose noise in proportion to the probe's mean reduction
        kept = np.mean([total[n] / noise[n] for n in probe if noise[n] > 0] or [1.0])
        return predicted_drops({n: total[n] if n in probe else noise[n] * kept for n in noise},
                               fp32)

    while True:
        noise, chosen = noise_power(current, fp32), {}
        while budget.excess(predicted(noise, chosen)) > 1:
            excess, best, best_rate = budget.excess(predicted(noise, chosen)), None, 0.0
            for name, move in removed:
                if RANK[move] <= RANK[chosen.get(name, plan.get(name, "int8"))]:
                    continue
                trial = {**chosen, name: move}
                if move == "float" and int8_macs(apply_plan(qdq, {**plan, **trial}))[
                        "int8_share"] < budget.min_int8_share:
                    continue
                rate = (excess - budget.excess(predicted(noise, trial))) / cost[name, move]
                if rate > best_rate:
                    best, best_rate = (name, move), rate
            if best is None:
                break
            chosen[best[0]] = best[1]
            steps.append({"moves": {best[0]: best[1]}, "measured": False,
                          "predicted_excess": budget.excess(predicted(noise, chosen))})
        if not chosen:
            return plan, steps
        plan = {**plan, **chosen}
        for name, move in chosen.items():  # what is left to gain is relative to the new plan
            for other in ("int8x2", "float"):
                if (name, other) in removed:
                    removed[name, other] = {
                        n: max(v - removed[name, move][n], 0.0)
                        for n, v in removed[name, other].items()} if other != move else \
                        dict.fromkeys(removed[name, other], 0.0)
        current = judge.drops(apply_plan(qdq, plan))
        steps.append({"moves": dict(chosen), "measured": True, **summarize(current),
                      "excess": budget.excess(current)})
        if steps[-1]["excess"] <= 1:
            return plan, steps


def _int8_layers(qdq: onnx.ModelProto, plan: dict[str, str]) -> list[str]:
    """Quantized convs still at ``int8`` in ``plan``, largest first."""
    from .graph import quantized_layers

    macs = layer_macs(qdq)
    names = [n for n in quantized_layers(qdq) if plan.get(n, "int8") == "int8"]
    return sorted(names, key=lambda n: macs.get(n, 0), reverse=True)
