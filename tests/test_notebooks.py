"""The notebooks in notebooks/ run top to bottom (each trains its own tiny model into a temporary folder,
about a minute and a half on 2 CPU cores), and are committed without outputs."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = ["01_forward_and_reverse", "02_image_samples", "03_audio_samples", "04_samplers", "05_video"]
WITH_PLAYERS = {"01_forward_and_reverse", "03_audio_samples"}  # notebooks that let you listen
CELL_TIMEOUT = 300  # seconds, per cell
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_the_notebooks_of_issue_7_exist():
    names = [p.stem for p in NOTEBOOKS]
    assert set(EXPECTED) <= set(names), f"missing notebooks: {sorted(set(EXPECTED) - set(names))}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    dirty = [i for i, cell in enumerate(nb["cells"]) if cell["cell_type"] == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, (f"{path.name}: cells {dirty} have outputs or execution counts; clear them "
                       f"(jupyter nbconvert --clear-output --inplace {path.relative_to(ROOT)})")
    assert nb["metadata"].get("kernelspec", {}).get("name") == "python3"


def outputs(nb, kind: str) -> list[str]:
    """The ``kind`` (a MIME type) outputs of every code cell, as text."""
    found = []
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            data = out.get("data", {}).get(kind)
            if data is not None:
                found.append("".join(data) if isinstance(data, list) else data)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path):
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    # The kernel inherits this process's environment, so evaluators go to the session's temporary cache
    # (MMDIFF_CACHE, tests/conftest.py); the notebooks' runs go to temporary folders of their own.
    nb = nbformat.read(path, as_version=4)
    # kernel "python3" is the interpreter running the tests (ipykernel's native kernel spec)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    start = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as e:  # the failing cell's source and traceback, without terminal colours
        pytest.fail(f"{path.name} failed after {time.perf_counter() - start:.0f} s:\n{ANSI.sub('', str(e))}",
                    pytrace=False)
    seconds = time.perf_counter() - start
    print(f"{path.name}: {seconds:.1f} s", file=sys.stderr)
    # what a reader must see: every notebook draws pictures, and the audio ones embed players that play
    # sound data (an inline WAV), not an empty element
    pictures = outputs(nb, "image/png")
    assert len(pictures) >= 2 and all(len(p) > 1000 for p in pictures), f"{path.name} shows too few pictures"
    if path.stem in WITH_PLAYERS:
        players = [h for h in outputs(nb, "text/html") if "<audio" in h]
        assert players and all("data:audio/wav;base64," in h for h in players), f"{path.name} has no players"
