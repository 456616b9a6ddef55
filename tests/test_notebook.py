"""The exploration notebook runs top to bottom and shows its pictures."""
import os
import shutil

import pytest

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "notebooks", "explore.ipynb")


@pytest.mark.slow
def test_explore_notebook_runs_and_draws(tmp_path):
    import nbformat
    from nbclient import NotebookClient
    shutil.copy(NOTEBOOK, tmp_path / "explore.ipynb")
    nb = nbformat.read(tmp_path / "explore.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    pictures = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                if "image/png" in o.get("data", {})]
    assert len(pictures) == 4  # stages, QC overlay, labels, table plots
    assert os.path.exists(tmp_path / "explore-demo.zarr" / "labels" / "nuclei" / "measurements.parquet")
