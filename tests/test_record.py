"""Artifact records: one schema, derive, one writer that publishes the pair, validated reads."""

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from rcan_deploy.artifacts import atomic_path, sidecar_path
from rcan_deploy.checkpoints import shipped_checkpoint
from rcan_deploy.errors import UserError
from rcan_deploy.record import SCHEMA_VERSION, Record, derive, lineage, publish, read_record


def _write(text):
    return lambda tmp: Path(tmp).write_text(text)


def _network(**extra):
    return Record("onnx-fp32", scale=2, input_range=255, source="official", variant="rcan2-sr4k",
                  config={"scale": 2}, native_input_range=255, weights={"random": 0}, **extra)


def test_publish_writes_a_versioned_pair_and_derive_inherits_the_network_only(tmp_path):
    parent = tmp_path / "a.onnx"
    side = publish(parent, _network(sections={"export": {"opset": 13}}), _write("graph a"))
    assert side["schema_version"] == SCHEMA_VERSION and side["kind"] == "onnx-fp32"
    assert side["sha256"] == hashlib.sha256(b"graph a").hexdigest() and side["artifact"] == "a.onnx"
    assert json.loads(sidecar_path(parent).read_text()) == side
    child = derive(parent, "onnx-int8-qdq", read_record(parent))
    assert child.parent == {"path": str(parent), "sha256": side["sha256"], "kind": "onnx-fp32"}
    assert (child.source, child.scale, child.input_range) == ("official", 2, 255)
    assert child.sections == {}  # the parent's export section describes the parent only
    publish(tmp_path / "b.onnx", child, _write("graph b"))
    assert [link.path.name for link in lineage(tmp_path / "b.onnx")] == ["b.onnx", "a.onnx"]


def test_readers_verify_the_hash(tmp_path):
    path = tmp_path / "a.onnx"
    publish(path, _network(), _write("graph a"))
    path.write_text("replaced")
    with pytest.raises(UserError, match="sha256 differs from its sidecar"):
        read_record(path)


def test_broken_parent_link_is_an_error_not_a_warning(tmp_path):
    parent, child = tmp_path / "a.onnx", tmp_path / "b.onnx"
    publish(parent, _network(), _write("graph a"))
    publish(child, derive(parent, "onnx-int8-qdq", read_record(parent)), _write("graph b"))
    publish(parent, _network(), _write("another graph a"))  # consistent pair, new content
    with pytest.raises(UserError, match="chain is broken"):
        lineage(child)


@pytest.mark.parametrize("data,fragment", [
    ([1, 2], "a JSON list"),
    ("text", "a JSON string"),
    ({"kind": "onnx-fp32", "input_range": 0}, "'input_range' is 0"),
    ({"kind": "onnx-fp32", "scale": "2"}, "'scale' is \"2\""),
    ({"kind": "onnx-fp32", "scale": 3, "config": {"scale": 2}}, "config.scale 2"),
    ({"kind": "onnx-fp32", "parent": "a.onnx"}, "'parent'"),
    ({"kind": "nope"}, "'kind'"),
    ({"kind": "onnx-fp32", "input_shape": {"a": 1}}, "'input_shape'"),
    ({"kind": "onnx-int8-qdq", "quantization": []}, "'quantization'"),
    ({"schema_version": 99, "kind": "onnx-fp32"}, "newer rcan-deploy"),
])
def test_malformed_sidecars_are_one_line_user_errors(tmp_path, data, fragment):
    path = tmp_path / "a.onnx"
    path.write_text("graph")
    sidecar_path(path).write_text(json.dumps(data))
    with pytest.raises(UserError, match="a.onnx.json") as caught:
        read_record(path)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_schema_0_model_cards_are_upgraded():
    path = shipped_checkpoint("rcan2-sr4k", 2)
    assert path is not None, "the shipped rcan2-sr4k checkpoint is missing from models/"
    card = read_record(path)  # verifies the checkpoint's sha256 too
    assert card.kind == "checkpoint" and card.scale == 2 and card.input_range == 255
    assert "learning_rate" in card.sections["recipe"] and "lr" not in card.sections["recipe"]


def test_concurrent_writers_leave_a_matching_pair(tmp_path):
    path = tmp_path / "a.onnx"
    threads = [threading.Thread(target=publish, args=(path, _network(), _write(f"graph {i}" * 999)))
               for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert read_record(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "a.onnx.json"]


def test_a_failure_between_the_renames_never_leaves_a_mismatched_pair(tmp_path, monkeypatch):
    path = tmp_path / "a.onnx"
    publish(path, _network(), _write("old"))
    real_replace, calls = os.replace, []

    def replace_then_die(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the artifact is in place, the sidecar not yet
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        publish(path, _network(), _write("new"))
    monkeypatch.undo()
    assert path.read_text() == "new" and read_record(path) is None  # no sidecar, never a wrong one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx"]


def test_temporary_files_of_killed_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f".a.onnx.{dead}.0badcafe.tmp"
    stale.write_text("half")
    mine = tmp_path / f".a.onnx.{os.getpid()}.12345678.tmp"  # a live writer's file stays
    mine.write_text("busy")
    with atomic_path(tmp_path / "a.onnx") as tmp:
        tmp.write_text("whole")
    assert not stale.exists() and mine.exists()
