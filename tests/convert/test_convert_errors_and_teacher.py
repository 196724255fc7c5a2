"""Bad Hugging Face folders get one clear error; a folder works as ``model.teacher.weights``;
the command-line converter writes a checkpoint the printed config loads."""
import json
import os
import shutil

import pytest
import torch
from detectron2.config import instantiate

from d2kd.convert import ConversionError, build_model_config, convert_hf_folder
from d2kd.meta_arch.teacher import FrozenTeacher, TeacherCheckpointError
from d2kd.tools import convert_checkpoint



def _copy(folder, tmp_path, name="copy"):
    dst = tmp_path / name
    shutil.copytree(folder, dst)
    return dst


def _edit_config(folder, **changes):
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg.update(changes)
    with open(path, "w") as f:
        json.dump(cfg, f)


def _teacher_model(folder, **changes):
    converted = convert_hf_folder(folder)
    converted.values.update(changes)
    return instantiate(build_model_config(converted))


def test_folder_without_weights(hf_deformable, tmp_path):
    folder = _copy(hf_deformable("plain")[1], tmp_path)
    os.remove(folder / "model.safetensors")
    with pytest.raises(ConversionError, match=r"copy.* has config.json but no weights \(model.safetensors"):
        convert_hf_folder(str(folder))


def test_folder_without_config(tmp_path):
    with pytest.raises(ConversionError, match="not a Hugging Face model folder: it has no config.json"):
        convert_hf_folder(str(tmp_path))


def test_truncated_weights_file(hf_deformable, tmp_path):
    folder = _copy(hf_deformable("plain")[1], tmp_path)
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match=r"cannot read weights file .*model.safetensors.*truncated"):
        convert_hf_folder(str(folder))


def test_truncated_pytorch_bin(hf_deformable, tmp_path):
    folder = _copy(hf_deformable("plain")[1], tmp_path)
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    os.remove(folder / "model.safetensors")
    torch.save(state, folder / "pytorch_model.bin")
    assert convert_hf_folder(str(folder)).state  # the .bin format reads
    path = folder / "pytorch_model.bin"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ConversionError, match=r"cannot read weights file .*pytorch_model.bin"):
        convert_hf_folder(str(folder))


@pytest.mark.parametrize("model_type, arch, missing", [
    ("detr", "DetrForObjectDetection", "single-scale encoder"),
    ("rt_detr", "RTDetrForObjectDetection", "hybrid CNN encoder"),
    ("mask2former", "Mask2FormerForUniversalSegmentation", "this architecture"),
])
def test_unsupported_architecture(tmp_path, model_type, arch, missing):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type, "architectures": [arch]}))
    with pytest.raises(ConversionError, match=rf"model_type '{model_type}' \({arch}\) is not supported: d2kd lacks "
                                              rf".*{missing}.*Supported: \['dab-detr', 'deformable_detr'\]"):
        convert_hf_folder(str(tmp_path))


@pytest.mark.parametrize("change, message", [
    ({"position_embedding_type": "learned"}, "position_embedding_type='learned': d2kd has only sine"),
    ({"dilation": True}, "dilation=True"),
    ({"architectures": ["DeformableDetrModel"]}, r"DeformableDetrModel.*with its prediction heads"),
])
def test_unsupported_option(hf_deformable, tmp_path, change, message):
    folder = _copy(hf_deformable("plain")[1], tmp_path)
    _edit_config(folder, **change)
    with pytest.raises(ConversionError, match=message):
        convert_hf_folder(str(folder))


def test_unsupported_backbone_width(hf_deformable, tmp_path):
    folder = _copy(hf_deformable("plain")[1], tmp_path)
    with open(folder / "config.json") as f:
        bb = json.load(f)["backbone_config"]
    _edit_config(folder, backbone_config=dict(bb, hidden_sizes=[32, 64, 128, 256]))
    with pytest.raises(ConversionError, match=r"widths \[32, 64, 128, 256\].*standard R-18"):
        convert_hf_folder(str(folder))


def test_select_classes_by_name(hf_deformable):
    folder = hf_deformable("two_stage")[1]
    full = convert_hf_folder(folder)
    assert full.classes == ["circle", "square", "triangle", "star", "ring"]
    some = convert_hf_folder(folder, classes=["Star", "circle"])
    assert some.values["num_classes"] == 2
    for key in ("decoder.class_heads.1.weight", "proposal_head.class_head.bias"):
        assert torch.equal(some.state[key], full.state[key][[3, 0]])
    with pytest.raises(ConversionError, match=r"classes \['hexagon'\] are not among the checkpoint's 5 classes"):
        convert_hf_folder(folder, classes=["hexagon", "ring"])


def test_folder_as_teacher_weights(hf_deformable):
    folder = hf_deformable("refine")[1]
    teacher = FrozenTeacher(_teacher_model(folder), weights=folder)
    expected = convert_hf_folder(folder).state
    state = teacher.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in expected.items())
    assert not any(p.requires_grad for p in teacher.model.parameters())


def test_teacher_with_other_class_count(hf_deformable):
    folder = hf_deformable("refine")[1]
    with pytest.raises(TeacherCheckpointError, match=r"predicts 5 classes \(config.json id2label\), the teacher config 3 "
                                                    r"\(the student's data\).*convert_checkpoint .* --dataset"):
        FrozenTeacher(_teacher_model(folder, num_classes=3), weights=folder)


def test_teacher_with_other_structure(hf_deformable):
    """What shapes cannot tell (no box refinement, anchor queries) is still an error."""
    folder = hf_deformable("refine")[1]
    with pytest.raises(TeacherCheckpointError, match=r"decoder.box_refine=True \(the teacher config has False\)"):
        FrozenTeacher(_teacher_model(folder, **{"decoder.box_refine": False}), weights=folder)


def test_teacher_with_other_normalisation(hf_deformable):
    folder = hf_deformable("refine")[1]
    bgr = {"pixel_mean": [103.53, 116.28, 123.675]}
    with pytest.raises(TeacherCheckpointError, match=r"pixel_mean=\[123.675, 116.28, 103.53\] \(the teacher config has "
                                                    r"\[103.53, 116.28, 123.675\]\).*flip_channels=True"):
        FrozenTeacher(_teacher_model(folder, **bgr), weights=folder)


def test_command_line(hf_deformable, tmp_path, capsys):
    folder = hf_deformable("two_stage")[1]
    out = tmp_path / "teacher.pth"
    assert convert_checkpoint.main([folder, str(out)]) == 0
    printed = capsys.readouterr().out
    assert "model.teacher.model.two_stage=True" in printed and "model.decoder.box_refine=True" in printed
    data = torch.load(out, map_location="cpu", weights_only=False)
    model = _teacher_model(folder)
    model.load_state_dict(data["model"], strict=True)
    assert data["d2kd_config"]["values"]["num_queries"] == 20
    assert FrozenTeacher(_teacher_model(folder), weights=str(out)).model.two_stage

    assert convert_checkpoint.main([str(tmp_path), str(tmp_path / "x.pth")]) == 2
    assert "no config.json" in capsys.readouterr().err and not (tmp_path / "x.pth").exists()
