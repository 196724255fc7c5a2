# Learning-rate schedules: multipliers of optimizer.lr over training, scale-invariant (given as
# fractions of train.max_iter, so overriding max_iter stretches them), with a linear warmup.
from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler


def multistep(max_iter, steps=(2 / 3, 8 / 9), warmup_iters=1000, gamma=0.1, warmup_factor=0.001):
    """LR x1 then x`gamma` after each fraction in `steps` of `max_iter`; linear warmup over
    `warmup_iters` (as a fraction of `max_iter`)."""
    milestones = [int(round(s * max_iter)) for s in steps] + [max_iter]
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[gamma**i for i in range(len(steps) + 1)],
            milestones=milestones,
        ),
        warmup_length=warmup_iters / max_iter,
        warmup_method="linear",
        warmup_factor=warmup_factor,
    )


# COCO "1x": 90k iterations at batch 16 (12 epochs), steps at 60k and 80k, 1k warmup iterations.
lr_multiplier_1x = multistep(90000, steps=(60000 / 90000, 80000 / 90000), warmup_iters=1000)
lr_multiplier_3x = multistep(270000, steps=(210000 / 270000, 250000 / 270000), warmup_iters=1000)

# CPU schedules for the built-in data (steps at 75% and 90%, short warmup).
lr_multiplier_cpu_1k = multistep(1000, steps=(0.75, 0.9), warmup_iters=100)
lr_multiplier_cpu_3k = multistep(3000, steps=(0.75, 0.9), warmup_iters=200)
