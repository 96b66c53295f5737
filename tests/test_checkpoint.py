"""Checkpoint files: atomic writes, fp32 weights, self-description, refused resumes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from retrieval import checkpoint as ckpt
from retrieval.errors import InputError


def test_fp32_state_dict_upcasts_half_weights():
    layer = torch.nn.Linear(4, 3).to(torch.bfloat16)
    state = ckpt.fp32_state_dict(layer)
    assert all(v.dtype == torch.float32 for v in state.values())


def test_weights_hash_changes_with_any_weight():
    layer = torch.nn.Linear(4, 3)
    before = ckpt.weights_hash(ckpt.fp32_state_dict(layer))
    assert before == ckpt.weights_hash(ckpt.fp32_state_dict(layer))
    with torch.no_grad():
        layer.bias[0] += 1e-3
    assert before != ckpt.weights_hash(ckpt.fp32_state_dict(layer))


def test_data_fingerprint_depends_on_groups_and_classes():
    a = ckpt.data_fingerprint(["g1", "g2"], {"x": 0})
    assert a == ckpt.data_fingerprint(["g2", "g1"], {"x": 0})
    assert a != ckpt.data_fingerprint(["g1"], {"x": 0})
    assert a != ckpt.data_fingerprint(["g1", "g2"], {"y": 0})


def test_crash_during_save_keeps_the_previous_file(tmp_path):
    """A process killed mid-write must leave the old checkpoint readable."""
    path = tmp_path / "latest_model.pt"
    ckpt.save_atomic({"format": ckpt.FORMAT_VERSION, "value": 1}, path)
    script = textwrap.dedent(
        f"""
        import os, torch
        from retrieval import checkpoint as ckpt
        real_save = torch.save
        def dying_save(obj, target):
            with open(target, "wb") as handle:
                handle.write(b"partial bytes")
            os._exit(9)  # killed mid-write
        torch.save = dying_save
        ckpt.save_atomic({{"format": 1, "value": 2}}, __import__("pathlib").Path({str(path)!r}))
        """
    )
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    proc = subprocess.run([sys.executable, "-c", script], env=env)
    assert proc.returncode == 9
    assert ckpt.load_checkpoint(path)["value"] == 1


def test_foreign_and_missing_files_are_clean_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        ckpt.load_checkpoint(tmp_path / "nope.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(InputError, match="not a checkpoint written by this tool"):
        ckpt.load_checkpoint(foreign)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a zip")
    with pytest.raises(InputError, match="cannot be read"):
        ckpt.load_checkpoint(garbage)


@pytest.mark.parametrize(
    ("backbone", "norm", "fingerprint", "needle"),
    [
        ("resnet18", "backbone", "abc", "backbone"),
        ("tf_efficientnet_lite0", "backbone", "zzz", "other data"),
        ("tf_efficientnet_lite0", "imagenet", "abc", "resume with --input_norm backbone"),
    ],
)
def test_resume_with_other_backbone_normalisation_or_data_is_refused(
    tmp_path, backbone, norm, fingerprint, needle
):
    state = {
        "backbone": "tf_efficientnet_lite0",
        "data_fingerprint": "abc",
        "input_norm": "backbone",
    }
    with pytest.raises(InputError, match=needle):
        ckpt.check_resumable(
            state, backbone=backbone, input_norm=norm, fingerprint=fingerprint, path=tmp_path
        )


def test_a_checkpoint_from_before_the_normalisation_choice_resumes_only_as_imagenet(tmp_path):
    state = {"backbone": "tf_efficientnet_lite0", "data_fingerprint": "abc"}
    kwargs = {"backbone": "tf_efficientnet_lite0", "fingerprint": "abc", "path": tmp_path}
    ckpt.check_resumable(state, input_norm="imagenet", **kwargs)
    with pytest.raises(InputError, match="--input_norm imagenet"):
        ckpt.check_resumable(state, input_norm="backbone", **kwargs)
