"""Fixtures shared by every test folder. Kept small and generic.

- The built-in data sets are generated into a session temporary folder: ``DETECTRON2_DATASETS``
  points there for this process and for every subprocess a test starts (``datasets_root``).
- torch uses the cores this pytest process may use (split between xdist workers), with passive
  OpenMP waiting (``OMP_WAIT_POLICY=PASSIVE``, inherited by subprocesses).
- The built-in pretrained backbones (R-18/50/101) that the built-in configs start from are made
  with a one-step recipe into a session folder: ``D2KD_WEIGHTS`` points there (tests check
  loading and training, not what pretraining learns; that has its own tests).
- ``event_storage``: detectron2's ``EventStorage``, which model forwards need.
"""
import os

# Before torch loads its OpenMP runtime: threads that spin while waiting make every op 5-40x
# slower as soon as the shared cores are busy with anything else (other tests, other jobs);
# measured on the 2-core machines: an FCOS step 0.3 s passive vs 1.8-14 s spinning.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402


def _threads_per_worker() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        cores = os.cpu_count() or 1
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    return max(1, cores // workers)


# Subprocesses started by tests (train_net.py, DDP workers, submitit jobs) inherit these.
os.environ.setdefault("MALLOC_MMAP_MAX_", "0")
os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", "1000000000000")
torch.set_num_threads(_threads_per_worker())


@pytest.fixture(scope="session", autouse=True)
def datasets_root(tmp_path_factory):
    """Folder of the built-in data sets for this session (``$DETECTRON2_DATASETS``)."""
    root = tmp_path_factory.mktemp("datasets")
    previous = os.environ.get("DETECTRON2_DATASETS")
    os.environ["DETECTRON2_DATASETS"] = str(root)
    yield root
    if previous is None:
        os.environ.pop("DETECTRON2_DATASETS", None)
    else:
        os.environ["DETECTRON2_DATASETS"] = previous


@pytest.fixture(scope="session", autouse=True)
def weights_root(tmp_path_factory):
    """Folder of tiny built-in pretrained backbones for this session (``$D2KD_WEIGHTS``)."""
    from d2kd.data import DEFAULT_SPEC
    from d2kd.data.crops import CropSpec
    from d2kd.engine import backbone_pretrain as bp

    root = tmp_path_factory.mktemp("weights")
    for depth in (18, 50, 101):
        recipe = bp.PretrainRecipe(depth=depth, steps=1, batch_size=4, warmup_steps=1, val_images=1,
                                   crops=CropSpec(num_images=1, crop_size=32))
        bp.ensure_backbone(recipe, DEFAULT_SPEC, path=str(root / bp.SUBDIR / f"R-{depth}.pth"), log=lambda m: None)
    previous = os.environ.get("D2KD_WEIGHTS")
    os.environ["D2KD_WEIGHTS"] = str(root)
    yield root
    if previous is None:
        os.environ.pop("D2KD_WEIGHTS", None)
    else:
        os.environ["D2KD_WEIGHTS"] = previous


@pytest.fixture
def event_storage():
    """A detectron2 ``EventStorage`` (model forwards log into it)."""
    from detectron2.utils.events import EventStorage

    with EventStorage(0) as storage:
        yield storage
