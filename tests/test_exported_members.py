"""The public API is curated: __all__ is sorted, complete, and every name resolves."""

import mqtt_tasks


def test_all_is_sorted_and_unique() -> None:
    names = [n for n in mqtt_tasks.__all__ if n != "__version__"]
    assert names == sorted(names)
    assert len(set(mqtt_tasks.__all__)) == len(mqtt_tasks.__all__)


def test_every_public_name_is_exported() -> None:
    public = {name for name in dir(mqtt_tasks) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(mqtt_tasks, name)).__name__ == "module"}
    assert public - modules == set(mqtt_tasks.__all__) - {"__version__"}


def test_every_exported_name_resolves() -> None:
    for name in mqtt_tasks.__all__:
        assert getattr(mqtt_tasks, name) is not None


def test_a_worker_does_not_import_pydantic_or_asyncio() -> None:
    """The per-message path is pydantic-free, and asyncio is loaded with the first async task
    only: together about 7.5 MB an idle sync worker does not carry (docs/benchmarks.md)."""
    import subprocess
    import sys

    code = ("import sys, mqtt_tasks.cli, mqtt_tasks.worker, mqtt_tasks.app; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'asyncio')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
