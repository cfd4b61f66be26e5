"""The task registry and probe.json's record type."""

import json

import pytest

from equiprobe.trainer.probe_record import ProbeRecord, ProbeRecordError
from equiprobe.trainer.tasks import TASKS, get_task


def test_every_task_is_declared_once_and_an_unknown_one_is_named_with_the_known_ones():
    assert list(TASKS) == ["fine", "general", "semantic", "multitask", "detect"]
    assert get_task("general").held_out and get_task("multitask").semantic and not get_task("fine").semantic
    assert [h.name for h in get_task("multitask").heads] == ["transformation", "semantic"]
    assert [t for t in TASKS if TASKS[t].detector_part] == ["fine", "general", "detect"]
    assert [t for t in TASKS if TASKS[t].detector] == ["fine", "detect"]
    with pytest.raises(ValueError, match=r"unknown task 'groups'; use one of fine, general, semantic, multitask, "
                                         r"detect"):
        get_task("groups")


def test_a_record_reads_and_writes_back_the_same_json_older_records_included(tmp_path):
    # An older record: no heads, split, store or deployable; a key this code does not know.
    old = {"kind": "mlp", "task": "fine", "dim": 4, "classes": ["identity", "blur"], "catalog": "fine",
           "catalog_version": "fine-1", "encoder": "e", "encoder_onnx_sha256": "0" * 64, "config": {"hidden": 8},
           "summary": {}, "runs": [], "note": "kept"}
    (tmp_path / "probe.json").write_text(json.dumps(old, indent=2))
    record = ProbeRecord.read(tmp_path)
    assert record.head_classes == [["identity", "blur"]] and record.split is None and record.extra == {"note": "kept"}
    text = (tmp_path / "probe.json").read_text()
    record.write(tmp_path)
    assert (tmp_path / "probe.json").read_text() == text and record.as_dict() == old
    del old["encoder"], old["dim"]
    with pytest.raises(ProbeRecordError, match=r"probe.json lacks dim, encoder$"):
        ProbeRecord.from_dict(old)
    with pytest.raises(ProbeRecordError, match="is not a probe directory"):
        ProbeRecord.read(tmp_path / "none")
