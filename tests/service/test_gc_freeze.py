"""service/gc_freeze.py through the repository: what a load leaves is frozen out of the
collector's generations (no full collection walks the models again), and what an unload
releases is still collected, not kept in the permanent generation."""

from __future__ import annotations

import gc
import shutil
import weakref

import svc_factory

from service.repository import ModelRepository


def tracked(obj) -> bool:
    """Whether ``obj`` is in one of the collector's generations (gc.get_objects leaves the
    permanent generation out)."""
    return any(o is obj for o in gc.get_objects())


def test_loaded_runtimes_are_frozen(scratch_repo):
    repo = ModelRepository(scratch_repo, poll_interval=0)
    repo.load_now()
    runtime = repo.get("fraud")
    assert gc.is_tracked(runtime)
    assert gc.get_freeze_count() > 0
    assert not tracked(runtime)


def test_an_unloaded_version_is_collected_not_kept_frozen(scratch_repo):
    repo = ModelRepository(scratch_repo, poll_interval=0)
    repo.load_now()
    path = svc_factory.publish(scratch_repo, "tabular", seed=11)
    repo.refresh()
    runtime = repo.get("fraud", 2)
    model = runtime.model  # a Keras model: reference cycles, so only a collection frees it
    assert not tracked(runtime) and not tracked(model)  # frozen with the load
    gone = [weakref.ref(runtime), weakref.ref(model)]
    del runtime, model
    assert all(ref() is not None for ref in gone)  # the repository still serves them
    shutil.rmtree(path)
    repo.refresh()  # unloads version 2: the settle after it must collect its cycles
    assert all(ref() is None for ref in gone)
    assert repo.get("fraud").version == 1
