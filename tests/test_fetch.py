"""DIV2K fetch against a local HTTP server (127.0.0.1 only): checksums, resume, atomic extraction."""

import hashlib
import io
import zipfile

import numpy as np
import pytest

from rcan_deploy.data import fetch as fetch_module
from rcan_deploy.data import fetch_div2k, get_dataset, read_image, write_image
from rcan_deploy.data.datasets import samples_folder
from rcan_deploy.errors import UserError


def _png_bytes(tmp_path, img):
    write_image(tmp_path / "tmp.png", img)
    data = (tmp_path / "tmp.png").read_bytes()
    (tmp_path / "tmp.png").unlink()
    return data


@pytest.fixture
def archives(tmp_path):
    """A fake DIV2K_valid_HR.zip (0801, 0802) and DIV2K_valid_LR_bicubic_X2.zip, as bytes."""
    photo = read_image(samples_folder() / "astronaut.png")
    hr = {stem: photo[i * 64:i * 64 + 64, :96] for i, stem in enumerate(("0801", "0802"))}
    built = {}
    for name, members in (
        ("DIV2K_valid_HR.zip", {f"DIV2K_valid_HR/{s}.png": img for s, img in hr.items()}),
        ("DIV2K_valid_LR_bicubic_X2.zip",
         {f"DIV2K_valid_LR_bicubic/X2/{s}x2.png": img[::2, ::2] for s, img in hr.items()}),
    ):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zipped:
            for member, img in members.items():
                zipped.writestr(member, _png_bytes(tmp_path, np.ascontiguousarray(img)))
        built[name] = buffer.getvalue()
    return built


def _checksums(archives):
    return {name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            for name, data in archives.items()}


@pytest.fixture(autouse=True)
def no_retry_wait(monkeypatch, tmp_path):
    monkeypatch.setattr(fetch_module, "_RETRY_WAIT_S", 0.0)
    monkeypatch.setenv("RCAN_DEPLOY_CACHE", str(tmp_path / "cache"))


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_fetch_extracts_a_tree_that_get_dataset_uses(server, archives, tmp_path):
    data_root = tmp_path / "data"
    div2k = fetch_div2k("div2k_valid", data_root, base_url=server["url"], progress=False,
                        lr_scales=(2,), checksums=_checksums(archives))
    assert div2k == data_root / "DIV2K"
    assert _files(data_root) == ["DIV2K/DIV2K_valid_HR/0801.png", "DIV2K/DIV2K_valid_HR/0802.png",
                                 "DIV2K/DIV2K_valid_LR_bicubic/X2/0801x2.png",
                                 "DIV2K/DIV2K_valid_LR_bicubic/X2/0802x2.png"]
    with pytest.warns(UserWarning, match="only 2 of the 100"):
        dataset = get_dataset("div2k_valid", scale=2, data_root=data_root)
    assert len(dataset) == 2 and dataset.describe()["lr_source"] == "files"
    lr, hr = dataset[1].load()
    assert hr.shape == (64, 96, 3) and lr.shape == (32, 48, 3)

    requests = len(server["ranges"])
    fetch_div2k("div2k_valid", data_root, base_url=server["url"], progress=False, lr_scales=(2,),
                checksums=_checksums(archives))
    assert len(server["ranges"]) == requests  # already there: nothing downloaded


def test_wrong_sha256_is_a_user_error_and_leaves_nothing(server, archives, tmp_path):
    checksums = _checksums(archives)
    checksums["DIV2K_valid_HR.zip"]["sha256"] = "0" * 64
    with pytest.raises(UserError, match="sha256 mismatch") as excinfo:
        fetch_div2k("div2k_valid", tmp_path / "data", base_url=server["url"], progress=False,
                    checksums=checksums)
    assert "\n" not in str(excinfo.value)
    assert _files(tmp_path / "data") == []


def test_wrong_size_is_reported_before_downloading(server, archives, tmp_path):
    checksums = _checksums(archives)
    checksums["DIV2K_valid_HR.zip"]["size"] += 1
    with pytest.raises(UserError, match="expected"):
        fetch_div2k("div2k_valid", tmp_path / "data", base_url=server["url"], progress=False,
                    checksums=checksums)
    assert _files(tmp_path / "data") == []


def test_interrupted_download_resumes_on_the_next_call(server, archives, tmp_path):
    data_root = tmp_path / "data"
    size = len(archives["DIV2K_valid_HR.zip"])
    server["drop"] = 1
    with pytest.raises(UserError, match="run the command again to resume"):
        fetch_div2k("div2k_valid", data_root, base_url=server["url"], progress=False,
                    checksums=_checksums(archives), attempts=1)
    part = data_root / "DIV2K_valid_HR.zip.part"
    assert 0 < part.stat().st_size < size

    have = part.stat().st_size
    fetch_div2k("div2k_valid", data_root, base_url=server["url"], progress=False,
                checksums=_checksums(archives))
    assert server["ranges"] == [None, f"bytes={have}-"]
    assert _files(data_root) == ["DIV2K/DIV2K_valid_HR/0801.png", "DIV2K/DIV2K_valid_HR/0802.png"]


def test_dropped_connection_is_retried_within_one_call(server, archives, tmp_path):
    server["drop"] = 2
    fetch_div2k("div2k_valid", tmp_path / "data", base_url=server["url"], progress=False,
                checksums=_checksums(archives), attempts=3)
    assert len(server["ranges"]) == 3 and all(r.startswith("bytes=") for r in server["ranges"][1:])
    assert (tmp_path / "data" / "DIV2K" / "DIV2K_valid_HR" / "0802.png").is_file()


def test_unknown_set_and_missing_archive_are_user_errors(server, tmp_path):
    with pytest.raises(UserError, match="unknown DIV2K set"):
        fetch_div2k("div2k_test", tmp_path, base_url=server["url"], progress=False)
    with pytest.raises(UserError, match="HTTP 404"):
        fetch_div2k("div2k_valid", tmp_path, base_url=server["url"] + "elsewhere/", progress=False,
                    checksums={"DIV2K_valid_HR.zip": {"size": 1, "sha256": "0" * 64}})
    with pytest.raises(UserError, match="no size/sha256 known"):
        fetch_div2k("div2k_valid", tmp_path, base_url=server["url"], progress=False, checksums={})
