"""OpenVINO CPU runner, in this process or, capped to an older instruction set, in a worker."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import tempfile

import numpy as np

from ..errors import UserError, short_reason
from .base import ModelSource, Runner, import_optional, load_failure, model_path

ISA_ENV = "RCAN_DEPLOY_OPENVINO_ISA"
# oneDNN's ONEDNN_MAX_CPU_ISA values (oneDNN documentation, "CPU Dispatcher Control"); the ones
# without VNNI make int8 convolutions sum pairs in saturating int16, as older CPUs do.
ISAS = ("sse41", "avx", "avx2", "avx2_vnni", "avx2_vnni_2", "avx512_core", "avx512_core_vnni",
        "avx512_core_bf16", "avx10_1_512", "avx10_1_512_amx", "avx10_1_512_amx_fp16", "default")


def openvino_isa(isa: str | None = None) -> str | None:
    """The instruction set OpenVINO is capped to: ``isa``, else $RCAN_DEPLOY_OPENVINO_ISA, else
    None (no cap); a value oneDNN does not know is a UserError."""
    value = isa if isa is not None else os.environ.get(ISA_ENV) or None
    if value is None:
        return None
    if value.lower() not in ISAS:
        where = f"${ISA_ENV}" if isa is None else "isa"
        raise UserError(f"{where}={value!r}: expected one of {', '.join(ISAS)}")
    return value.lower()


def compile_model(model: ModelSource, threads: int | None):
    """An OpenVINO infer request for ``model`` on the CPU plugin (LATENCY hint, fp32 layers)."""
    ov = import_optional("openvino", "openvino")
    path = model_path(model)
    core = ov.Core()
    try:
        network = core.read_model(str(path) if path else model.SerializeToString())
    except RuntimeError as exc:
        if path is None:
            raise
        raise load_failure(path, "OpenVINO", exc) from None
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    try:
        return core.compile_model(network, "CPU", config).create_infer_request()
    except RuntimeError as exc:
        failed = re.search(r"\[(\w+Transformation)\]", str(exc))
        reason = f"its {failed.group(1)} failed" if failed else short_reason(exc)
        raise UserError(f"{path or 'graph'}: OpenVINO cannot compile this graph ({reason}); an "
                        "INT8 graph for OpenVINO is made by quantize --target openvino") from None


def run_request(request, x: np.ndarray) -> np.ndarray:
    request.infer({0: x})
    return request.get_output_tensor(0).data.copy()  # the request reuses its buffer


class OpenVINORunner(Runner):
    """Runs an ONNX model (path or ModelProto) on OpenVINO's CPU plugin with the LATENCY hint;
    ``threads`` sets the inference thread count (None: runtime default).

    Non-quantized layers run in fp32 even on CPUs where OpenVINO would default to bf16, so that
    fp32 results stay comparable with the other runtimes; Q/DQ layers still run in int8.

    ``isa`` (default $RCAN_DEPLOY_OPENVINO_ISA, e.g. ``avx512_core`` or ``avx2``) runs OpenVINO
    as on a CPU with at most that instruction set: in a worker process started with oneDNN's
    ONEDNN_MAX_CPU_ISA (read once, when the library loads, hence the process). ``avx512_core``
    and ``avx2`` have no VNNI, so int8 convolutions compute as on such CPUs. Inference times
    are then the worker's own, without moving the input and output between the processes."""

    name = "openvino"

    def __init__(self, model: ModelSource, threads: int | None = None, isa: str | None = None):
        super().__init__(model)
        self.threads = threads
        self.isa = openvino_isa(isa)
        self.request = None
        self._worker = None

    def activate_impl(self) -> None:
        if self.isa is None:
            self.request = compile_model(self.model, self.threads)
            return
        import_optional("openvino", "openvino")
        path = model_path(self.model)
        self._log = tempfile.TemporaryFile()
        env = {**os.environ, "ONEDNN_MAX_CPU_ISA": self.isa.upper()}
        self._worker = subprocess.Popen(
            [sys.executable, "-m", "rcan_deploy.backends.openvino_worker"], env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log)
        source = str(path) if path else self.model.SerializeToString()
        try:
            self._call(("load", source, self.threads))
        except UserError:
            self.deactivate_impl()
            raise

    def infer(self, x: np.ndarray) -> np.ndarray:
        output = super().infer(x)
        if self._worker is not None:  # the worker's own time: no process transfers
            self.inference_times[-1] = self._worker_seconds
        return output

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        if self._worker is None:
            return run_request(self.request, x)
        output, self._worker_seconds = self._call(("infer", x))
        return output

    def _call(self, message: tuple):
        """Send ``message`` to the worker; its answer, or its error as a UserError."""
        try:
            pickle.dump(message, self._worker.stdin, protocol=5)
            self._worker.stdin.flush()
            status, value = pickle.load(self._worker.stdout)
        except (BrokenPipeError, EOFError):
            self._log.seek(0)
            lines = self._log.read().decode(errors="replace").strip().splitlines()
            raise RuntimeError(f"OpenVINO worker (ONEDNN_MAX_CPU_ISA={self.isa.upper()}) died: "
                               + ("\n".join(lines[-10:]) or "no output")) from None
        if status == "user-error":
            raise UserError(value)
        if status != "ok":
            raise RuntimeError(f"OpenVINO worker: {value}")
        return value

    def deactivate_impl(self) -> None:
        self.request = None
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.stdin.close()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
            worker.stdout.close()
            self._log.close()
