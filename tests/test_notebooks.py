"""The notebooks in nbs/ are documentation that runs: each one executes without error."""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NBS = sorted((Path(__file__).resolve().parents[1] / "nbs").glob("*.ipynb"))


def test_there_are_notebooks():
    assert [nb.name for nb in NBS][:2] == ["01_sequence_classification.ipynb", "02_token_classification.ipynb"]


@pytest.mark.parametrize("path", NBS, ids=lambda p: p.name)
def test_notebook_runs(path):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for cell in nb.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
