# KD-DETR settings shared by the KD-DETR configs.
# use_reference_kd_detr: KD-DETR as published (the authors' released code, Myleswork/KD-DETR), the
# default of the homogeneous DINO configs: sigmoid(N(0, 1)) general points shared by the batch,
# all the teacher's anchors as specific points, T^2 KL(softmax(t/T) || softmax(s/T)) with T = 10
# (mean over the classes, summed over the points), boxes L1 + GIoU as foreground-weighted means,
# constant group weights 1 and 1, foreground re-weighting, zero content (DAB-DETR's queries).
# d2kd's variant (the *_variant*.py configs) needs no helper: it is KDDETR's own defaults.


def use_reference_kd_detr(kd_detr, num_general: int) -> None:
    """Sets a ``KDDETR`` config node to the published method with ``num_general`` general points."""
    kd_detr.num_general = num_general
    kd_detr.num_specific = None
    kd_detr.distribution = "normal"
    kd_detr.share_points_across_batch = True
    kd_detr.general_weight = 1.0
    kd_detr.specific_weight = 1.0
    kd_detr.class_loss = "kl"
    kd_detr.temperature = 10.0
    kd_detr.normalization = "reference"
    kd_detr.foreground_weighting = True
    kd_detr.content = "zero"
    kd_detr.reuse_teacher_detections = False

