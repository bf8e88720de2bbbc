"""The photos set: definition in sets.yaml, fetch from Debian packages served on 127.0.0.1 (tiny
packages built here), sha256 refusals, resume, atomic install, splits, mirror discovery."""

import copy
import hashlib
import io
import json
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from rcan_deploy.cli import main
from rcan_deploy.data import datasets, fetch_photos, get_dataset, imresize, mod_crop, read_image
from rcan_deploy.data import fetch as fetch_module
from rcan_deploy.data.datasets import (SPLIT_ROLES, default_set_name, samples_folder,
                                       set_definitions, split_for)
from rcan_deploy.data.debian import MIRROR_ENV, archive_roots, mirror_bases, read_members
from rcan_deploy.data.io import to_uint8, write_image
from rcan_deploy.errors import UserError

SPLITS = ("calib", "val", "test")


# ---- the real definition (no download) ------------------------------------------------------

def test_photos_definition_is_complete_and_its_splits_never_overlap():
    photos = set_definitions()["sets"]["photos"]
    files = photos["files"]
    splits = {split: photos[split] for split in SPLITS}
    assert tuple(SPLIT_ROLES["photos"].values()) == SPLITS
    names = [name for split in SPLITS for name in splits[split]]
    assert len(names) == len(set(names)) and set(names) == set(files)  # disjoint, complete
    assert len({Path(name).stem for name in names}) == len(names)  # pair names are stems
    assert len(splits["test"]) >= 20 and len(splits["val"]) >= 6 and len(splits["calib"]) >= 6
    for split, members in splits.items():
        tags = {tag for name in members for tag in files[name]["tags"]}
        assert {"dark", "bright", "texture", "highlights"} <= tags, split
    for name, info in files.items():
        height, width = info["size"]
        assert height * width >= 1_000_000, name
        assert len(info["sha256"]) == 64 and int(info["sha256"], 16) >= 0
        assert info["bytes"] > 0 and info["credit"] and info["licence"] and info["tags"]
        assert info["path"].split("/")[-1].split(".")[-1] == name.split(".")[-1]
        package = photos["packages"][info["package"]]
        assert Path(package["filename"]).name.startswith(info["package"] + "_")
        assert package["filename"].startswith("pool/main/") and len(package["sha256"]) == 64
    assert set(photos["packages"]) == {info["package"] for info in files.values()}
    assert not {"plasma-workspace-wallpapers", "opencv-doc"} & set(photos["packages"])


def test_split_roles_name_the_calibration_and_heldout_splits():
    assert split_for("photos", "calibration") == "calib"
    assert split_for("photos", "heldout") == "test"
    assert split_for("photos", "selection") == "val"
    assert split_for("samples", "calibration") == "train"
    assert split_for("samples", "heldout") == "heldout"
    assert split_for("div2k_valid", "heldout") is None and split_for("some/dir", "heldout") is None
    with pytest.raises(UserError, match="split must be one of calib, val, test for 'photos'"):
        get_dataset("photos", split="heldout")


def test_missing_photos_is_a_one_line_error_naming_the_fetch_command(tmp_path, capsys):
    with pytest.raises(UserError) as excinfo:
        get_dataset("photos", 2, tmp_path / "empty", split="test")
    message = str(excinfo.value)
    assert "\n" not in message and str(tmp_path / "empty" / "photos") in message
    assert "rcan-deploy data fetch photos --data-root DIR" in message

    code = main(["train", "--dataset", "photos", "--val-dataset", "photos", "--data-root",
                 str(tmp_path / "empty"), "--out", str(tmp_path / "model.pt")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "data fetch photos" in err, err
    code = main(["data", "fetch", "photos", "--lr-scale", "2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--lr-scale" in err, err
    assert not (tmp_path / "model.pt").exists()


# ---- tiny Debian packages -------------------------------------------------------------------

def _tar_xz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("./usr/share/pics/link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "one.png"
        tar.addfile(link)
    return buffer.getvalue()


def _deb(members: dict[str, bytes]) -> bytes:
    """An ``ar`` archive laid out as dpkg-deb writes it (odd sizes padded with a newline)."""
    parts = [b"!<arch>\n"]
    for name, data in (("debian-binary", b"2.0\n"), ("control.tar.xz", _tar_xz({"control": b"x"})),
                       ("data.tar.xz", _tar_xz(members))):
        parts.append(f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode())
        parts.append(data + b"\n" * (len(data) % 2))
    return b"".join(parts)


def _png(tmp_path, img) -> bytes:
    path = tmp_path / "tmp.png"
    write_image(path, np.ascontiguousarray(img))
    data = path.read_bytes()
    path.unlink()
    return data


@pytest.fixture
def tiny(tmp_path):
    """Two packages holding four small photographs, and a ``photos`` definition listing them."""
    photo = read_image(samples_folder() / "astronaut.png")
    crops = {"a1.png": photo[:65, :97], "a2.png": photo[100:166, 50:150],
             "b1.png": photo[200:264, 300:396], "b2.png": photo[300:371, 10:99]}
    images = {name: _png(tmp_path, img) for name, img in crops.items()}
    layout = {"a1.png": ("pkg-a", "usr/share/pics/one.png"),
              "a2.png": ("pkg-a", "usr/share/pics/two.png"),
              "b1.png": ("pkg-b", "usr/share/backgrounds/b1.png"),
              "b2.png": ("pkg-b", "usr/share/backgrounds/nature/b2.png")}
    archives, packages = {}, {}
    for package in ("pkg-a", "pkg-b"):
        members = {path: images[name] for name, (owner, path) in layout.items() if owner == package}
        members["usr/share/doc/copyright"] = b"not an image"
        data = _deb(members)
        filename = f"pool/main/p/{package}/{package}_1.0-1_all.deb"
        archives[f"debian/{filename}"] = data
        packages[package] = {"version": "1:1.0-1", "filename": filename, "size": len(data),
                             "sha256": hashlib.sha256(data).hexdigest()}
    files = {name: {"package": layout[name][0], "path": layout[name][1],
                    "bytes": len(images[name]), "size": list(crops[name].shape[:2]),
                    "sha256": hashlib.sha256(images[name]).hexdigest(), "credit": "test",
                    "licence": "CC0-1.0", "tags": ["texture"]} for name in crops}
    definition = {"description": "tiny", "folder": "photos", "packages": packages,
                  "calib": ["a1.png"], "val": ["b1.png"], "test": ["a2.png", "b2.png"],
                  "files": files}
    return {"archives": archives, "definition": definition, "images": images, "crops": crops}


@pytest.fixture
def archives(tiny):
    return tiny["archives"]


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.setattr(fetch_module, "_RETRY_WAIT_S", 0.0)
    monkeypatch.setenv("RCAN_DEPLOY_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(MIRROR_ENV, raising=False)


@pytest.fixture
def use_tiny(tiny, monkeypatch):
    """Make ``get_dataset`` and the CLI read the tiny definition as ``photos``."""
    definitions = copy.deepcopy(set_definitions())
    definitions["sets"]["photos"] = tiny["definition"]
    monkeypatch.setattr(datasets, "set_definitions", lambda: definitions)
    monkeypatch.setattr(fetch_module, "set_definitions", lambda: definitions)
    return tiny["definition"]


def _entries(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _fetch(server, data_root, definition, **kwargs):
    return fetch_photos(data_root, mirror=server["url"] + "debian", progress=False,
                        definition=definition, **kwargs)


# ---- fetch ----------------------------------------------------------------------------------

def test_fetch_installs_checked_photos_that_get_dataset_splits(server, tiny, use_tiny, tmp_path):
    data_root = tmp_path / "data"
    folder = _fetch(server, data_root, tiny["definition"])
    assert folder == data_root / "photos" and stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert _entries(data_root) == ["photos", "photos/a1.png", "photos/a2.png", "photos/b1.png",
                                   "photos/b2.png", "photos/manifest.json"]  # packages deleted
    for name, data in tiny["images"].items():
        assert (folder / name).read_bytes() == data
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["files"]["b2.png"]["licence"] == "CC0-1.0"
    assert manifest["splits"]["test"] == ["a2.png", "b2.png"]
    assert manifest["packages"] == tiny["definition"]["packages"]

    splits = {split: get_dataset("photos", 2, data_root, split=split) for split in SPLITS}
    assert {s: [p.name for p in d] for s, d in splits.items()} == {
        "calib": ["a1"], "val": ["b1"], "test": ["a2", "b2"]}
    full = get_dataset("photos", 2, data_root)
    assert [p.name for p in full] == ["a1", "a2", "b1", "b2"] and full.split is None
    lr, hr = splits["calib"][0].load()  # 65x97 HR: mod-cropped to 64x96, LR by MATLAB bicubic
    assert hr.shape == (64, 96, 3) and lr.shape == (32, 48, 3)
    expected = imresize(mod_crop(tiny["crops"]["a1.png"], 2), 0.5)
    assert np.array_equal(to_uint8(lr), expected)

    requests = len(server["paths"])
    assert _fetch(server, data_root, tiny["definition"]) == folder
    assert len(server["paths"]) == requests  # installed: nothing downloaded again


def test_cli_fetch_and_default_set_order(server, use_tiny, tmp_path, capsys):
    data_root = tmp_path / "data"
    order = ("div2k_valid", "photos", "samples")
    assert default_set_name(2, data_root, order=order) == "samples"
    code = main(["data", "fetch", "photos", "--data-root", str(data_root), "--mirror",
                 server["url"] + "debian"])
    assert code == 0 and f"photos ready under {data_root / 'photos'}" in capsys.readouterr().out
    assert default_set_name(2, data_root, order=order) == "photos"
    assert default_set_name(2, data_root) == "photos"  # after DIV2K, before samples


def test_corrupted_package_is_refused_and_only_it_is_fetched_again(server, tiny, tmp_path):
    data_root = tmp_path / "data"
    key = "debian/" + tiny["definition"]["packages"]["pkg-b"]["filename"]
    good = tiny["archives"][key]
    tiny["archives"][key] = good[:-100] + bytes(100)  # same size, other bytes
    with pytest.raises(UserError, match="sha256 mismatch, the downloaded file was deleted"):
        _fetch(server, data_root, tiny["definition"])
    assert _entries(data_root) == ["pkg-a_1.0-1_all.deb"]  # the verified package is kept

    tiny["archives"][key] = good
    server["paths"].clear()
    _fetch(server, data_root, tiny["definition"])
    assert server["paths"] == ["/" + key]
    assert (data_root / "photos" / "b2.png").read_bytes() == tiny["images"]["b2.png"]


def test_wrong_image_sha256_installs_nothing(server, tiny, tmp_path):
    data_root = tmp_path / "data"
    definition = copy.deepcopy(tiny["definition"])
    definition["files"]["a2.png"]["sha256"] = "0" * 64
    with pytest.raises(UserError, match="pics/two.png has sha256 .* expected 000000") as exc:
        _fetch(server, data_root, definition)
    assert "\n" not in str(exc.value)
    assert _entries(data_root) == ["pkg-a_1.0-1_all.deb", "pkg-b_1.0-1_all.deb"]  # no photos/


def test_interrupted_download_resumes_on_the_next_call(server, tiny, tmp_path):
    data_root = tmp_path / "data"
    server["drop"] = 1
    with pytest.raises(UserError, match="run the command again to resume"):
        _fetch(server, data_root, tiny["definition"], attempts=1)
    part = data_root / "pkg-a_1.0-1_all.deb.part"
    assert 0 < part.stat().st_size < tiny["definition"]["packages"]["pkg-a"]["size"]
    assert not (data_root / "photos").exists()

    have = part.stat().st_size
    _fetch(server, data_root, tiny["definition"])
    assert server["ranges"][:2] == [None, f"bytes={have}-"]
    assert _entries(data_root / "photos") == ["a1.png", "a2.png", "b1.png", "b2.png",
                                              "manifest.json"]


def test_a_damaged_install_is_reported_then_replaced_whole(server, tiny, use_tiny, tmp_path):
    data_root = tmp_path / "data"
    folder = _fetch(server, data_root, tiny["definition"])
    (folder / "a1.png").unlink()
    (folder / "b1.png").write_bytes(b"changed")
    with pytest.raises(UserError, match=r"2 of the 4 photos are missing or changed \(a1.png"):
        get_dataset("photos", 2, data_root)
    _fetch(server, data_root, tiny["definition"])
    assert (folder / "b1.png").read_bytes() == tiny["images"]["b1.png"]
    assert _entries(data_root) == ["photos", "photos/a1.png", "photos/a2.png", "photos/b1.png",
                                   "photos/b2.png", "photos/manifest.json"]


def test_package_missing_a_listed_file_is_a_user_error(server, tiny, tmp_path):
    definition = copy.deepcopy(tiny["definition"])
    definition["files"]["a1.png"]["path"] = "usr/share/pics/link.png"  # a symlink, not a file
    with pytest.raises(UserError, match="pkg-a_1.0-1_all.deb: has no regular file .*/link.png"):
        _fetch(server, tmp_path / "data", definition)
    assert not (tmp_path / "data" / "photos").exists()


# ---- where packages come from ---------------------------------------------------------------

def _fake_apt(folder: Path, roots: list[str]) -> None:
    """An ``apt-get`` on PATH that answers ``indextargets`` as apt does for these roots."""
    folder.mkdir(exist_ok=True)
    targets = "\\n".join(f"URI: {root}/dists/bookworm/main/binary-amd64/Packages" for root in roots)
    script = folder / "apt-get"
    script.write_text(f'#!/bin/sh\nif [ "$1" = indextargets ]; then printf "{targets}\\n"; fi\n')
    script.chmod(0o755)


def test_archive_roots_come_from_apt_unless_a_mirror_is_given(tmp_path, monkeypatch):
    _fake_apt(tmp_path / "bin", ["http://127.0.0.1:9/debian", "http://127.0.0.1:9/debian",
                                 "http://127.0.0.1:9/other"])
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert archive_roots() == ["http://127.0.0.1:9/debian", "http://127.0.0.1:9/other"]
    assert archive_roots("http://127.0.0.1:8/d/") == ["http://127.0.0.1:8/d"]
    monkeypatch.setenv(MIRROR_ENV, "http://127.0.0.1:7/e")
    assert archive_roots() == ["http://127.0.0.1:7/e"]

    monkeypatch.delenv(MIRROR_ENV)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    with pytest.raises(UserError, match=f"pass --mirror URL or set {MIRROR_ENV}"):
        archive_roots()
    assert mirror_bases("URI: http://h/x/dists/a/main/Packages\nSuite: a\n") == ["http://h/x"]


def test_fetch_tries_the_next_mirror_after_a_404(server, tiny, tmp_path, monkeypatch):
    filename = tiny["definition"]["packages"]["pkg-a"]["filename"]
    _fake_apt(tmp_path / "bin", [server["url"] + "gone", server["url"] + "debian"])
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    fetch_photos(tmp_path / "data", progress=False, definition=tiny["definition"])
    assert server["paths"][:2] == [f"/gone/{filename}", f"/debian/{filename}"]
    assert (tmp_path / "data" / "photos" / "a1.png").is_file()

    _fake_apt(tmp_path / "bin", [server["url"] + "gone"])
    with pytest.raises(UserError, match="not found on the Debian mirror tried"):
        fetch_photos(tmp_path / "other", progress=False, definition=tiny["definition"])


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is not installed")
@pytest.mark.parametrize("compression", ["xz", "gzip"])
def test_read_members_reads_what_dpkg_deb_builds(tmp_path, compression):
    tree = tmp_path / "tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        "Package: tiny\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\nDescription: t\n")
    (tree / "usr" / "share" / "pics").mkdir(parents=True)
    payload = bytes(range(256)) * 41
    (tree / "usr" / "share" / "pics" / "one.png").write_bytes(payload)
    deb = tmp_path / "tiny.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", f"-Z{compression}", "--build", str(tree),
                    str(deb)], check=True, capture_output=True)
    digests = read_members(deb, {"usr/share/pics/one.png": tmp_path / "out.png"})
    assert digests == {"usr/share/pics/one.png": hashlib.sha256(payload).hexdigest()}
    assert (tmp_path / "out.png").read_bytes() == payload
    with pytest.raises(UserError, match="tiny.deb: has no regular file usr/share/pics/two.png"):
        read_members(deb, {"usr/share/pics/two.png": tmp_path / "two.png"})
    with pytest.raises(UserError, match="not a Debian package"):
        read_members(tmp_path / "out.png", {"x": tmp_path / "y"})
