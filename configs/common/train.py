# Training settings read by train_net.py (detectron2's configs/common/train.py plus d2kd's).
from d2kd.engine.launch import default_device

train = dict(
    output_dir="./output",
    # Weights to start from ("" = from scratch). Local files only: nothing is downloaded.
    init_checkpoint="",
    max_iter=90000,
    amp=dict(enabled=False),  # mixed precision; CUDA only (ignored with a log line on CPU)
    ddp=dict(  # arguments of DistributedDataParallel
        broadcast_buffers=False,
        # Models whose losses skip some parameters on some steps (e.g. distillation adapters
        # switched off by a schedule) need True.
        find_unused_parameters=False,
        fp16_compression=False,  # CUDA only
    ),
    # Clip the global gradient norm before each step (DETRs: max_norm=0.1).
    clip_grad=dict(enabled=False, max_norm=1.0, norm_type=2.0),
    checkpointer=dict(period=5000, max_to_keep=100),  # periodic, atomic checkpoints
    eval_period=5000,  # 0: evaluate at the end only
    log_period=20,
    device=default_device(),  # "cuda" if a GPU is visible, else "cpu"
    seed=42,  # < 0: random (logged); each process uses seed + rank
    cudnn_benchmark=False,  # always off on CPU
    num_threads=0,  # CPU threads per process; 0: $OMP_NUM_THREADS, else cores / processes
    plot=dict(enabled=True, filename="training_curves.png", smoothing=20),
)
