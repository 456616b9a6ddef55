"""bigseg's own settings (``bigseg.yaml`` beside this file), merged under Dask's configuration once, when bigseg is
imported, so that ``dask.config.get("bigseg....")`` sees them everywhere and a user's config overrides them (they are
never written to the user's home)."""
from __future__ import annotations

import os

import dask.config
import yaml

DEFAULTS_FILE = os.path.join(os.path.dirname(__file__), "bigseg.yaml")


def _load() -> dict:
    with open(DEFAULTS_FILE) as f:
        defaults = yaml.safe_load(f)
    dask.config.update_defaults(defaults)
    return defaults


DEFAULTS = _load()
