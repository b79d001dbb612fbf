"""A consistency student (mode=distill) at 1, 2 and 4 steps against its teacher at 4, 6, 10 and 20 evaluations.

For any modality: each row is `mode=eval` (the same held-out reference half, evaluator and seeds for every
row, so the rows compare; give the evaluator a budget it finishes in, e.g. --eval eval.evaluator.max_seconds=900,
for a fully trained one), the FD/FAD/FVD beside its real-vs-real floor and the class accuracy (for video also the
frame-by-frame FD, class accuracy and identity), plus the wall time to generate 1,000 samples (generation only, one
process, this machine's threads). The teacher runs
``--sampler`` (default unipc: 1 evaluation per step) with a schedule fitted at 4, 6 and 10 steps
(mode=fit_schedule, stored in a copy of the teacher) and the Karras schedule at 20; the student runs
sampler=consistency with its own schedule at 1, 2 and 4 steps, and at 2 steps with a fitted level. The tuning
cost is the student's training seconds over the teacher's (both recorded in the checkpoints).

Usage:
  python benchmarks/few_step.py TEACHER.safetensors STUDENT.safetensors [--n 1000] [--sampler unipc [dpmpp_2m ...]]
      [--teacher-only] [--eval OVERRIDE ...] [--guidance 1.5] [--json OUT] [--no-fit] [--fit KEY=VALUE ...]
  --fit passes options of conf/config.yaml's `fit` node to every fit (e.g. --fit n=128 held_out=0 sweeps=2 for
  a cheaper fit on a costly network); the options used are printed in the summary.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from mmdiff.checkpoint import load_checkpoint
from mmdiff.config import compose
from mmdiff.model import Model
from mmdiff.tasks.eval import evaluate_from_config


def evaluate(checkpoint: Path, sampler: str, steps: int, n: int, guidance: float, schedule: str | None,
             out: Path, extra: list[str]) -> dict:
    overrides = ["mode=eval", f"checkpoint={checkpoint}", f"sampler={sampler}", f"steps={steps}", f"n={n}",
                 f"guidance={guidance}", *extra]
    if schedule:
        overrides.append(f"sampler.schedule={schedule}")
    return evaluate_from_config(compose(overrides), out)


def seconds_per_1000(checkpoint: Path, sampler: str, steps: int, guidance: float, schedule: str | None) -> float:
    model = Model.from_checkpoint(checkpoint)
    n = 200
    t = time.perf_counter()
    model.sample(n=n, sampler=sampler, steps=steps, guidance=guidance, schedule=schedule)
    return (time.perf_counter() - t) * 1000 / n


def row(name: str, nfe: int, result: dict, seconds: float) -> dict:
    metrics = result["metrics"]
    key = next(k for k in ("fd", "fad", "fvd") if k in metrics)
    value, floor = metrics[key]["samples"], metrics[key]["floor"]
    out = {"model": name, "nfe": nfe, "metric": key, "value": value, "floor": floor, "gap": value - floor,
           "s_per_1000": round(seconds, 1)}
    if "accuracy" in metrics:
        out["accuracy"] = metrics["accuracy"]["samples"]
    for extra in ("frame_fd", "frame_accuracy", "frame_identity"):  # video: measured frame by frame
        if extra in metrics:
            out[extra] = metrics[extra]["samples"]
    print(json.dumps(out), flush=True)
    return out | {"metrics": metrics}      # --json keeps every metric of the row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("teacher", type=Path)
    parser.add_argument("student", type=Path)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--sampler", nargs="+", default=["unipc"], help="the teacher's sampler(s), each at 4-20 steps")
    parser.add_argument("--teacher-only", action="store_true", help="the teacher's rows only")
    parser.add_argument("--guidance", type=float, default=1.5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-fit", action="store_true", help="the teacher with Karras schedules only")
    parser.add_argument("--fit", nargs="*", default=[], metavar="KEY=VALUE",
                        help="options of the fit (n, held_out, reference_steps, sweeps, iters)")
    parser.add_argument("--eval", nargs="*", default=[], metavar="OVERRIDE",
                        help="overrides for every mode=eval row, e.g. eval.evaluator.max_seconds=900 (an evaluator "
                             "that finishes its epochs instead of one cut short by the default 60 s)")
    args = parser.parse_args()
    fit_options = {}
    for item in args.fit:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--fit takes KEY=VALUE, not {item!r}")
        fit_options[key] = int(value)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    work = Path(tempfile.mkdtemp(prefix="few_step_"))
    teacher, student = work / "teacher.safetensors", work / "student.safetensors"
    shutil.copy(args.teacher, teacher)
    shutil.copy(args.student, student)
    rows = []
    for sampler in args.sampler:
        for steps in (4, 6, 10, 20):
            fitted = steps < 20 and not args.no_fit
            if fitted:
                Model.from_checkpoint(teacher).fit_schedule(sampler, steps, guidance=args.guidance, save=True,
                                                            **fit_options)
            schedule = "fitted" if fitted else None
            result = evaluate(teacher, sampler, steps, args.n, args.guidance, schedule, work / f"t{sampler}{steps}",
                              args.eval)
            name = f"teacher {sampler}" + ("+fit" if fitted else "")
            rows.append(row(name, steps, result, seconds_per_1000(teacher, sampler, steps, args.guidance, schedule)))
    if args.teacher_only:
        if args.json:
            args.json.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
        shutil.rmtree(work, ignore_errors=True)
        return
    model = Model.from_checkpoint(student)
    if not args.no_fit:
        model.fit_schedule("consistency", 2, save=True, teacher=str(args.teacher), **fit_options)
    for steps, schedule in ((1, None), (2, None), (2, "fitted"), (4, None)):
        if schedule == "fitted" and args.no_fit:
            continue
        result = evaluate(student, "consistency", steps, args.n, 1.0, schedule, work / f"s{steps}{schedule or ''}",
                          args.eval)
        name = "student consistency" + ("+fit" if schedule else "")
        rows.append(row(name, steps, result, seconds_per_1000(student, "consistency", steps, 1.0, schedule)))
    t_seconds = load_checkpoint(args.teacher).extra.get("train_seconds")
    s_ckpt = load_checkpoint(args.student)
    s_seconds = s_ckpt.extra.get("train_seconds")
    summary = {"teacher_seconds": t_seconds, "student_seconds": s_seconds,
               "tuning_share": None if not (t_seconds and s_seconds) else round(s_seconds / t_seconds, 3),
               "student_steps": s_ckpt.step, "distill": s_ckpt.config.get("distill"), "n": args.n,
               "fit": fit_options, "eval": args.eval}
    print(json.dumps(summary), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
