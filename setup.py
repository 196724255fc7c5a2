"""Build script of d2kd and of its compiled extension ``d2kd._C``.

The extension always compiles the C++ (CPU) sources under ``csrc/``. It adds the CUDA sources
(``*.cu``) and defines ``WITH_CUDA`` when torch was built with CUDA and a CUDA toolkit is found,
or when ``FORCE_CUDA=1``; ``FORCE_CUDA=0`` builds CPU only. ``TORCH_CUDA_ARCH_LIST`` chooses the
GPU architectures; without it and without a visible GPU we build for Ampere and Hopper.
"""
import glob
import os

from setuptools import find_packages, setup

import shutil

import torch


def _locate_cuda_home():
    """Sets CUDA_HOME when torch's own guess (the parent of the nvcc on PATH) is no toolkit.

    Some machines put a wrapper script at /usr/local/bin/nvcc; torch would then take /usr/local,
    which has no cuda.h. We keep an explicit CUDA_HOME/CUDA_PATH, else take the first candidate
    that has both bin/nvcc and include/cuda.h.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    for home in candidates:
        if os.path.isfile(os.path.join(home, "bin", "nvcc")) and os.path.isfile(
            os.path.join(home, "include", "cuda.h")
        ):
            os.environ["CUDA_HOME"] = home
            return


_locate_cuda_home()
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;9.0"


def _want_cuda() -> bool:
    force = os.environ.get("FORCE_CUDA")
    if force is not None:
        return force == "1"
    return torch.version.cuda is not None and CUDA_HOME is not None


def _sources(pattern: str):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "csrc", "**", pattern), recursive=True))


def make_extension():
    sources = _sources("*.cpp")
    define_macros = []
    extra = {"cxx": ["-O3", "-fopenmp", "-std=c++20"]}
    extension = CppExtension
    if _want_cuda():
        if CUDA_HOME is None:
            raise RuntimeError("FORCE_CUDA=1 but no CUDA toolkit was found (set CUDA_HOME)")
        extension = CUDAExtension
        sources += _sources("*.cu")
        define_macros.append(("WITH_CUDA", None))
        extra["nvcc"] = ["-O3", "--use_fast_math", "-std=c++20",
                         "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                         "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__"]
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
    return extension(
        name="d2kd._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=define_macros,
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
    )


setup(
    name="d2kd",
    version="0.1.0",
    description="Knowledge distillation for detection transformers on Detectron2 "
    "(KD-DETR, DETRDistill, UniKD)",
    packages=find_packages(include=("d2kd", "d2kd.*")),
    python_requires=">=3.9",
    ext_modules=[make_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    install_requires=["fvcore", "scipy", "pycocotools", "submitit", "matplotlib", "safetensors"],
    extras_require={"hf": ["transformers>=5,<6"]},
    zip_safe=False,
)
