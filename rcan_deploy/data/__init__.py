"""Data layer: image IO, MATLAB bicubic resize, SR image-pair sets, calibration crops, fetch
(DIV2K archives, the photos set from Debian packages).

Images are HxWx3 RGB inside the library; ``load`` methods return float32 in 0..1.
"""

from .crops import CropSet, calibration_crops
from .datasets import Dataset, ImagePair, get_dataset
from .fetch import fetch_div2k, fetch_photos
from .imresize import imresize, mod_crop
from .io import read_image, to_float, to_uint8, write_image

__all__ = ["CropSet", "Dataset", "ImagePair", "calibration_crops", "fetch_div2k", "fetch_photos",
           "get_dataset",
           "imresize", "mod_crop", "read_image", "to_float", "to_uint8", "write_image"]
