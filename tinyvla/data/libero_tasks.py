"""Which instructions belong to which LIBERO suite, so a recipe can train on one suite of a mixed dataset.

`libero_tasks.json` was read from hf-libero's benchmark definitions (`tinyvla.envs.libero.list_tasks`) and ships with
the package, so filtering needs no simulator install. `physical-intelligence/libero` stores exactly these strings.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from tinyvla.envs.suites import LIBERO_ALL
from tinyvla.errors import UserError


@lru_cache(maxsize=1)
def _table() -> dict[str, list[str]]:
    return json.loads((Path(__file__).with_name("libero_tasks.json")).read_text())


def suite_tasks(suite: str) -> list[str]:
    table = _table()
    if suite == "libero_all":
        return [t for s in LIBERO_ALL for t in table[s]]
    if suite not in table:
        raise UserError(f"unknown LIBERO suite {suite!r}; choose one of {', '.join([*table, 'libero_all'])}")
    return list(table[suite])
