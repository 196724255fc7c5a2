"""FrozenTeacher and DistillerBase: the teacher rules shared by both meta-architectures."""
import os

import pytest
import torch
from torch import nn

from d2kd.meta_arch import DistillerBase, FrozenTeacher, TeacherCheckpointError, student_weights
from d2kd.tools.export_student import export_student


class TinyDetector(nn.Module):
    """Stands in for a detector: a backbone conv, a BN (to see train/eval) and a class head."""

    def __init__(self, num_classes=3, width=4):
        super().__init__()
        self.backbone = nn.Conv2d(3, width, 3, padding=1)
        self.norm = nn.BatchNorm2d(width)
        self.class_embed = nn.Linear(width, num_classes)

    def forward(self, x):
        y = self.norm(self.backbone(x)).mean((2, 3))
        return self.class_embed(y)


class MimicDistiller(DistillerBase):
    def forward_train(self, x):
        with self.teacher.autocast() as teacher:
            t = teacher(x)
        s = self.student(x)
        return {"loss_det": s.pow(2).mean(), "loss_kd_mimic": (s - t).pow(2).mean()}


def _save(model, path, prefix=""):
    torch.save({"model": {prefix + k: v for k, v in model.state_dict().items()}}, path)
    return path


@pytest.fixture
def teacher_ckpt(tmp_path):
    torch.manual_seed(0)
    return _save(TinyDetector(), str(tmp_path / "teacher.pth"))


def test_teacher_loads_weights_and_is_frozen(teacher_ckpt):
    ref = torch.load(teacher_ckpt)["model"]
    teacher = FrozenTeacher(TinyDetector(), teacher_ckpt)
    for k, v in teacher.model.state_dict().items():
        assert torch.equal(v, ref[k]), k
    assert all(not p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not teacher.model.norm.training


def test_teacher_accepts_distiller_and_ddp_prefixes(tmp_path):
    torch.manual_seed(1)
    src = TinyDetector()
    for prefix in ("module.", "student."):
        path = _save(src, str(tmp_path / f"{prefix}pth"), prefix)
        teacher = FrozenTeacher(TinyDetector(), path)
        assert torch.equal(teacher.model.class_embed.weight, src.class_embed.weight)


def test_missing_teacher_checkpoint_names_the_path(tmp_path):
    missing = str(tmp_path / "nope" / "model_final.pth")
    with pytest.raises(TeacherCheckpointError, match="not found.*nope/model_final.pth"):
        FrozenTeacher(TinyDetector(), missing)


def test_empty_weights_is_an_error_unless_allowed():
    with pytest.raises(TeacherCheckpointError, match="model.teacher.weights"):
        FrozenTeacher(TinyDetector(), "")
    FrozenTeacher(TinyDetector(), "", allow_uninitialized=True)


def test_corrupt_teacher_checkpoint(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"\x80\x02 not a checkpoint")
    with pytest.raises(TeacherCheckpointError, match="cannot read.*broken.pth"):
        FrozenTeacher(TinyDetector(), str(path))


def test_class_count_mismatch_is_explained(tmp_path):
    path = _save(TinyDetector(num_classes=5), str(tmp_path / "t.pth"))
    with pytest.raises(TeacherCheckpointError) as e:
        FrozenTeacher(TinyDetector(num_classes=3), path)
    msg = str(e.value)
    assert "class_embed.weight" in msg and "class counts differ" in msg and "5" in msg


def test_width_mismatch_lists_keys(tmp_path):
    path = _save(TinyDetector(width=8), str(tmp_path / "t.pth"))
    with pytest.raises(TeacherCheckpointError, match="shape of backbone.weight"):
        FrozenTeacher(TinyDetector(width=4), path)


def test_missing_and_unexpected_keys(tmp_path):
    state = TinyDetector().state_dict()
    state.pop("norm.weight")
    state["extra.weight"] = torch.zeros(1)
    path = str(tmp_path / "t.pth")
    torch.save({"model": state}, path)
    with pytest.raises(TeacherCheckpointError, match="missing keys: norm.weight") as e:
        FrozenTeacher(TinyDetector(), path)
    assert "unexpected keys: extra.weight" in str(e.value)


def _distiller(teacher_ckpt):
    return MimicDistiller(
        student=TinyDetector(), teacher=FrozenTeacher(TinyDetector(), teacher_ckpt)
    )


def test_teacher_outside_parameters_state_dict_and_optimizer(teacher_ckpt):
    model = _distiller(teacher_ckpt)
    teacher_params = {id(p) for p in model.teacher.parameters()}
    assert teacher_params and not teacher_params & {id(p) for p in model.parameters()}
    assert all(k.startswith("student.") for k in model.state_dict())
    assert model.student_state_dict().keys() == model.student.state_dict().keys()


def test_training_step_leaves_teacher_bit_identical(teacher_ckpt):
    model = _distiller(teacher_ckpt)
    before = {k: v.clone() for k, v in model.teacher.model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    assert model.student.training and not model.teacher.model.training
    x = torch.randn(2, 3, 8, 8)
    losses = model(x)
    assert set(losses) == {"loss_det", "loss_kd_mimic"}
    sum(losses.values()).backward()
    opt.step()
    assert all(p.grad is None for p in model.teacher.parameters())
    for k, v in model.teacher.model.state_dict().items():
        assert torch.equal(v, before[k]), k  # incl. BN running stats: teacher ran in eval mode


def test_eval_is_the_student_alone(teacher_ckpt):
    model = _distiller(teacher_ckpt).eval()
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(model(x), model.student(x))


def test_teacher_follows_dtype_and_device_moves(teacher_ckpt):
    model = _distiller(teacher_ckpt).double()
    assert model.teacher.model.backbone.weight.dtype == torch.float64
    assert model.to("cpu").teacher.model.backbone.weight.device.type == "cpu"


def test_non_teacher_argument_is_rejected():
    with pytest.raises(TypeError, match="FrozenTeacher"):
        MimicDistiller(student=TinyDetector(), teacher=TinyDetector())


def test_export_student_round_trip(teacher_ckpt, tmp_path):
    model = _distiller(teacher_ckpt)
    ckpt = _save(model, str(tmp_path / "model_final.pth"))
    out = str(tmp_path / "export" / "student.pth")
    n = export_student(ckpt, out)
    assert n == len(model.student.state_dict())
    plain = TinyDetector()
    plain.load_state_dict(torch.load(out)["model"], strict=True)
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(plain.eval()(x), model.eval()(x))
    assert not [f for f in os.listdir(tmp_path / "export") if f.startswith(".tmp_")]


def test_export_of_plain_checkpoint_is_refused(tmp_path):
    path = _save(TinyDetector(), str(tmp_path / "plain.pth"))
    with pytest.raises(ValueError, match="not written by a distillation run"):
        export_student(path, str(tmp_path / "out.pth"))
    with pytest.raises(ValueError):
        student_weights({"backbone.weight": torch.zeros(1)})


def test_flip_channels_reverses_only_the_teachers_images(teacher_ckpt):
    image = torch.arange(3 * 2 * 2, dtype=torch.uint8).view(3, 2, 2)
    inputs = [{"image": image, "height": 2, "width": 2}]
    teacher = FrozenTeacher(TinyDetector(), teacher_ckpt, flip_channels=True)
    seen = teacher.prepare_inputs(inputs)
    assert torch.equal(seen[0]["image"], image.flip(0))
    assert inputs[0]["image"] is image  # the student's input is untouched
    assert FrozenTeacher(TinyDetector(), teacher_ckpt).prepare_inputs(inputs) is inputs


def test_export_with_a_failing_check_writes_nothing(teacher_ckpt, tmp_path, capsys):
    from d2kd.tools import export_student as tool

    model = _distiller(teacher_ckpt)
    ckpt = _save(model, str(tmp_path / "model_final.pth"))
    out = tmp_path / "export" / "student.pth"
    # The R-18 baseline is not this tiny student: the check fails, and names the student.
    config = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "configs/baselines/faster_rcnn_R18_fpn_builtin.py")
    status = tool.main([ckpt, str(out), "--check-config", config])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1, err
    assert "student checkpoint" in err[0] and "does not fit the student config" in err[0]
    assert "teacher" not in err[0].lower()
    assert not out.exists() and not (out.parent.exists() and os.listdir(out.parent))
    with pytest.raises(tool.StudentCheckpointError):
        tool.export_student(ckpt, str(out), check_config=config)
