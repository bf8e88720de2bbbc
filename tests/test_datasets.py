"""Image IO and image-pair sets: DIV2K trees, the scikit-image samples, plain folders."""

import hashlib
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from rcan_deploy.data import datasets as datasets_module
from rcan_deploy.data import get_dataset, imresize, mod_crop, read_image, to_float, to_uint8, write_image
from rcan_deploy.data.datasets import samples_folder, set_definitions
from rcan_deploy.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    monkeypatch.setenv("RCAN_DEPLOY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RCAN_DEPLOY_DATA", str(tmp_path / "default-data"))


def _sample(file_name, height, width, top=0):
    return read_image(samples_folder() / file_name)[top:top + height, :width]


def _div2k_tree(data_root, size=(101, 131), lr_scale=None):
    """DIV2K/DIV2K_valid_HR/0801.png, 0802.png cut from sample photos (optionally LR X<s>)."""
    hr_dir = data_root / "DIV2K" / "DIV2K_valid_HR"
    hr_dir.mkdir(parents=True)
    images = {"0801": _sample("astronaut.png", *size), "0802": _sample("coffee.png", *size, top=50)}
    for stem, img in images.items():
        write_image(hr_dir / f"{stem}.png", img)
        if lr_scale:
            lr_dir = data_root / "DIV2K" / "DIV2K_valid_LR_bicubic" / f"X{lr_scale}"
            lr_dir.mkdir(parents=True, exist_ok=True)
            lr = imresize(mod_crop(img, lr_scale), 1 / lr_scale)
            write_image(lr_dir / f"{stem}x{lr_scale}.png", 255 - lr)  # recognisably the file
    return images


def _one_line_error(excinfo):
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# ---- IO -------------------------------------------------------------------------------------

def test_read_image_is_rgb_and_keeps_16_bit(tmp_path):
    bgr = np.zeros((5, 7, 3), np.uint16)
    bgr[..., 0] = 65535  # blue in OpenCV's order
    bgr[..., 1] = 1234
    cv2.imwrite(str(tmp_path / "blue16.png"), bgr)
    img = read_image(tmp_path / "blue16.png")
    assert img.dtype == np.uint16 and img.shape == (5, 7, 3)
    assert (img[..., 0] == 0).all() and (img[..., 1] == 1234).all() and (img[..., 2] == 65535).all()
    np.testing.assert_allclose(to_float(img)[0, 0], [0, 1234 / 65535, 1], rtol=1e-6)

    write_image(tmp_path / "copy.png", img)
    np.testing.assert_array_equal(read_image(tmp_path / "copy.png"), img)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blue16.png", "copy.png"]  # no temp left


def test_read_image_grayscale_and_alpha(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    img = read_image(tmp_path / "gray.png")
    assert img.shape == (3, 4, 3) and all((img[..., c] == gray).all() for c in range(3))

    bgra = np.zeros((3, 4, 4), np.uint8)
    bgra[..., 2] = 200  # red
    bgra[..., 3] = 50
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    with pytest.warns(UserWarning, match="rgba.png: alpha channel dropped"):
        img = read_image(tmp_path / "rgba.png")
    assert img.shape == (3, 4, 3) and (img[..., 0] == 200).all() and (img[..., 1:] == 0).all()


def test_unreadable_and_missing_images_are_one_line_user_errors(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(UserError) as excinfo:
        read_image(broken)
    assert _one_line_error(excinfo).startswith(f"{broken}: ")
    with pytest.raises(UserError) as excinfo:
        read_image(tmp_path / "missing.png")
    assert _one_line_error(excinfo).startswith(f"{tmp_path / 'missing.png'}: ")


def test_to_uint8_rounds_half_up_and_saturates():
    values = np.array([-0.2, 0.4 / 255, 0.6 / 255, 0.5, 1.3, np.nan])
    np.testing.assert_array_equal(to_uint8(values), [0, 0, 1, 128, 255, 0])


# ---- DIV2K ----------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:.*only 2 of the 100")
def test_div2k_with_hr_only_is_found_and_lr_is_made_and_cached(tmp_path, monkeypatch):
    images = _div2k_tree(tmp_path / "data")
    with pytest.warns(UserWarning, match="only 2 of the 100"):
        dataset = get_dataset("div2k_valid", scale=3, data_root=tmp_path / "data")
    assert [pair.name for pair in dataset] == ["0801", "0802"]
    assert dataset.describe() == {"name": "div2k_valid", "root": str((tmp_path / "data" / "DIV2K").resolve()),
                                  "scale": 3, "count": 2, "split": None, "lr_source": "matlab-bicubic"}
    lr, hr = dataset[0].load()
    assert lr.dtype == hr.dtype == np.float32 and hr.shape == (99, 129, 3) and lr.shape == (33, 43, 3)
    expected = imresize(mod_crop(images["0801"], 3), 1 / 3)
    np.testing.assert_array_equal(lr, to_float(expected))
    np.testing.assert_array_equal(hr, to_float(mod_crop(images["0801"], 3)))
    cache = tmp_path / "cache" / "lr" / "div2k_valid" / "X3"
    assert len(list(cache.glob("0801x3.*.png"))) == 1
    assert dataset[0].lr_size() == (33, 43)

    def no_resize(*args, **kwargs):
        raise AssertionError("LR made again instead of read from the cache")

    with monkeypatch.context() as patch:
        patch.setattr(datasets_module, "imresize", no_resize)
        again = get_dataset("div2k_valid", scale=3, data_root=tmp_path / "data")
        np.testing.assert_array_equal(again[0].load()[0], lr)
        np.testing.assert_array_equal(again[0].load_lr(), lr)

    # a changed HR image gets a new LR image; the stale cache entry goes
    hr_path = tmp_path / "data" / "DIV2K" / "DIV2K_valid_HR" / "0801.png"
    changed = images["0801"][::-1].copy()
    write_image(hr_path, changed)
    stat = hr_path.stat()
    os.utime(hr_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    lr_changed, _ = get_dataset("div2k_valid", scale=3, data_root=tmp_path / "data")[0].load()
    np.testing.assert_array_equal(lr_changed, to_float(imresize(mod_crop(changed, 3), 1 / 3)))
    assert len(list(cache.glob("0801x3.*.png"))) == 1


def test_div2k_lr_files_are_used_when_their_folder_exists(tmp_path):
    images = _div2k_tree(tmp_path / "data", lr_scale=2)
    for data_root in (tmp_path / "data", tmp_path / "data" / "DIV2K"):  # root or DIV2K/ itself
        with pytest.warns(UserWarning):
            dataset = get_dataset("div2k_valid", scale=2, data_root=data_root)
        assert dataset.describe()["lr_source"] == "files"
        lr, hr = dataset[1].load()
        expected = 255 - imresize(mod_crop(images["0802"], 2), 1 / 2)
        np.testing.assert_array_equal(lr, to_float(expected))
        assert hr.shape == (100, 130, 3)
    assert not (tmp_path / "cache").exists()


def test_div2k_lr_file_of_the_wrong_size_is_a_user_error(tmp_path):
    _div2k_tree(tmp_path / "data", lr_scale=2)
    lr_path = tmp_path / "data" / "DIV2K" / "DIV2K_valid_LR_bicubic" / "X2" / "0801x2.png"
    write_image(lr_path, np.zeros((10, 10, 3), np.uint8))
    with pytest.warns(UserWarning):
        dataset = get_dataset("div2k_valid", scale=2, data_root=tmp_path / "data")
    with pytest.raises(UserError, match="does not match"):
        dataset[0].load()


def test_missing_named_set_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(UserError) as excinfo:
        get_dataset("div2k_valid", data_root=tmp_path / "nowhere")
    message = _one_line_error(excinfo)
    assert str(tmp_path / "nowhere" / "DIV2K" / "DIV2K_valid_HR") in message
    assert "rcan-deploy data fetch div2k_valid --data-root DIR" in message
    assert "RCAN_DEPLOY_DATA" in message
    with pytest.raises(UserError) as excinfo:
        get_dataset("div2k_train")  # default root from $RCAN_DEPLOY_DATA
    assert str(tmp_path / "default-data" / "DIV2K" / "DIV2K_train_HR") in _one_line_error(excinfo)


# ---- samples --------------------------------------------------------------------------------

def test_samples_split_matches_sets_yaml():
    definition = yaml.safe_load((ROOT / "calibration" / "sets.yaml").read_text())
    assert set_definitions() == definition  # the packaged symlink reads the same file
    samples = definition["sets"]["samples"]
    train, heldout = samples["train"], samples["heldout"]
    assert not set(train) & set(heldout) and set(train) | set(heldout) == set(samples["files"])

    full = get_dataset("samples", scale=2)
    train_set = get_dataset("samples", scale=2, split="train")
    heldout_set = get_dataset("samples", scale=2, split="heldout")
    assert len(train_set) == len(train) and len(heldout_set) == len(heldout)
    assert len(full) == len(train) + len(heldout)
    assert [pair.name for pair in full] == sorted(Path(f).stem for f in train + heldout)
    assert train_set.describe()["split"] == "train" and full.describe()["lr_source"] == "matlab-bicubic"
    for pair in full:
        info = samples["files"][pair.hr_path.name]
        assert hashlib.sha256(pair.hr_path.read_bytes()).hexdigest() == info["sha256"]
        img = read_image(pair.hr_path)
        assert list(img.shape[:2]) == info["size"] and img.dtype == np.uint8
        assert np.ptp(img.astype(int)[..., 0] - img[..., 2]) > 0  # colour, not gray


def test_split_only_for_sets_that_have_one_and_scale_is_checked(tmp_path):
    with pytest.raises(UserError, match="only for the 'samples' and 'photos' sets"):
        get_dataset("div2k_valid", split="train")
    with pytest.raises(UserError, match="split must be one of train, heldout for 'samples'"):
        get_dataset("samples", split="test")
    with pytest.raises(UserError, match="scale must be an integer"):
        get_dataset("samples", scale=1)


# ---- folders --------------------------------------------------------------------------------

def test_folder_of_images_sorted_by_name_with_made_lr(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    write_image(folder / "b.png", _sample("rocket.jpg", 40, 50))
    cv2.imwrite(str(folder / "a.jpg"), _sample("chelsea.png", 41, 51)[..., ::-1])
    (folder / "notes.txt").write_text("not an image")
    dataset = get_dataset(str(folder), scale=2)
    assert [pair.name for pair in dataset] == ["a", "b"]
    assert dataset.describe()["name"] == "photos" and dataset.describe()["lr_source"] == "matlab-bicubic"
    lr, hr = dataset[0].load()
    assert hr.shape == (40, 50, 3) and lr.shape == (20, 25, 3)


def test_folder_with_hr_and_lr_subfolders_pairs_by_name(tmp_path):
    folder = tmp_path / "pairs"
    (folder / "HR").mkdir(parents=True)
    (folder / "LR").mkdir()
    (folder / "LR_bicubic" / "X2").mkdir(parents=True)
    hr = _sample("coffee.png", 40, 60)
    write_image(folder / "HR" / "cup.png", hr)
    write_image(folder / "LR" / "cup.png", np.zeros((20, 30, 3), np.uint8))
    write_image(folder / "LR_bicubic" / "X2" / "cupx2.png", np.full((20, 30, 3), 9, np.uint8))
    dataset = get_dataset(str(folder), scale=2)
    assert dataset.describe()["lr_source"] == "files"
    lr, _ = dataset[0].load()
    assert (lr == np.float32(9 / 255)).all()  # LR_bicubic/X2 wins over LR/

    dataset = get_dataset(str(folder), scale=3)  # no X3 folder: LR/ holds names without suffix
    assert dataset[0].lr_path == folder / "LR" / "cup.png"
    (folder / "LR" / "cup.png").unlink()
    with pytest.raises(UserError, match="no LR image for cup.png"):
        get_dataset(str(folder), scale=3)


def test_empty_folder_and_unknown_name_are_user_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError) as excinfo:
        get_dataset(str(tmp_path / "empty"))
    assert "no images" in _one_line_error(excinfo)
    with pytest.raises(UserError) as excinfo:
        get_dataset("div2k_test")
    message = _one_line_error(excinfo)
    assert "div2k_test" in message and all(n in message for n in ("div2k_valid", "div2k_train", "samples"))
