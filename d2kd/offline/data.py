"""The training data loader of offline distillation: images under a stored view + their knowledge.

Every input dict it yields has, besides detectron2's usual keys:

- ``"knowledge"``: ``{method: {key: tensor}}`` read from the store for this image and view,
  in the dtypes the methods exported (floats rounded through the store's dtype);
- ``"knowledge_source"``: ``(store uid, image key, view)``, checked by the distiller.
"""
import logging
from typing import Optional, Sequence

import numpy as np

from .identity import dataset_identity, describe_differences
from .store import HEADER, KnowledgeStore, StoreMismatchError, image_key
from .views import View, ViewMapper

__all__ = ["KnowledgeMapper", "build_knowledge_train_loader", "check_dataset"]

logger = logging.getLogger(__name__)


class KnowledgeMapper:
    """Maps a dataset dict under one of the store's views, chosen at random, and attaches that
    view's knowledge.

    Args:
        store: the knowledge store (an open :class:`KnowledgeStore` or its directory).
        mapper: the online training ``DatasetMapper``; its augmentations are replaced by the
            store's views, everything else (image format, annotation handling) is kept. Its
            image format must be the one the store was dumped with.
    """

    def __init__(self, store, mapper):
        self.store = store if isinstance(store, KnowledgeStore) else KnowledgeStore(store)
        self.views = ViewMapper(mapper, [View.from_dict(v) for v in self.store.views])
        stored_format = self.store.identity["views"]["image_format"]
        if self.views.image_format != stored_format:
            raise StoreMismatchError(
                f"{self.store.root}/{HEADER} was dumped from {stored_format} images, the training "
                f"mapper reads {self.views.image_format} (dataloader.train.mapper.image_format)")

    def __call__(self, dataset_dict: dict) -> dict:
        return self.map_view(dataset_dict, int(np.random.randint(len(self.views))))

    def map_view(self, dataset_dict: dict, view: int) -> dict:
        """``dataset_dict`` under view ``view``, with that view's knowledge."""
        out = self.views(dataset_dict, view)
        image_id = dataset_dict["image_id"]
        out["knowledge"] = self.store.read(image_id, view)
        out["knowledge_source"] = (self.store.uid, image_key(image_id), view)
        return out


def check_dataset(store: KnowledgeStore, dicts: Sequence[dict],
                  names: Optional[Sequence[str]] = None) -> None:
    """Raises :class:`StoreMismatchError` unless ``dicts`` are the images the store was dumped
    from (same ids and file names, same order)."""
    expected = dataset_identity(dicts, names)
    stored = store.identity["dataset"]
    lines = describe_differences(stored, expected, "dataset", ("store", "loader"))
    if lines:
        raise StoreMismatchError(
            f"{store.root}/{HEADER} was dumped from another data set ({stored.get('names')}, "
            f"{stored.get('num_images')} images) than the training loader reads ({expected['names']}, "
            f"{expected['num_images']} images):\n  " + "\n  ".join(lines))


def build_knowledge_train_loader(*, store: str, dataset, mapper, total_batch_size: int,
                                 dataset_names: Optional[Sequence[str]] = None,
                                 verify: str = "lazy", **kwargs):
    """``build_detection_train_loader`` for offline distillation.

    Opens the store (it must be complete: every shard listed, every file present with its size),
    checks that ``dataset`` is the data set it was dumped from, and wraps ``mapper`` in a
    :class:`KnowledgeMapper`. ``verify``: when shard checksums are checked (see
    :class:`KnowledgeStore`). Other keyword arguments go to ``build_detection_train_loader``
    (``num_workers``, ``sampler``, ``aspect_ratio_grouping``, ...).
    """
    from detectron2.data import build_detection_train_loader

    reader = KnowledgeStore(store, verify=verify)
    if isinstance(dataset, (list, tuple)):
        check_dataset(reader, dataset, dataset_names)
    else:
        logger.warning("Knowledge store %s: the data set is a %s, not a list of dicts; its identity "
                       "is not checked (each image's id and view still are)", store,
                       type(dataset).__name__)
    logger.info("Offline distillation from %s: %d images x %d views, methods %s", store,
                reader.plan["num_images"], reader.plan["num_views"], ", ".join(reader.methods))
    return build_detection_train_loader(dataset=dataset, mapper=KnowledgeMapper(reader, mapper),
                                        total_batch_size=total_batch_size, **kwargs)
