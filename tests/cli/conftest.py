"""The cli tier runs saft-tiny in this process on the CPU (fixtures from tests.fixtures.model)."""

from tests.fixtures.model import _cpu_and_threads, _saft_tiny_once, saft_tiny, shapes_dir, shapes_eval_dir

__all__ = ["_cpu_and_threads", "_saft_tiny_once", "saft_tiny", "shapes_dir", "shapes_eval_dir"]
