"""How well post-hoc EMA reconstructs an EMA on a real run: for each sigma_rel tracked during training
(trainer.phema.sigma_rels), rebuild its final state from every other snapshot (all but itself) and compare it
with the tracked one: the distance, relative to the weights' norm and to the distance between the tracked EMAs.

Usage: python benchmarks/phema_error.py RUN      (RUN: a run folder trained with trainer.phema.sigma_rels=[...])
"""

from __future__ import annotations

import sys
from pathlib import Path

from mmdiff.checkpoint import SNAPSHOTS, load_snapshots
from mmdiff.core.phema import reconstruct


def norm(state: dict, other: dict | None = None) -> float:
    keys = [k for k, v in state.items() if v.is_floating_point()]
    return sum(float((state[k].double() - (other[k].double() if other else 0)).pow(2).sum()) for k in keys) ** 0.5


def main(run: Path) -> None:
    snaps = load_snapshots(run / SNAPSHOTS)
    final = max(t for t, _, _ in snaps)
    tracked = {s: state for t, s, state in snaps if t == final}
    if len(tracked) < 2:
        sys.exit(f"{run / SNAPSHOTS}: needs snapshots of two or more EMA lengths (trainer.phema.sigma_rels)")
    spread = norm(*[tracked[s] for s in sorted(tracked)[:2]])
    print(f"{len(snaps)} snapshots, the last at {final} samples; tracked sigma_rel {sorted(tracked)}")
    for target in sorted(tracked):
        others = [(t, s, state) for t, s, state in snaps if not (t == final and s == target)]
        rebuilt = reconstruct([state for _, _, state in others], [(t, s) for t, s, _ in others], (final, target))
        error = norm(rebuilt, tracked[target])
        print(f"sigma_rel {target}: |rebuilt - tracked| {error:.4g} = {error / norm(tracked[target]):.2%} of the "
              f"weights' norm, {error / spread:.1%} of the distance between the tracked EMAs")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
