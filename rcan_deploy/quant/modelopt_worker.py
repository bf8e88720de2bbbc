"""Run nvidia-modelopt's ONNX INT8 PTQ in its own process.

Importing modelopt monkey-patches ONNX Runtime's quantization module, which breaks
``onnxruntime.quantization.quantize_static`` (``--target cpu``) in the same process; running it
here keeps the caller's process clean. Usage (internal):
``python -m rcan_deploy.quant.modelopt_worker JOB.json`` where the job names the dynamic-shape
graph, the output path, an .npy file of calibration crops and the modelopt options.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings

import numpy as np


def main(job_path: str) -> None:
    job = json.loads(open(job_path).read())
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    from modelopt.onnx.quantization import quantize

    quantize(job["model"], quantize_mode="int8", calibration_data=np.load(job["crops"]),
             calibration_method=job["method"], calibration_eps=["cpu"],
             high_precision_dtype=job["high_precision"], nodes_to_exclude=job["exclude"],
             output_path=job["out"], log_level="ERROR")


if __name__ == "__main__":
    main(sys.argv[1])
