"""``python -m d2kd.collect_env`` reports the pieces d2kd depends on."""
from d2kd.collect_env import collect_env_info
from d2kd.ops import extension


def test_collect_env_lists_everything():
    info = collect_env_info()
    for row in ("Python", "PyTorch built with CUDA", "CUDA available", "torchvision",
                "detectron2 comes from", "detectron2._C", "d2kd", "nvcc"):
        assert row in info, row
    if extension.extension_available():
        assert "d2kd compiled_with_cuda" in info
        for op in extension.registered_ops():
            assert f"d2kd::{op}" in info and "kernels:" in info
