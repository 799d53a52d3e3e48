"""Import a script of benchmarks/ in a test: the scripts import their siblings by bare name (`from faces import ...`),
so benchmarks/ is on sys.path while the script loads, and only then."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def import_benchmark(name: str) -> ModuleType:
    """benchmarks/``name``.py as a module."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))
