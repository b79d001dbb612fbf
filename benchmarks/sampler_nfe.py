"""Sample quality against the number of network evaluations (NFE) for every sampler.

Two problems, the same grid of samplers x NFE budgets (5, 10, 20, 50):
- ``gmm``: the analytic Gaussian mixture (10 components in 64 dims, float64, exact denoiser). Quality: the
  RMS distance to a fine probability-flow ODE solve from the same noise (deterministic samplers), and the
  Frechet distance between 4,000 samples and 20,000 exact draws from the mixture (every sampler), beside
  the FD of 4,000 exact draws (the floor).
- ``digits``: a trained digits checkpoint. Quality: the FD in the feature space of mmdiff's own evaluator
  (mmdiff.eval, as mode=eval), 90 samples per class at guidance 1.5, against one half of the held-out test
  split (the reference mode=eval picks: digits the model never trained on), beside the real-vs-real floor
  (the other half); and the evaluator's class accuracy. The reference row is 250-step Heun.

Each sampler runs with the options of its conf/sampler/<name>.yaml (what `sampler=NAME` gives on the
CLI) and the Karras schedule (rho 7); its number of steps is the largest whose NFE fits the budget.
With ``--fit``, rows "NAME+fit" use a schedule fitted to the model at that NFE (mmdiff.core.schedule_fit,
as mode=fit_schedule). The adaptive solver sets its own NFE from a tolerance: its rows are per tolerance.

Usage: python benchmarks/sampler_nfe.py gmm|digits [--checkpoint CKPT] [--fit dpmpp_2m,unipc] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from mmdiff.core.analytic import GaussianMixture
from mmdiff.core.samplers import ORDERS, SAMPLERS
from mmdiff.core.schedule_fit import fit_schedule, reference_solve
from mmdiff.core.schedules import karras
from mmdiff.eval.metrics import fd

CONF = Path(__file__).resolve().parents[1] / "conf" / "sampler"
BUDGETS = (5, 10, 20, 50)
TOLERANCES = (0.2, 0.1, 0.05, 0.02)


def sampler_options(name: str) -> dict:
    return dict(OmegaConf.load(CONF / f"{name}.yaml").options)


class Counter:
    def __init__(self, denoiser):
        self.denoiser, self.calls = denoiser, 0

    def __call__(self, x, sigma):
        self.calls += 1
        return self.denoiser(x, sigma)


def count_nfe(name: str, steps: int, options: dict) -> int:
    """Network evaluations of ``name`` over ``steps`` steps (counted on a denoiser that costs nothing)."""
    counted = Counter(lambda x, sigma: x * 0)
    SAMPLERS[name](counted, torch.randn(1, 2, dtype=torch.float64) * 80, karras(steps, 0.002, 80.0),
                   generator=[torch.Generator().manual_seed(0)], **options)
    return counted.calls


def steps_for(name: str, budget: int, options: dict) -> int | None:
    """The most steps whose NFE fits ``budget`` (None if even one step does not)."""
    best = None
    for steps in range(1, budget + 1):
        if count_nfe(name, steps, options) <= budget:
            best = steps
    return best


def run(name: str, denoiser, noise: torch.Tensor, sigmas: torch.Tensor, options: dict) -> tuple[torch.Tensor, int]:
    counted = Counter(denoiser)
    gens = [torch.Generator().manual_seed(1000 + i) for i in range(len(noise))]
    with torch.no_grad():
        x = SAMPLERS[name](counted, noise * float(sigmas[0]), sigmas.to(noise.device), generator=gens, **options)
    return x, counted.calls


def grid(problem: dict, fit: list[str], fit_noise: torch.Tensor | None = None, fit_denoiser=None,
         fit_budgets: tuple[int, ...] = BUDGETS, samplers: list[str] | None = None, sweeps: int = 2,
         iters: int = 6) -> list[dict]:
    """Every sampler at every budget; problem: denoiser, noise, score(x) -> dict, sigma_min, sigma_max."""
    rows = []
    s_min, s_max = problem["sigma_min"], problem["sigma_max"]
    names = [n for n in (SAMPLERS if samplers is None else samplers) if n != "adaptive"]
    for name in names + [f"{n}+fit" for n in fit]:
        base = name.removesuffix("+fit")
        options = sampler_options(base)
        for budget in fit_budgets if name.endswith("+fit") else BUDGETS:
            steps = steps_for(base, budget, options)
            if steps is None:
                continue
            sigmas = karras(steps, s_min, s_max)
            info = {}
            if name.endswith("+fit"):
                t = time.perf_counter()
                result = fit_schedule(fit_denoiser, fit_noise, sigmas, base, floor=s_min, sweeps=sweeps, iters=iters)
                sigmas = result.sigmas
                info = {"fit_seconds": round(time.perf_counter() - t, 1), "fit_error": result.error,
                        "sigmas": [round(s, 5) for s in sigmas.tolist()]}
            t = time.perf_counter()
            x, nfe = run(base, problem["denoiser"], problem["noise"], sigmas, options)
            row = {"sampler": name, "budget": budget, "steps": steps, "nfe": nfe,
                   "seconds": round(time.perf_counter() - t, 2), **problem["score"](x, base), **info}
            print(json.dumps(row), flush=True)
            rows.append(row)
    for rtol in TOLERANCES if samplers is None or "adaptive" in samplers else ():
        options = sampler_options("adaptive") | {"rtol": rtol}
        t = time.perf_counter()
        x, nfe = run("adaptive", problem["denoiser"], problem["noise"], karras(2, s_min, s_max), options)
        row = {"sampler": "adaptive", "budget": None, "rtol": rtol, "nfe": nfe,
               "seconds": round(time.perf_counter() - t, 2), **problem["score"](x, "adaptive")}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def gmm_problem(n: int = 4000) -> dict:
    g = torch.Generator().manual_seed(0)
    means = torch.randn(10, 1, 8, 8, generator=g, dtype=torch.float64)
    stds = 0.2 + 0.3 * torch.rand(10, generator=g, dtype=torch.float64)
    mixture = GaussianMixture(means, stds, torch.full((10,), 0.1, dtype=torch.float64))
    noise = torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float64)
    exact = mixture.sample(20000, generator=g)[0].flatten(1).numpy()
    floor = fd(exact, mixture.sample(n, generator=g)[0].flatten(1).numpy())
    ref = reference_solve(mixture.denoise, noise * 80.0, 80.0, 0.002, 800)

    def score(x, name):
        out = {"fd": fd(exact, x.flatten(1).numpy()), "fd_floor": floor}
        if name in ORDERS and not sampler_options(name).get("eta") and not sampler_options(name).get("s_churn"):
            out["rms_to_ode"] = (x - ref).pow(2).mean().sqrt().item()
        return out
    return {"denoiser": mixture.denoise, "noise": noise, "score": score, "sigma_min": 0.002, "sigma_max": 80.0,
            "fit_denoiser": mixture.denoise,
            "fit_noise": torch.randn(1024, 1, 8, 8, generator=g, dtype=torch.float64)}


def digits_problem(checkpoint: str, per_class: int = 90, guidance: float = 1.5) -> dict:
    from mmdiff.api import Model
    from mmdiff.eval.evaluate import split_halves
    from mmdiff.eval.evaluator import load_or_train_evaluator
    from mmdiff.tasks.eval import reference_data

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = Model.from_checkpoint(checkpoint)
    train, real, described = reference_data(model.config, {})
    if real is None:
        raise SystemExit(f"{checkpoint} was trained on a split with no held-out part: train on dataset.split=train")
    print(f"reference: {described}, {len(real)} digits", flush=True)
    evaluator = load_or_train_evaluator(train, model.modality, held_out_data=real)
    half_a, half_b = split_halves(len(real))
    feats = evaluator.features(real.data).double().numpy()
    ref = feats[half_b.numpy()]
    floor = fd(ref, feats[half_a.numpy()])
    labels = torch.arange(10).repeat_interleave(per_class)
    noise = torch.randn(len(labels), *model.shape, generator=torch.Generator().manual_seed(12345))
    fit_labels = torch.arange(256) % 10

    def score(x, name):
        data = model.modality.eval_data(model.decode(x), real.shape)
        acc = float((evaluator.predict(data) == labels).float().mean())
        return {"fd": fd(ref, evaluator.features(data).double().numpy()), "fd_floor": floor, "accuracy": acc}
    d = model.config["diffusion"]
    return {"denoiser": model.guided(labels, guidance), "noise": noise, "score": score,
            "sigma_min": float(d["sigma_min"]), "sigma_max": float(d["sigma_max"]),
            "fit_denoiser": model.guided(fit_labels, guidance),
            "fit_noise": torch.randn(256, *model.shape, generator=torch.Generator().manual_seed(999)),
            "evaluator_accuracy": evaluator.held_out_accuracy}


def reference_row(problem: dict, steps: int = 250) -> dict:
    options = sampler_options("heun")
    x, nfe = run("heun", problem["denoiser"], problem["noise"],
                 karras(steps, problem["sigma_min"], problem["sigma_max"]), options)
    row = {"sampler": "heun (reference)", "steps": steps, "nfe": nfe, **problem["score"](x, "heun")}
    print(json.dumps(row), flush=True)
    return row


def table(rows: list[dict], reference: dict, key: str = "fd") -> str:
    """Markdown: a row per sampler, a column per budget, the metric (and the steps used)."""
    lines = [f"| sampler | {' | '.join(f'NFE {b}' for b in BUDGETS)} |", "|---" * (len(BUDGETS) + 1) + "|"]
    order = list(dict.fromkeys(r["sampler"] for r in rows if r.get("budget")))
    for name in order:
        cells = []
        for b in BUDGETS:
            hit = [r for r in rows if r["sampler"] == name and r.get("budget") == b]
            cells.append(f"{hit[0][key]:.4g} ({hit[0]['nfe']})" if hit and key in hit[0] else "–")
        lines.append(f"| {name} | {' | '.join(cells)} |")
    adaptive = [r for r in rows if r["sampler"] == "adaptive"]
    if adaptive:
        lines.append("| adaptive (rtol: NFE → value) | " + "; ".join(
            f"{r['rtol']}: {r['nfe']} → {r[key]:.4g}" for r in adaptive if key in r) + " |||")
    lines.append(f"\nReference: 250-step Heun ({reference['nfe']} NFE): {key} {reference[key]:.4g}"
                 + (f"; floor {reference['fd_floor']:.4g}" if key == "fd" else ""))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("problem", choices=["gmm", "digits"])
    parser.add_argument("--checkpoint")
    parser.add_argument("--fit", default="dpmpp_2m,unipc", help="samplers to also run with a fitted schedule")
    parser.add_argument("--fit-budgets", default="5,10,20,50", help="the NFE budgets to fit schedules for")
    parser.add_argument("--fit-sweeps", type=int, default=2)
    parser.add_argument("--fit-iters", type=int, default=6)
    parser.add_argument("--samplers", help="comma-separated (default: all); '' for the fitted rows only")
    parser.add_argument("--json", help="write every row here")
    args = parser.parse_args()
    t0 = time.perf_counter()
    problem = gmm_problem() if args.problem == "gmm" else digits_problem(args.checkpoint)
    fit = [f for f in args.fit.split(",") if f]
    reference = reference_row(problem)
    rows = grid(problem, fit, problem["fit_noise"], problem["fit_denoiser"],
                tuple(int(b) for b in args.fit_budgets.split(",")),
                None if args.samplers is None else [n for n in args.samplers.split(",") if n],
                args.fit_sweeps, args.fit_iters)
    print(f"\n{args.problem}: {time.perf_counter() - t0:.0f} s, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    for key in ("fd", "rms_to_ode", "accuracy"):
        if any(key in r for r in rows):
            print(f"### {key}\n\n{table(rows, reference, key)}\n")
    best10 = min((r for r in rows if r.get("budget") == 10), key=lambda r: r["fd"])
    # 10 NFE: the best sampler against the reference
    print(f"best at NFE 10: {best10['sampler']} fd {best10['fd']:.4g} = {best10['fd'] / reference['fd']:.3f} x the "
          f"250-step Heun reference ({reference['fd']:.4g})")
    if args.json:
        Path(args.json).write_text(json.dumps({"reference": reference, "rows": rows}, indent=1))


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
