"""The exploration notebook runs top to bottom and shows its pictures."""
import os
import shutil

import pytest

NOTEBOOKS = os.path.join(os.path.dirname(__file__), "..", "notebooks")


def _execute(name: str, folder) -> list:
    """Run a notebook of notebooks/ in ``folder``; its cells' PNG outputs."""
    import nbformat
    from nbclient import NotebookClient
    shutil.copy(os.path.join(NOTEBOOKS, name), folder / name)
    nb = nbformat.read(folder / name, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})]


@pytest.mark.slow
def test_explore_notebook_runs_and_draws(tmp_path):
    pictures = _execute("explore.ipynb", tmp_path)
    assert len(pictures) == 4  # stages, QC overlay, labels, table plots
    assert os.path.exists(tmp_path / "explore-demo.zarr" / "labels" / "nuclei" / "measurements.parquet")


@pytest.mark.slow
def test_wholeslide_notebook_previews_dry_runs_segments_and_plots(tmp_path):
    import pandas as pd
    import zarr
    pictures = _execute("wholeslide.ipynb", tmp_path)
    assert len(pictures) == 4  # thumbnail with the region, two previews, labels over the slide, table plots
    labels = tmp_path / "wholeslide-demo.zarr" / "labels" / "nuclei"
    meta = zarr.open_group(str(labels), mode="r").attrs["bigseg"]
    assert meta["blocks_background"] > 0  # glass blocks were skipped
    assert len(pd.read_parquet(labels / "measurements.parquet")) == meta["objects"] > 1000


@pytest.mark.slow
def test_analysis_notebook_measures_foci_per_nucleus_colocalization_neighbours_and_tracks(tmp_path):
    import pandas as pd
    pictures = _execute("analysis.ipynb", tmp_path)
    assert len(pictures) == 4  # size and shape, foci/colocalization/neighbours, foci over nuclei, tracks
    labels = tmp_path / "analysis-demo.zarr" / "labels"
    nuclei = pd.read_parquet(labels / "nuclei" / "measurements.parquet")
    foci = pd.read_parquet(labels / "foci" / "measurements.parquet")
    assert nuclei["n_foci"].sum() == (foci["parent_nuclei"] > 0).sum() > 500
    assert {"solidity", "pearson_c0_c2", "nearest_neighbour_distance"} <= set(nuclei.columns)
    tracks = pd.read_parquet(tmp_path / "analysis-movie.zarr" / "labels" / "nuclei" / "tracks.parquet")
    assert len(tracks) > 20 and (tracks["length"] > 5).sum() > 10
