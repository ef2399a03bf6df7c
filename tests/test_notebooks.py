"""The notebooks in nbs/ are documentation that runs: each one executes without error, and the committed files
hold the outputs of a full run in order (as fastai's own notebooks do), so that a reader sees what running gives."""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NBS = sorted((Path(__file__).resolve().parents[1] / "nbs").glob("*.ipynb"))


def _code_cells(nb):
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def _errors(nb):
    return [o for cell in _code_cells(nb) for o in cell.get("outputs", []) if o.get("output_type") == "error"]


def test_there_are_notebooks():
    assert [nb.name for nb in NBS][:3] == ["01_sequence_classification.ipynb", "02_token_classification.ipynb",
                                           "03_masked_lm.ipynb"]


@pytest.mark.parametrize("path", NBS, ids=lambda p: p.name)
def test_committed_notebook_holds_the_outputs_of_one_full_run(path):
    nb = nbformat.read(path, as_version=4)
    counts = [cell.get("execution_count") for cell in _code_cells(nb)]
    assert counts == list(range(1, len(counts) + 1)), f"{path.name}: execute it top to bottom and save it ({counts})"
    assert not _errors(nb)
    assert any(cell.get("outputs") for cell in _code_cells(nb))


@pytest.mark.parametrize("path", NBS, ids=lambda p: p.name)
def test_notebook_gets_its_data_with_example_data(path):
    # a fresh clone has no ../shared/data: example_data falls back to fastai's data directory or a download
    sources = [cell.source for cell in _code_cells(nbformat.read(path, as_version=4))]
    assert any("example_data(" in source for source in sources)
    assert not [source for source in sources if "shared/data" in source]


@pytest.mark.parametrize("path", NBS, ids=lambda p: p.name)
def test_notebook_finds_a_learning_rate_with_lr_find(path):
    sources = "\n".join(cell.source for cell in _code_cells(nbformat.read(path, as_version=4)))
    assert "lr_find(" in sources


@pytest.mark.parametrize("path", NBS, ids=lambda p: p.name)
def test_notebook_runs(path):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    assert not _errors(nb)
