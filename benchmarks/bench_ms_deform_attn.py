"""Multi-scale deformable attention: d2kd's compiled CPU op against the PyTorch reference.

Prints one table row per case and thread count: median times of forward and forward+backward
(measured side by side, the two implementations alternating), the speedups (x = ref / ours),
the largest difference of the outputs and of the gradients (these relative to the largest
gradient entry, with the number of entries off by more than 1e-4 of it in brackets), and the
peak memory each implementation adds (each measured in a fresh
subprocess: VmHWM after the call minus the resident size before it).

    python benchmarks/bench_ms_deform_attn.py                      # every case, 2 threads
    python benchmarks/bench_ms_deform_attn.py --cases dino_enc --threads 1,2 --reps 7
    python benchmarks/bench_ms_deform_attn.py --no-memory --locations uniform

Cases (batch 2, 8 heads x 32 channels, 4 levels x 4 points unless said otherwise):
  dino_enc   levels 100x167, 50x84, 25x42, 13x21; queries = the 22,223 tokens
  dino_dec   same levels, 900 queries
  px256_enc  levels 32x32, 16x16, 8x8, 4x4; queries = the 1,360 tokens
  px256_dec  same levels, 900 queries
  px192_enc  levels 24x24, 12x12, 6x6, 3x3; queries = the 765 tokens
  px192_dec  same levels, 900 queries
Locations ("local", the default): encoder queries sample around their own pixel, decoder
queries around random reference points, a few pixels away on every level (as Deformable DETR
does); "uniform": anywhere in the maps (worst case for caches).

Timings follow ../shared/BASELINES.md: glibc's allocator is told to keep freed memory (the
MALLOC_* variables below are set for this process before torch loads, and for the memory
subprocesses), torch.set_num_threads(threads).
"""
import os

os.environ.setdefault("MALLOC_MMAP_MAX_", "0")
os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", "1000000000000")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from d2kd.ops.ms_deform_attn import (  # noqa: E402
    _kernel_available,
    multi_scale_deformable_attention,
    multi_scale_deformable_attention_reference,
)

DINO_LEVELS = [(100, 167), (50, 84), (25, 42), (13, 21)]
PX256_LEVELS = [(32, 32), (16, 16), (8, 8), (4, 4)]
PX192_LEVELS = [(24, 24), (12, 12), (6, 6), (3, 3)]
CASES = {
    "dino_enc": (DINO_LEVELS, None),
    "dino_dec": (DINO_LEVELS, 900),
    "px256_enc": (PX256_LEVELS, None),
    "px256_dec": (PX256_LEVELS, 900),
    "px192_enc": (PX192_LEVELS, None),
    "px192_dec": (PX192_LEVELS, 900),
}
B, H, C, P = 2, 8, 32, 4
IMPLS = {"ours": multi_scale_deformable_attention, "ref": multi_scale_deformable_attention_reference}


def make_case(name, locations="local", seed=0):
    """Inputs of a case: value, spatial_shapes, level_start_index, locations, weights, grad_output."""
    levels, num_queries = CASES[name]
    g = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(levels, dtype=torch.int64)
    sizes = shapes[:, 0] * shapes[:, 1]
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    S, L = int(sizes.sum()), len(levels)
    Q = S if num_queries is None else num_queries
    value = torch.randn(B, S, H, C, generator=g)
    wh = shapes.flip(-1).float()  # (W_l, H_l)
    if locations == "uniform":
        loc = torch.rand(B, Q, H, L, P, 2, generator=g)
    else:
        if num_queries is None:  # encoder: each token's own pixel centre
            centres = []
            for h, w in levels:
                ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
                centres.append(torch.stack([xs, ys], -1).reshape(-1, 2))
            ref = torch.cat(centres)[None].expand(B, -1, -1)
        else:
            ref = torch.rand(B, Q, 2, generator=g)
        offsets = torch.randn(B, Q, H, L, P, 2, generator=g) * 2.0 / wh[None, None, None, :, None, :]
        loc = ref[:, :, None, None, None, :] + offsets
    weights = torch.rand(B, Q, H, L * P, generator=g).softmax(-1).view(B, Q, H, L, P)
    grad_output = torch.randn(B, Q, H * C, generator=g)
    return value, shapes, starts, loc.contiguous(), weights, grad_output


def run_once(fn, inputs, backward):
    value, shapes, starts, loc, weights, grad_output = inputs
    if not backward:
        with torch.no_grad():
            return fn(value, shapes, starts, loc, weights), None
    leaves = [t.detach().requires_grad_() for t in (value, loc, weights)]
    out = fn(leaves[0], shapes, starts, leaves[1], leaves[2])
    out.backward(grad_output)
    return out.detach(), [t.grad for t in leaves]


def relative(a, b):
    """max |a - b| / max |b|, and how many entries differ by more than 1e-4 of max |b|."""
    diff, scale = (a - b).abs(), b.abs().max().clamp_min(1e-12)
    return (diff.max() / scale).item(), int((diff > 1e-4 * scale).sum())


def time_case(name, threads, reps, locations):
    torch.set_num_threads(threads)
    inputs = make_case(name, locations)
    times = {(impl, mode): [] for impl in IMPLS for mode in ("fwd", "fwd+bwd")}
    results = {}
    for rep in range(reps + 1):  # the first round warms up (allocator, caches, thread pool)
        for mode in ("fwd", "fwd+bwd"):
            for impl, fn in IMPLS.items():
                start = time.perf_counter()
                out, grads = run_once(fn, inputs, mode == "fwd+bwd")
                elapsed = time.perf_counter() - start
                if rep > 0:
                    times[(impl, mode)].append(elapsed * 1e3)
                if rep == 0 and mode == "fwd+bwd":
                    results[impl] = (out, grads)
    (o1, g1), (o2, g2) = results["ours"], results["ref"]
    # A sample whose x or y lies within float32 rounding of an integer pixel position may be
    # floored differently by the two implementations; its location gradient then jumps (the
    # derivative of bilinear sampling is discontinuous there). Such entries are counted.
    diffs = {
        "out": (o1 - o2).abs().max().item(),
        # Gradients, relative to their largest entry (the location gradients scale with the
        # level widths, the attention-weight gradients are sums over the channels).
        "grad_value": relative(g1[0], g2[0]),
        "grad_loc": relative(g1[1], g2[1]),
        "grad_attn": relative(g1[2], g2[2]),
    }
    med = {k: statistics.median(v) for k, v in times.items()}
    return med, diffs, len(inputs[3][0])


MEMORY_SCRIPT = """
import json, resource, sys, torch
sys.path.insert(0, sys.argv[1])
from benchmarks.bench_ms_deform_attn import make_case, run_once, IMPLS
name, impl, mode, threads, locations = sys.argv[2:7]
torch.set_num_threads(int(threads))
inputs = make_case(name, locations)
# Start the autograd engine and the thread pool first (their stacks would count as the call's).
value, shapes, starts, loc, weights, grad_output = inputs
run_once(IMPLS[impl], (value, shapes, starts, loc[:, :1], weights[:, :1], grad_output[:, :1]), True)
def rss_kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
before = rss_kb("VmRSS")
with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current VmRSS
    f.write("5")
run_once(IMPLS[impl], inputs, mode == "fwd+bwd")
print(json.dumps({"peak_mb": (rss_kb("VmHWM") - before) / 1024}))
"""


def peak_memory_mb(name, impl, mode, threads, locations):
    """Peak resident memory a call adds, in a fresh process. There glibc hands every block of
    64 KiB or more back to the system when it is freed (a fixed mmap threshold), so the peak
    resident size is the most memory alive at once."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, root, name, impl, mode, str(threads), locations],
        env=env, capture_output=True, text=True, cwd=root,
    )
    if result.returncode != 0:
        return float("nan")
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated, from: " + ", ".join(CASES))
    parser.add_argument("--threads", default="2", help="comma-separated thread counts (default 2)")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions after one warm-up (default 5)")
    parser.add_argument("--locations", choices=("local", "uniform"), default="local")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    args = parser.parse_args()
    if not _kernel_available("cpu"):
        sys.exit("d2kd._C has no CPU kernel for ms_deform_attn: build the extension first")

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, float32, batch {B}, {H} heads x {C} channels, "
          f"{P} points, locations={args.locations}, MALLOC_MMAP_MAX_={os.environ['MALLOC_MMAP_MAX_']}, "
          f"medians of {args.reps}")
    header = (f"{'case':<10} {'thr':>3} {'queries':>7} | {'fwd ours':>9} {'ref':>8} {'x':>5} | {'f+b ours':>9} "
              f"{'ref':>8} {'x':>5} | {'max|d| out':>10} {'grad value':>10} {'grad loc':>10} {'grad attn':>10}")
    if not args.no_memory:
        header += f" | {'peak MB fwd ours/ref':>20} {'f+b ours/ref':>14}"
    print(header)
    print("-" * len(header))
    for name in args.cases.split(","):
        for threads in (int(t) for t in args.threads.split(",")):
            med, diffs, queries = time_case(name, threads, args.reps, args.locations)
            fo, fr = med[("ours", "fwd")], med[("ref", "fwd")]
            bo, br = med[("ours", "fwd+bwd")], med[("ref", "fwd+bwd")]
            line = (f"{name:<10} {threads:>3} {queries:>7} | {fo:>7.1f}ms {fr:>6.1f}ms {fr / fo:>5.1f} | "
                    f"{bo:>7.1f}ms {br:>6.1f}ms {br / bo:>5.1f} | {diffs['out']:>10.1e} "
                    + " ".join(f"{diffs[k][0]:>7.1e}({diffs[k][1]})" for k in ("grad_value", "grad_loc", "grad_attn")))
            if not args.no_memory:
                mem = {(impl, mode): peak_memory_mb(name, impl, mode, threads, args.locations)
                       for impl in IMPLS for mode in ("fwd", "fwd+bwd")}
                line += (f" | {mem[('ours', 'fwd')]:>9.0f} /{mem[('ref', 'fwd')]:>7.0f}  "
                         f"{mem[('ours', 'fwd+bwd')]:>6.0f} /{mem[('ref', 'fwd+bwd')]:>6.0f}")
            print(line, flush=True)


if __name__ == "__main__":
    main()
