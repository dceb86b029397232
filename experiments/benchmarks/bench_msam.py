"""Whole-model cost of mSAM with task deltas: training steps, inference, mixed-task batches, memory.

    python experiments/benchmarks/bench_msam.py                      # tiny, 128², batch 4, T=3
    python experiments/benchmarks/bench_msam.py --model vit_b --image-size 256 --batch 2
    python experiments/benchmarks/bench_msam.py --model vit_b --image-size 1024 --device cuda --amp bf16  # GPU

Every comparison runs side by side in one process (variants interleaved, medians of repeated runs):
- train: one training step (forward of all T tasks, a loss, backward) per decomposition at the paper's
  ranks, against (a) `lora` (LoRA-STL, also T task-aware encoder passes) and (b) the gradient floor:
  the same T-pass step with the deltas switched off, gradients still flowing back through the frozen
  encoder to its trainable LayerNorms (what any encoder adapter must pay).
- infer: one task with its delta merged vs the plain SAM encoder; all T tasks (cached per-task merged
  weights, and the factored path) vs T plain encoder passes.
- mixed: one mixed-task batch of B*T samples vs a loop over tasks (encoder forward + backward).
- memory: one training step of tucker and lora vs the floor: the activations autograd saves for backward;
  the peak tensor memory (CUDA: torch.cuda.max_memory_allocated; CPU: the same replayed from the
  profiler's memory records); on CPU also the growth of the peak RSS over one warmed-up step, in a fresh
  subprocess per variant (that one depends on when glibc returns pages, so it is informational).
Timing runs keep freed memory in the process (`--malloc steady`, see common.steady_allocator) so that
page faults do not blur the ratios; the RSS children use the system default.
Targets (issue 7): step <= 1.05x lora and <= 1.15x floor; merged <= 1.02x plain; all-task <= 1.05x
T plain passes; mixed <= 1.05x the loop; peak memory <= 1.10x the floor.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from experiments.benchmarks.common import (  # noqa: E402
    add_malloc_arg, interleaved_medians, machine_info, peak_tensor_bytes, print_table, steady_allocator, write_json,
)
from tensoradapt import (  # noqa: E402
    DECOMPS, merge_adapters, set_merged_inference, task_linears, task_scope, unmerge_adapters,
)
from tensoradapt.sam import PAPER_RANKS, SAM_CONFIGS, build_msam  # noqa: E402

TASKS = {"semantic": 13, "depth": 1, "normal": 3}


def build(args, decomp, seed=0, grad_checkpointing=False, tasks=None):
    torch.manual_seed(seed)
    ranks = PAPER_RANKS.get(decomp)
    model = build_msam(args.model, TASKS if tasks is None else tasks, decomp=decomp, ranks=ranks, image_size=args.image_size,
                       dropout=0.0, grad_checkpointing=grad_checkpointing).to(args.device)
    # non-zero deltas so that no work is skipped or trivially zero
    with torch.no_grad():
        for _, layer in task_linears(model):
            for p in layer.delta.parameters():
                p.normal_(0, 0.02)
    return model


def switch_off_deltas(model):
    """The gradient floor: every adapted layer computes its frozen base only (T passes remain)."""
    for _, layer in task_linears(model):
        layer.forward = layer.base.forward
    return model


def plain_encoder(model):
    """A plain segment_anything ImageEncoderViT with the same frozen weights (no TaskLinear)."""
    enc = model.config.build_image_encoder().to(args_device(model))
    state = {}
    for k, v in model.image_encoder.state_dict().items():
        if ".delta." in k:
            continue
        state[k.replace(".base.", ".")] = v  # a TaskLinear's frozen linear is its `base`
    enc.load_state_dict(state)
    return enc.eval().requires_grad_(False)


def args_device(model):
    return next(model.parameters()).device


def with_amp(args, fn):
    """`fn` under bf16 autocast when `--amp bf16` (the usual GPU setting), else `fn` itself."""
    if args.amp == "none":
        return fn
    device_type = torch.device(args.device).type

    def run():
        with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
            return fn()
    return run


def loss_of(out: dict[str, torch.Tensor]) -> torch.Tensor:
    """A stand-in training loss over every task's logits (float32, as under autocast)."""
    return sum(o.float().pow(2).mean() for o in out.values())


def train_step(model, images):
    """One training step: forward of every task, `loss_of`, backward; gradients dropped after."""
    def step():
        loss_of(model(images)).backward()
        for p in model.parameters():
            p.grad = None
    return step


def no_grad(fn):
    """`fn` run under torch.no_grad (an inference variant)."""
    def run():
        with torch.no_grad():
            fn()
    return run


def bench_time(args) -> tuple[list[dict], dict]:
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch, 3, args.image_size, args.image_size, generator=g).to(dev)
    T = len(TASKS)
    models = {d: build(args, d).train() for d in DECOMPS}
    floor = switch_off_deltas(build(args, "tucker").train())
    variants = {f"train/{d}": train_step(m, images) for d, m in models.items()}
    variants["train/floor"] = train_step(floor, images)
    variants["train/tucker+ckpt"] = train_step(build(args, "tucker", grad_checkpointing=True).train(), images)

    # inference (no grad), encoder only, on the preprocessed input
    tucker = models["tucker"].eval()
    x, _ = tucker.preprocess(images)
    plain = plain_encoder(tucker)
    enc = tucker.image_encoder
    ids = torch.arange(T, device=dev).repeat_interleave(args.batch)

    def merged_one():
        with task_scope(enc, 1):
            enc(x)

    def all_tasks_factored():
        set_merged_inference(enc, False)
        with task_scope(enc, ids):
            enc(x.repeat(T, 1, 1, 1))

    def all_tasks_merged():
        set_merged_inference(enc, True)
        with task_scope(enc, ids):
            enc(x.repeat(T, 1, 1, 1))
        set_merged_inference(enc, False)

    def plain_t():
        for _ in range(T):
            plain(x)

    infer = {
        "infer/plain": no_grad(lambda: plain(x)),
        "infer/plain_xT": no_grad(plain_t),
        "infer/all_factored": no_grad(all_tasks_factored),
        "infer/all_merged": no_grad(all_tasks_merged),
    }

    # mixed-task batch vs loop over tasks: encoder forward + backward (train mode, tucker)
    mixed_model = build(args, "tucker").train()
    menc = mixed_model.image_encoder

    def mixed():
        with task_scope(menc, ids):
            menc(x.repeat(T, 1, 1, 1)).pow(2).mean().backward()
        for p in menc.parameters():
            p.grad = None

    def loop():
        for t in range(T):
            with task_scope(menc, t):
                menc(x).pow(2).mean().div(T).backward()
        for p in menc.parameters():
            p.grad = None

    timed = {**variants, **infer, "mixed/mixed": mixed, "mixed/loop": loop}
    timings = interleaved_medians({k: with_amp(args, fn) for k, fn in timed.items()},
                                  repeats=args.repeats, device=dev)
    # merged single task is measured alone (merging changes the shared weights of `enc`); it runs the
    # plain encoder's very ops, so it gets more rounds (cheap next to the training steps) against noise
    merge_adapters(enc, 1)
    timings.update(interleaved_medians({"infer/merged_one": with_amp(args, no_grad(merged_one)),
                                        "infer/plain_again": with_amp(args, no_grad(lambda: plain(x)))},
                                       repeats=3 * args.repeats, device=dev))
    unmerge_adapters(enc)
    med = {k: v["median_s"] for k, v in timings.items()}
    rows = []
    for d in DECOMPS:
        rows.append({
            "what": f"train step {d}", "ranks": str(PAPER_RANKS[d]), "ms": 1e3 * med[f"train/{d}"],
            "vs lora": med[f"train/{d}"] / med["train/lora"], "vs floor": med[f"train/{d}"] / med["train/floor"],
        })
    rows.append({"what": "train step floor (deltas off)", "ms": 1e3 * med["train/floor"], "vs floor": 1.0})
    rows.append({"what": "train step tucker, activation checkpointing", "ranks": str(PAPER_RANKS["tucker"]),
                 "ms": 1e3 * med["train/tucker+ckpt"], "vs lora": med["train/tucker+ckpt"] / med["train/lora"],
                 "vs floor": med["train/tucker+ckpt"] / med["train/floor"]})
    rows.append({"what": "infer 1 task merged vs plain", "ms": 1e3 * med["infer/merged_one"],
                 "ratio": med["infer/merged_one"] / med["infer/plain_again"]})
    rows.append({"what": "infer all tasks, merged weights vs T plain", "ms": 1e3 * med["infer/all_merged"],
                 "ratio": med["infer/all_merged"] / med["infer/plain_xT"]})
    rows.append({"what": "infer all tasks, factored vs T plain", "ms": 1e3 * med["infer/all_factored"],
                 "ratio": med["infer/all_factored"] / med["infer/plain_xT"]})
    rows.append({"what": "mixed batch vs loop over tasks (fwd+bwd)", "ms": 1e3 * med["mixed/mixed"],
                 "ratio": med["mixed/mixed"] / med["mixed/loop"]})
    return rows, timings


_MEMORY_CHILD = r"""  # CPU only: the growth of the peak RSS over one warmed-up step
import json, sys, torch
sys.path.insert(0, {root!r})
from experiments.benchmarks import bench_msam as b
args = b.parse_args({argv!r})
model = b.build(args, "tucker").train()
if {floor!r}:
    b.switch_off_deltas(model)
images = torch.rand(args.batch, 3, args.image_size, args.image_size).to(args.device)
step = b.with_amp(args, b.train_step(model, images))
def status_kb(key):
    with open("/proc/self/status") as f:
        return int(next(l for l in f if l.startswith(key)).split()[1])
step()  # warm-up: allocator pools and lazy inits are not the step's own memory
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak-RSS counter (VmHWM) to the current RSS
base = status_kb("VmRSS") * 1024
step()
peak = status_kb("VmHWM") * 1024 - base
print(json.dumps({{"peak_bytes": peak}}))
"""


def saved_activation_bytes(model, images) -> int:
    """Bytes of the distinct tensors autograd saves for backward in one training forward (parameters
    excluded): the deterministic part of a training step's peak memory."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_of(model(images))
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def bench_memory(args, argv) -> list[dict]:
    """Training-step memory of tucker and lora against the gradient floor, measured three ways, and the
    peak of tucker with activation checkpointing (its saved tensors live inside torch.utils.checkpoint,
    out of the saved-tensor hooks' sight, so only the peak is reported for it)."""
    root = str(Path(__file__).resolve().parents[2])
    images = torch.rand(args.batch, 3, args.image_size, args.image_size).to(args.device)
    saved, peak = {}, {}
    # name -> (decomposition, activation checkpointing); "floor" is tucker with its deltas switched off
    variants = {"tucker": ("tucker", False), "lora": ("lora", False), "floor": ("tucker", False),
                "tucker+ckpt": ("tucker", True)}
    for name, (decomp, ckpt) in variants.items():
        model = build(args, decomp, grad_checkpointing=ckpt).train()
        if name == "floor":
            switch_off_deltas(model)
        if not ckpt:
            saved[name] = with_amp(args, lambda: saved_activation_bytes(model, images))()
        step = with_amp(args, train_step(model, images))
        step()  # warm-up: lazy inits and workspaces are not the step's own memory
        peak[name] = peak_tensor_bytes(step, args.device)
        del model, step
    rss = {}
    if not args.device.startswith("cuda"):
        for name in ("tucker", "floor"):
            code = _MEMORY_CHILD.format(root=root, argv=argv, floor=name == "floor")
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            rss[name] = json.loads(res.stdout.strip().splitlines()[-1])["peak_bytes"]
    where = "CUDA max_memory_allocated" if args.device.startswith("cuda") else "tensors, profiler replay"
    rows = []
    for name in ("tucker", "lora"):
        rows.append({"what": f"activations saved for backward, {name} vs floor", "MiB": saved[name] / 2**20,
                     "floor MiB": saved["floor"] / 2**20, "ratio": saved[name] / max(saved["floor"], 1)})
        rows.append({"what": f"peak memory of a train step ({where}), {name} vs floor", "MiB": peak[name] / 2**20,
                     "floor MiB": peak["floor"] / 2**20, "ratio": peak[name] / max(peak["floor"], 1)})
    rows.append({"what": f"peak memory of a train step ({where}), tucker + activation checkpointing vs floor",
                 "MiB": peak["tucker+ckpt"] / 2**20, "floor MiB": peak["floor"] / 2**20,
                 "ratio": peak["tucker+ckpt"] / max(peak["floor"], 1)})
    if rss:
        rows.append({"what": "peak RSS growth of a train step, tucker vs floor (allocator-dependent)",
                     "MiB": rss["tucker"] / 2**20, "floor MiB": rss["floor"] / 2**20,
                     "ratio": rss["tucker"] / max(rss["floor"], 1)})
    return rows


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", choices=list(SAM_CONFIGS))
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--amp", choices=["none", "bf16"], default="none",
                   help="run every variant under torch.autocast in bfloat16 (use on a GPU)")
    add_malloc_arg(p)
    p.add_argument("--out", default=None, help="JSON path (default runs/benchmarks/bench_msam_<model>.json)")
    return p.parse_args(argv)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.malloc == "steady":
        steady_allocator()
    rows, timings = bench_time(args)
    if not args.skip_memory:
        rows += bench_memory(args, argv)
    print(f"\nmSAM {args.model} at {args.image_size}², batch {args.batch}, T={len(TASKS)}, {args.device}, "
          f"amp {args.amp}, "
          f"{torch.get_num_threads()} threads, medians of {args.repeats}")
    cols = ["what", "ranks", "ms", "vs lora", "vs floor", "ratio", "MiB", "floor MiB"]
    table = print_table(rows, cols)
    out = args.out or f"runs/benchmarks/bench_msam_{args.model}.json"
    write_json(out, {"args": vars(args), "machine": machine_info(), "rows": rows, "timings": timings,
                     "table": table})


if __name__ == "__main__":
    main()
