"""Subprocess entry for the kill -9 and torchrun tests: capture ``worker_config(out)`` with a tiny model.

``--delay`` sleeps that long in every forward pass so a kill can land anywhere in the run.
Under torchrun (WORLD_SIZE > 1) it joins a gloo group first.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from act_helpers import tiny_model, worker_config

from g2interp.activations import capture


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        torch.distributed.init_process_group("gloo")
    model = tiny_model()
    if args.delay:
        original = model.capture

        def slow_capture(*a, **kw):
            time.sleep(args.delay)
            return original(*a, **kw)

        model.capture = slow_capture
    print("READY", flush=True)
    result = capture(model, worker_config(args.out))
    # one write per line: two ranks share the pipe, and print's separate "\n" write can interleave
    sys.stdout.write(f"DONE shards={result.shards_written} complete={result.manifest.complete}\n")
    sys.stdout.flush()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
