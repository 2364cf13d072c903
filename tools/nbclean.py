"""Strip a chapter notebook for committing: no outputs or execution counts, except in the cells nbval
checks (first line ``# NBVAL_CHECK_OUTPUT``), whose outputs are copied from an executed copy.

    python tools/nbclean.py notebooks/quickstart.ipynb --executed _build/papermill

(`make test` leaves executed copies in _build/papermill/.)
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

MARK = "# NBVAL_CHECK_OUTPUT"


def checked(cell: dict) -> bool:
    return cell["cell_type"] == "code" and "".join(cell["source"]).lstrip().startswith(MARK)


def clean(path: Path, executed: Path | None) -> None:
    nb = json.loads(path.read_text())
    done = json.loads(executed.read_text()) if executed and executed.exists() else None
    done_checked = [c for c in done["cells"] if checked(c)] if done else []
    i = 0
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        cell["metadata"].pop("execution", None)
        if checked(cell):  # nbval compares only cells that were run: keep a count with the outputs
            if done_checked:
                cell["outputs"] = [{k: v for k, v in o.items() if k != "execution_count"}
                                   for o in done_checked[i]["outputs"]]
            cell["execution_count"] = i + 1
            i += 1
        else:
            cell["outputs"], cell["execution_count"] = [], None
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("notebooks", nargs="+", type=Path)
    p.add_argument("--executed", type=Path, default=None, help="folder of executed copies (same names)")
    args = p.parse_args()
    for nb in args.notebooks:
        clean(nb, args.executed / nb.name if args.executed else None)


if __name__ == "__main__":
    main()
