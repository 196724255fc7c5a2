"""Prints what d2kd runs on: ``python -m d2kd.collect_env``.

Python, torch (CUDA build, GPU), torchvision, detectron2 (version, where it comes from, whether
its compiled ops load), d2kd and its compiled ops (which are registered, with which kernels),
nvcc; then detectron2's own environment table when it can be produced.
"""
import importlib
import os
import shutil
import subprocess
import sys
from typing import List, Tuple

Rows = List[Tuple[str, str]]

_EXTERNAL_PTH = "d2kd_external_detectron2.pth"


def _dist_version(name: str):
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _find_pth_link() -> str:
    """Path of the .pth file the bootstrap writes when detectron2 is linked from another Python."""
    for d in sys.path:
        p = os.path.join(d, _EXTERNAL_PTH)
        if os.path.isfile(p):
            return p
    return ""


def detectron2_origin(module_file: str) -> str:
    """Where the imported detectron2 comes from, in words."""
    location = os.path.dirname(os.path.dirname(os.path.abspath(module_file)))
    pth = _find_pth_link()
    if pth:
        with open(pth) as f:
            linked = [line.strip() for line in f if line.strip()]
        if any(os.path.abspath(x) == location for x in linked):
            return f"linked from another Python's installation through {pth}"
    if _dist_version("sal-detectron2") is not None:
        from importlib import metadata

        dist = metadata.distribution("sal-detectron2")
        here = os.path.abspath(str(dist.locate_file("detectron2")))
        if here == os.path.join(location, "detectron2"):
            return "the sal-detectron2 wheel (detectron2 source at upstream commit a59f0563)"
    if os.path.isdir(os.path.join(location, ".git")) or os.path.isfile(
        os.path.join(location, "setup.py")
    ):
        return f"a source checkout/build at {location}"
    if _dist_version("detectron2") is not None:
        return "an installed detectron2 distribution (source build or wheel)"
    return "unknown (not installed through a package manager)"


def _torch_rows() -> Rows:
    import torch

    rows = [("PyTorch", f"{torch.__version__} @ {os.path.dirname(torch.__file__)}"),
            ("PyTorch built with CUDA", str(torch.version.cuda))]
    if torch.cuda.is_available():
        names = {torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}
        rows.append(("CUDA available", f"yes: {torch.cuda.device_count()} x {', '.join(names)}"))
    else:
        rows.append(("CUDA available", "no"))
    rows.append(("CPU threads", str(torch.get_num_threads())))
    try:
        import torchvision

        rows.append(("torchvision", f"{torchvision.__version__} @ "
                                    f"{os.path.dirname(torchvision.__file__)}"))
    except Exception as e:  # a CUDA torchvision against a CPU torch fails here
        rows.append(("torchvision", f"failed to import: {e}"))
    return rows


def _detectron2_rows() -> Rows:
    try:
        import detectron2
    except Exception as e:
        return [("detectron2", f"not importable: {e}")]
    rows = [("detectron2", f"{detectron2.__version__} @ {os.path.dirname(detectron2.__file__)}"),
            ("detectron2 comes from", detectron2_origin(detectron2.__file__))]
    try:
        from detectron2 import _C  # noqa: F401

        rows.append(("detectron2._C", f"loaded ({_C.__file__})"))
    except ImportError as e:
        rows.append(("detectron2._C", "not loaded (no build for this Python): rotated boxes "
                                      "and deformable conv unavailable; COCOEvaluator runs with "
                                      f"use_fast_impl=False [{type(e).__name__}]"))
    return rows


def _d2kd_rows() -> Rows:
    import d2kd
    from d2kd.ops import extension

    rows = [("d2kd", f"{d2kd.__version__} @ {os.path.dirname(d2kd.__file__)}")]
    if not extension.extension_available():
        rows.append(("d2kd._C", f"not loaded ({extension.EXTENSION_ERROR}); ops use the "
                                "PyTorch references"))
        return rows
    compiled_cuda = getattr(extension._C, "compiled_with_cuda", None)
    if callable(compiled_cuda):
        compiled_cuda = compiled_cuda()
    rows.append(("d2kd._C", f"loaded ({extension._C.__file__})"))
    cuda_version = getattr(extension._C, "cuda_version", None)
    cuda_version = cuda_version() if callable(cuda_version) else ""
    rows.append(("d2kd compiled_with_cuda",
                 f"{compiled_cuda}" + (f" (CUDA {cuda_version})" if cuda_version else "")))
    for op in extension.registered_ops():
        kernels = [k for k in ("cpu", "cuda") if extension.has_kernel(op, k)]
        rows.append((f"  d2kd::{op}", "kernels: " + (", ".join(kernels) or "none")))
    if not extension.registered_ops():
        rows.append(("d2kd ops", "none registered"))
    return rows


def _nvcc_row() -> Rows:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
            nvcc = os.path.join(home, "bin", "nvcc")
    if nvcc is None:
        return [("nvcc", "not found")]
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=20)
        release = [line for line in out.stdout.splitlines() if "release" in line]
        return [("nvcc", f"{nvcc}: {release[-1].strip() if release else out.stdout.strip()}")]
    except Exception as e:
        return [("nvcc", f"{nvcc} (cannot run: {e})")]


def collect_env_info() -> str:
    """The environment as a two-column table (string)."""
    rows: Rows = [("sys.platform", sys.platform),
                  ("Python", sys.version.replace("\n", " ")),
                  ("Python executable", sys.executable)]
    for part in (_torch_rows, _detectron2_rows, _d2kd_rows, _nvcc_row):
        try:
            rows += part()
        except Exception as e:  # one broken piece must not hide the rest
            rows.append((part.__name__.strip("_").replace("_rows", ""), f"error: {e}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def detectron2_env_info() -> str:
    """Detectron2's own ``collect_env_info`` table, or why it could not be produced."""
    try:
        module = importlib.import_module("detectron2.utils.collect_env")
        return module.collect_env_info()
    except Exception as e:
        return f"(detectron2's collect_env failed: {e})"


def main() -> None:
    print(collect_env_info())
    print()
    print("detectron2's environment table:")
    print(detectron2_env_info())


if __name__ == "__main__":
    main()
