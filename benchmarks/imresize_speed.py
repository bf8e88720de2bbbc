"""Wall time of the MATLAB-exact ``imresize`` on a full-size DIV2K image (2040x1356 RGB uint8),
downscaling by 2, 3 and 4; median of 5 runs each. A timing, so not a test: run it by hand,
``python benchmarks/imresize_speed.py`` (the unit tests check correctness only)."""

import statistics
import time

import numpy as np

from rcan_deploy.data.imresize import imresize


def main() -> None:
    img = np.random.default_rng(0).integers(0, 256, (1356, 2040, 3), dtype=np.uint8)
    for factor in (2, 3, 4):
        times = []
        for _ in range(5):
            start = time.perf_counter()
            imresize(img, 1 / factor)
            times.append(time.perf_counter() - start)
        print(f"imresize 1/{factor} of 2040x1356x3: median {statistics.median(times) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
