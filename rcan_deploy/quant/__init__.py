"""INT8 post-training quantization: calibration on crops, QDQ graphs, sensitivity and fallback."""
