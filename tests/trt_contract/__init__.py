"""Checking the TensorRT code against the real binding classes without TensorRT or a GPU:
bindings (fetch + stub libraries), standins (the API contract), fake_tensorrt and fake_cudart
(CPU behaviour), driver (the scenarios, run in a subprocess per release)."""
