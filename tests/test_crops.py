"""Calibration crops: deterministic, round-robin, cached."""

import inspect

import numpy as np
import pytest

from rcan_deploy.data import calibration_crops, get_dataset, read_image, write_image
from rcan_deploy.data.datasets import ImagePair, samples_folder, set_definitions
from rcan_deploy.errors import UserError


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    monkeypatch.setenv("RCAN_DEPLOY_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def photos(tmp_path):
    """Three HR images; at x2 the LR of ``c`` (40x45) is smaller than a 48 crop."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, source, size in (("a", "astronaut.png", (300, 340)), ("b", "coffee.png", (260, 300)),
                               ("c", "chelsea.png", (80, 90))):
        img = read_image(samples_folder() / source)[: size[0], : size[1]]
        write_image(folder / f"{name}.png", img)
    return get_dataset(str(folder), scale=2)


def test_same_seed_gives_identical_bytes_and_manifest(photos, tmp_path):
    first = calibration_crops(photos, n_crops=7, crop_size=48, seed=3, cache_dir=tmp_path / "one")
    second = calibration_crops(photos, n_crops=7, crop_size=48, seed=3, cache_dir=tmp_path / "two")
    assert first.array.dtype == np.float32 and first.array.shape == (7, 3, 48, 48)
    assert first.array.tobytes() == second.array.tobytes()
    assert first.manifest == second.manifest
    assert first.path != second.path and first.path.name == second.path.name

    manifest = first.manifest
    assert [c["image"] for c in manifest["crops"]] == ["a", "b", "a", "b", "a", "b", "a"]
    assert manifest["skipped_too_small"] == ["c"]
    assert (manifest["n_crops"], manifest["crop_size"], manifest["seed"]) == (7, 48, 3)
    assert manifest["dataset"] == photos.describe()
    assert len(manifest["sha256"]) == 64
    lr_a = photos[0].load_lr()
    crop = manifest["crops"][2]
    expected = lr_a[crop["y"]:crop["y"] + 48, crop["x"]:crop["x"] + 48].transpose(2, 0, 1)
    np.testing.assert_array_equal(first.array[2], expected)
    assert 0.0 <= first.array.min() and first.array.max() <= 1.0


def test_different_seed_gives_different_crops(photos):
    one = calibration_crops(photos, n_crops=4, crop_size=48, seed=0)
    other = calibration_crops(photos, n_crops=4, crop_size=48, seed=1)
    assert one.manifest["crops"] != other.manifest["crops"]
    assert not np.array_equal(one.array, other.array)
    assert one.path.parent == other.path.parent and one.path != other.path


def test_second_call_reads_the_cache(photos, monkeypatch):
    made = calibration_crops(photos, n_crops=5, crop_size=48, seed=0)
    assert made.path.is_file() and made.path.with_suffix(".json").is_file()

    def no_load(self):
        raise AssertionError("crops cut again instead of read from the cache")

    with monkeypatch.context() as patch:
        patch.setattr(ImagePair, "load_lr", no_load)
        cached = calibration_crops(photos, n_crops=5, crop_size=48, seed=0)
    assert cached.array.tobytes() == made.array.tobytes() and cached.manifest == made.manifest

    made.path.write_bytes(b"damaged")  # a damaged cache entry is made again
    again = calibration_crops(photos, n_crops=5, crop_size=48, seed=0)
    assert again.array.tobytes() == made.array.tobytes()


def test_no_image_big_enough_is_a_user_error(photos):
    with pytest.raises(UserError, match="no LR image at scale 2 is at least 200x200"):
        calibration_crops(photos, n_crops=2, crop_size=200)
    with pytest.raises(UserError, match="n_crops must be an integer >= 1"):
        calibration_crops(photos, n_crops=0)


def test_defaults_match_sets_yaml():
    defaults = {name: p.default for name, p in inspect.signature(calibration_crops).parameters.items()}
    assert set_definitions()["crops"] == {name: defaults[name] for name in ("n_crops", "crop_size", "seed")}
