"""Shared pieces of the benchmarks: the reference models on the embedded checkpoint, interleaved timing."""

from __future__ import annotations

import os
import statistics
import time

import torch


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict, repeats: int, device: torch.device | str = "cpu", warmup: bool = True) -> dict:
    """Wall times of each function, ``repeats`` rounds of one call each (after one warm-up call each).

    Within a round the functions run one after another, so a machine whose speed drifts (a shared
    CPU) slows every row alike; quote medians and ratios taken in one run.
    """
    for fn in fns.values() if warmup else ():
        fn()
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def loadavg() -> str:
    """The machine's load average, to print beside timings taken on a possibly shared machine."""
    one, five, fifteen = os.getloadavg()
    return f"load average (1/5/15 min) at the end: {one:.2f} {five:.2f} {fifteen:.2f}, {os.cpu_count()} CPUs"


def median(times: list[float]) -> float:
    return statistics.median(times)


def copy_bandwidth(device: torch.device | str = "cpu", mib: int = 256, repeats: int = 7) -> float:
    """Memory bandwidth in bytes/s as STREAM's copy counts it: (bytes read + bytes written) / time.

    The buffers (``mib`` MiB each) are filled first, so no page is the shared zero page.
    """
    n = mib * 2**20 // 4
    src = torch.randn(n, device=device)
    dst = torch.ones(n, device=device)
    times = interleaved({"copy": lambda: dst.copy_(src)}, repeats, device)["copy"]
    return 2 * n * 4 / median(times)


def reference_models(device: torch.device | str, dtype: torch.dtype):
    """transformers' model and tokenizer on the embedded GGUF, as g2interp's tests load them."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from g2interp.loading import embedded_model_path

    path = embedded_model_path()
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config  # TransformerLens reads the config; the weights are dequantised
    return hf.to(device).eval(), tokenizer
