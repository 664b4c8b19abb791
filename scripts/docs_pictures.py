"""What the scripts that draw the docs' pictures of the built-in model share: their command
line and the model. Imported by the scripts beside it, which run as files
(``.venv/bin/python scripts/render_pictures.py``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cnnviz import LoadedModel, ModelRegistry


def pictures_setup(doc: str, **numbers: int) -> tuple[argparse.Namespace, LoadedModel]:
    """The command line of a script whose docstring is ``doc``: ``--out`` (default docs/img,
    made if missing) and ``--NAME`` for each of ``numbers``, an integer defaulting to its
    value; and the built-in ``shapes`` model."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    for name, default in numbers.items():
        parser.add_argument(f"--{name}", type=int, default=default)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    return args, ModelRegistry.from_file(None).get("shapes")
