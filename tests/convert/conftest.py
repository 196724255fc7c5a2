"""Small transformers detectors with random weights, saved as Hugging Face folders (offline)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

CLASSES = ["circle", "square", "triangle", "star", "ring"]


def _resnet18_config(out_features):
    from transformers import ResNetConfig

    return ResNetConfig(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                        layer_type="basic", out_features=list(out_features))


def deformable_detr_config(variant: str, **kwargs):
    """A small transformers Deformable DETR config: "plain", "refine" or "two_stage"."""
    from transformers import DeformableDetrConfig

    args = dict(
        backbone_config=_resnet18_config(["stage2", "stage3", "stage4"]), use_timm_backbone=False,
        use_pretrained_backbone=False, d_model=64, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=128,
        decoder_ffn_dim=128, encoder_attention_heads=4, decoder_attention_heads=4, num_queries=20,
        two_stage_num_proposals=20, id2label=dict(enumerate(CLASSES)),
        with_box_refine=variant in ("refine", "two_stage"), two_stage=variant == "two_stage",
    )
    args.update(kwargs)
    return DeformableDetrConfig(**args)


def _perturb(model, seed, scale):
    # transformers initialises heads and offsets to symmetric values (zero deltas, uniform
    # attention); random perturbations make every weight matter in the comparison
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def save_and_reload(model_cls, config, folder, seed=0, scale=0.05, sharpen=()):
    """Builds ``model_cls(config)`` with random weights (plus noise of std ``scale``), saves it
    to ``folder`` and returns the model as transformers reads it back (what a user's folder
    gives), in eval mode. Weights whose name contains one of ``sharpen`` are multiplied by 5."""
    torch.manual_seed(seed)
    model = model_cls(config)
    _perturb(model, seed, scale)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(s in name for s in sharpen):
                p.mul_(5.0)
    model.save_pretrained(folder)
    return model_cls.from_pretrained(folder).eval()


@pytest.fixture(scope="session")
def hf_deformable(tmp_path_factory):
    """``hf_deformable(variant) -> (transformers model, folder)``, built once per session."""
    from transformers import DeformableDetrForObjectDetection

    cache = {}

    def get(variant):
        if variant not in cache:
            folder = str(tmp_path_factory.mktemp(f"hf_deformable_{variant}"))
            model = save_and_reload(DeformableDetrForObjectDetection, deformable_detr_config(variant), folder)
            cache[variant] = (model, folder)
        return cache[variant]

    return get


def dab_detr_config(**kwargs):
    """A small transformers DAB-DETR config (ResNet-18 C5, width 64, 1 encoder / 2 decoder layers)."""
    from transformers import DabDetrConfig

    args = dict(
        backbone_config=_resnet18_config(["stage4"]), use_timm_backbone=False, use_pretrained_backbone=False,
        hidden_size=64, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=128, decoder_ffn_dim=128,
        encoder_attention_heads=4, decoder_attention_heads=4, num_queries=20, id2label=dict(enumerate(CLASSES)),
    )
    args.update(kwargs)
    return DabDetrConfig(**args)


@pytest.fixture(scope="session")
def hf_dab(tmp_path_factory):
    """``hf_dab(**config changes) -> (transformers model, folder)``, built once per setting."""
    from transformers import DabDetrForObjectDetection

    cache = {}

    def get(**kwargs):
        key = tuple(sorted(kwargs.items()))
        if key not in cache:
            folder = str(tmp_path_factory.mktemp("hf_dab_detr"))
            # random weights give near-uniform attention, the same for every query; sharper
            # positional projections make each query's outputs depend on its anchor
            model = save_and_reload(DabDetrForObjectDetection, dab_detr_config(**kwargs), folder, scale=0.1,
                                    sharpen=("pos_proj", "pos_sine_proj", "query_refpoint", "class_embed"))
            cache[key] = (model, folder)
        return cache[key]

    return get
