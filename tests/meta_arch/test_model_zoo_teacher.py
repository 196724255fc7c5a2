"""A detectron2 model-zoo checkpoint (``.pkl``: numpy arrays under "model", detectron2 names) is a
teacher as it is (UniKD, the method that distils any detector: Faster R-CNN and RetinaNet here)."""
import os
import pickle

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from d2kd.meta_arch.teacher import FrozenTeacher, TeacherCheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _teacher_node(config):
    cfg = LazyConfig.load(os.path.join(ROOT, "configs", config))
    teacher = cfg.model.teacher
    while "model" not in teacher:  # UniKD stage 2 keeps it inside its absorb wrapper
        teacher = teacher.teacher
    return teacher


def _write_model_zoo_pkl(model, path):
    data = {"model": {k: v.detach().numpy() for k, v in model.state_dict().items()},
            "__author__": "Detectron2 Model Zoo", "matching_heuristics": True}
    with open(path, "wb") as f:
        pickle.dump(data, f)


def _image():
    g = torch.Generator().manual_seed(0)
    inst = Instances((96, 128))
    inst.gt_boxes, inst.gt_classes = Boxes(torch.tensor([[10.0, 10.0, 60.0, 50.0]])), torch.tensor([1])
    return [{"image": torch.randint(0, 256, (3, 96, 128), generator=g, dtype=torch.uint8), "instances": inst}]


@pytest.mark.parametrize("config", ["unikd/frcnn_R50_to_retinanet_R18_builtin.py",
                                    "unikd/retinanet_R50_to_deformable_detr_R18_builtin.py"])
def test_model_zoo_pkl_loads_as_teacher(tmp_path, config):
    node = _teacher_node(config)
    torch.manual_seed(1)
    source = instantiate(node.model).eval()
    path = str(tmp_path / "model_final.pkl")
    _write_model_zoo_pkl(source, path)
    torch.manual_seed(2)
    node.weights = path
    teacher = instantiate(node)
    assert isinstance(teacher, FrozenTeacher)
    state = teacher.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in source.state_dict().items())
    with EventStorage(), torch.no_grad():
        got, want = teacher(_image())[0]["instances"], source(_image())[0]["instances"]
    assert torch.equal(got.pred_boxes.tensor, want.pred_boxes.tensor) and torch.equal(got.scores, want.scores)


def test_model_zoo_pkl_with_other_classes(tmp_path):
    node = _teacher_node("unikd/frcnn_R50_to_retinanet_R18_builtin.py")
    source = instantiate(node.model)
    path = str(tmp_path / "model_final.pkl")
    _write_model_zoo_pkl(source, path)
    node.model.roi_heads.num_classes = 80
    node.weights = path
    with pytest.raises(TeacherCheckpointError, match="the class counts differ"):
        instantiate(node)
