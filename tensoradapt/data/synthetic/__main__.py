"""``python -m tensoradapt.data.synthetic``: generate (or reuse) a synthetic dataset and report images/s."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from .streams import synthesize
from .writer import DEFAULT_N_TRAIN, DEFAULT_N_VAL, META_FILE, default_synthetic_root, ensure_synthetic


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tensoradapt.data.synthetic",
                                 description="Generate the synthetic NYUv2-layout dataset and report images/s.")
    ap.add_argument("--root", type=Path, default=None, help="output folder (default: the cache folder)")
    ap.add_argument("--n-train", type=int, default=DEFAULT_N_TRAIN)
    ap.add_argument("--n-val", type=int, default=DEFAULT_N_VAL)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--height", type=int, default=288)
    ap.add_argument("--width", type=int, default=384)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--force", action="store_true", help="regenerate even if a complete copy exists")
    ap.add_argument("--render-only", action="store_true",
                    help="benchmark rendering in this process without writing files")
    args = ap.parse_args(argv)
    if args.render_only:
        n = args.n_train
        t0 = time.perf_counter()
        for i in range(n):
            synthesize(i, seed=args.seed, stream="train", height=args.height, width=args.width)
        dt = time.perf_counter() - t0
        print(f"rendered {n} scenes at {args.height}x{args.width} in {dt:.2f} s: {n / dt:.1f} images/s "
              f"(1 process, no writing)")
        return
    root = args.root if args.root is not None else default_synthetic_root(
        args.n_train, args.n_val, args.seed, args.height, args.width)
    if args.force:
        (Path(root) / META_FILE).unlink(missing_ok=True)
    t0 = time.perf_counter()
    out = ensure_synthetic(root, args.n_train, args.n_val, args.seed, args.height, args.width,
                           workers=args.workers, progress=True)
    dt = time.perf_counter() - t0
    meta = json.loads((out / META_FILE).read_text())
    print(f"{out}: {args.n_train} train + {args.n_val} val scenes; generation {meta['seconds']} s, "
          f"{meta['images_per_s']} images/s with {meta['workers']} worker(s) (this call {dt:.1f} s)")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
