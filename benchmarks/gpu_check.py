"""A prepared check for a CUDA machine: training in fp32, bf16 and fp16, with and without
torch.compile and channels-last, for the benchmark table. Run by hand where a GPU is available:

    python benchmarks/gpu_check.py [--steps 200] [--out gpu_check.json]

For each setting it trains the image U-Net (channels 64, levels [1, 2, 2], attention at 16x16 and
8x8, 6.5M parameters) on the built-in digits upsampled to 32x32 with batch 128 for --steps steps,
and records images/s over the second half (after warm-up and compilation), the final loss, and the
peak GPU memory. It exits non-zero if CUDA is missing or a setting's loss is not finite.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import torch

from mmdiff.config import compose
from mmdiff.tasks.train import train

MODEL = ["model.channels=64", "model.channel_mult=[1,2,2]", "model.attn_levels=[1,2]", "dataset.size=32",
         "trainer.batch_size=128", "trainer.log_every=10", "trainer.sample_every=0", "trainer.checkpoint_every=0",
         "trainer.progress=false", "n=10", "steps=5"]
SETTINGS = {
    "fp32": [], "bf16": ["trainer.precision=bf16"], "fp16": ["trainer.precision=fp16"],
    "bf16+compile": ["trainer.precision=bf16", "trainer.compile=true"],
    "bf16+compile+channels_last": ["trainer.precision=bf16", "trainer.compile=true", "trainer.channels_last=true"],
}


def run(name: str, overrides: list[str], steps: int) -> dict:
    import csv
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(MODEL + overrides + [f"trainer.max_steps={steps}", "device=cuda"])
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        train(cfg, tmp)
        rows = list(csv.DictReader(open(f"{tmp}/metrics.csv")))
    rates = [float(r["images_per_s"]) for r in rows[len(rows) // 2:]]
    return {"setting": name, "images_per_s": sum(rates) / len(rates), "final_loss": float(rows[-1]["loss"]),
            "seconds": round(time.perf_counter() - start, 1), "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", default="gpu_check.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: run this on a GPU machine")
        return 1
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    results = []
    for name, overrides in SETTINGS.items():
        try:
            results.append(run(name, overrides, args.steps))
        except Exception as e:  # noqa: BLE001 - record the failure and go on to the next setting
            results.append({"setting": name, "error": f"{type(e).__name__}: {e}"})
        print(results[-1], flush=True)
    json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "results": results},
              open(args.out, "w"), indent=2)
    bad = [r for r in results if "error" in r or not r["final_loss"] == r["final_loss"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
