"""Typed stage steps: each stage defined once, run in order by the CLI, wrapped by Prefect tasks.

A step is a plain function ``fn(inputs, *sections, storage_options=None, **runtime) -> result``
made a ``Step`` with ``@step("section", ...)``:

* ``inputs`` is a frozen dataclass holding exactly what, besides settings, decides the result:
  URIs of immutable versions, model tags, counts. A field whose *content* can change under the
  same value (a labels folder that grows) says how to fingerprint it:
  ``field(metadata=by_content(labels.labels_fingerprint))``.
* ``sections`` are the ``Settings`` attributes it reads, in the order ``@step`` names them.
* the result is a frozen dataclass (or a plain value) that round-trips through ``to_json`` and
  ``from_json``; it names what the step wrote by URI and never holds frames or arrays.

So ``Step.determinants(inputs, settings)`` is everything that decides a result, and the task
layer hashes it into the cache key (``tasks.runtime.step_cache_key``): no task lists its own key.
``Step.written(result)`` names the files a result points at, so a cached result whose files have
vanished is computed again. ``Step.run(inputs, settings)`` picks the sections out of a whole
``Settings``; calling the step itself takes them one by one (what tests do).

One module per stage: ``ingest``, ``embed`` (plan, shard, publish), ``curate`` (finetune,
quality, cluster, types, filter, publish, log), ``train`` (prepare, train) and ``watch``. Each
stage module ends with ``run_<stage>``: its steps in order, which is what the CLI runs; the
flows in ``flows/`` wire the same steps as tasks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields, is_dataclass
from typing import Any, Generic, ParamSpec, TypeVar

from pydantic import BaseModel, TypeAdapter

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

CONTENT_KEY = "housegan.step.fingerprint"
Fingerprint = Callable[[Any, Mapping[str, Any] | None], str]


def by_content(fingerprint: Fingerprint) -> dict[str, Fingerprint]:
    """Field metadata: the cache key reads this field by ``fingerprint(value, storage_options)``."""
    return {CONTENT_KEY: fingerprint}


@functools.cache
def _adapter(kind: Any) -> TypeAdapter:
    return TypeAdapter(kind)


def to_json(value: Any) -> Any:
    """A step's inputs or result (a dataclass, pydantic model or plain value) as JSON values."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return _adapter(type(value)).dump_python(value, mode="json")


def from_json(kind: type[T] | Any, data: Any) -> T:
    """The inverse of ``to_json``: ``from_json(ClusterResult, to_json(result)) == result``."""
    return _adapter(kind).validate_python(data)


def fingerprint(inputs: Any, storage_options: Mapping[str, Any] | None = None) -> Any:
    """``to_json(inputs)`` with every ``by_content`` field replaced by its content fingerprint."""
    data = to_json(inputs)
    if is_dataclass(inputs):
        for spec in fields(inputs):
            read = spec.metadata.get(CONTENT_KEY)
            if read is not None:
                data[spec.name] = read(getattr(inputs, spec.name), storage_options)
    return data


class Step(Generic[P, R]):
    """A stage step: the function, the settings sections it reads and what its result wrote."""

    def __init__(
        self,
        fn: Callable[P, R],
        sections: tuple[str, ...],
        version: str,
        writes: Callable[[R], Iterable[str | None]] | None,
    ) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.name = fn.__name__
        self.sections = sections
        self.version = version  # bump when the same inputs and settings give another result
        self.writes = writes

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Step({self.name}, sections={self.sections})"

    def config(self, settings: Any) -> tuple[Any, ...]:
        """The step's settings sections, picked out of a whole ``Settings``."""
        return tuple(getattr(settings, name) for name in self.sections)

    def run(self, inputs: Any, settings: Any, **runtime: Any) -> R:
        """Run on ``inputs`` with the sections of ``settings`` (runtime: storage_options, ...)."""
        return self.fn(inputs, *self.config(settings), **runtime)  # type: ignore[call-arg]

    def determinants(
        self, inputs: Any, settings: Any, storage_options: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Everything that decides the result: the step, its inputs and its settings sections."""
        return {
            "step": self.name,
            "version": self.version,
            "inputs": fingerprint(inputs, storage_options),
            "settings": {name: _determining(getattr(settings, name)) for name in self.sections},
        }

    def written(self, result: R) -> list[str]:
        """The URIs ``result`` points at (to check that a cached result is still there)."""
        if self.writes is None or result is None:
            return []
        return [uri for uri in self.writes(result) if uri]


def step(
    *sections: str,
    version: str = "1",
    writes: Callable[[Any], Iterable[str | None]] | None = None,
) -> Callable[[Callable[P, R]], Step[P, R]]:
    """Make ``fn(inputs, *sections, **runtime)`` a ``Step`` reading those settings sections."""

    def make(fn: Callable[P, R]) -> Step[P, R]:
        return Step(fn, sections, version, writes)

    return make


def _determining(section: Any) -> Any:
    """A settings section without the fields that cannot change a result (retry delays)."""
    from pydantic import BaseModel

    from housegan.config import determining

    return determining(section) if isinstance(section, BaseModel) else to_json(section)
