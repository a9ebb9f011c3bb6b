"""Pipelines and stages: what a user declares, and the checks on the graph.

A stage is a plain function, or a class with an optional ``setup()`` and a
``__call__``; the decorators register it and hand it back unchanged, so it
stays an ordinary, testable Python callable. The graph is checked as it is
built where that is possible (an upstream that is a Python object must exist
already) and as a whole by :meth:`Pipeline.validate` before anything runs.
"""

from __future__ import annotations

import inspect
import os
import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from .envs import interpreter, requirements_of
from .errors import GraphError, StageDefinitionError
from .resources import Resources
from .stage import Route, Stage, check_stage
from .validation import annotations

if TYPE_CHECKING:
    from .result import RunResult

Upstream = "str | Callable[..., Any] | type"


class Pipeline:
    """A named graph of stages. Declare stages with :meth:`stage` and :meth:`reduce`."""

    def __init__(self, name: str) -> None:
        if not name or not isinstance(name, str):
            raise StageDefinitionError("a pipeline needs a non-empty name")
        self.name = name
        self._stages: dict[str, Stage] = {}
        self._names: dict[int, str] = {}  # id(user callable) -> stage name
        caller = sys._getframe(1).f_globals
        # Where it was declared, and the function that built it: see conveyor.origin.
        self.defined_in: tuple[str | None, str | None] = (caller.get("__name__"),
                                                          caller.get("__file__"))
        self.recipe: tuple[Callable[..., Pipeline], dict[str, Any]] | None = None

    def built_by(self, factory: Callable[..., "Pipeline"], **arguments: Any) -> "Pipeline":
        """Record that ``factory(**arguments)`` builds this pipeline; returns it.

        For a pipeline made by a module-level function rather than held in a
        module's attribute: ``conveyor retry`` and ``status --plan`` load it
        again by calling ``factory`` (see :mod:`conveyor.origin`). ``arguments``
        must be plain JSON data.
        """
        self.recipe = (factory, dict(arguments))
        return self

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, stages={list(self._stages)})"

    # -- declaring -----------------------------------------------------------

    def stage(self, target: Callable[..., Any] | None = None, *,
              after: Upstream | Sequence[Upstream] | None = None,
              when: Callable[[Any], bool] | None = None,
              name: str | None = None,
              cpus: float = 1.0, ram: int | str | None = None, gpus: float = 0.0,
              threads: int | None = None, resources: Mapping[str, float] | None = None,
              concurrency: int | None = None, batch_size: int | None = None, retries: int = 0, retry_backoff: float = 1.0,
              timeout: float | None = None, env: Mapping[str, str] | None = None,
              version: str | None = None, min_workers: int = 0,
              idle_timeout: float | None = None, batch_wait: float = 0.05,
              prefetch: int = 2,
              requirements: str | os.PathLike[str] | Sequence[str] | None = None,
              python: str | os.PathLike[str] | None = None,
              side: Upstream | Sequence[Upstream] | None = None) -> Any:
        """Register a function or class as a stage; usable as ``@pipe.stage`` or ``@pipe.stage(...)``.

        Args:
            after: the upstream stage(s), as the decorated objects or names;
                none for the first stage, which takes the run's inputs.
            when: a predicate on an upstream output; the item comes here only if it is true.
            name: the stage's name (default: the function or class name).
            cpus, ram, gpus, threads: what each worker holds; ``threads``
                (default ``ceil(cpus)``) pins OMP/MKL/OpenBLAS/torch threads.
            resources: custom Ray resources each worker holds, e.g. ``{"node_b": 1}``:
                its actors go only to nodes that declare them (``ray start
                --resources``). Only a Ray cluster has them: with another executor
                the run fails its budget check, naming the resource.
            concurrency: the most workers this stage may have at once (its max_workers).
            min_workers: workers kept alive (set up, warm) even with nothing to do.
            idle_timeout: seconds an idle worker beyond ``min_workers`` is kept before it
                is stopped (a GPU worker gives its device back).
            batch_size: call the stage with lists of up to this many values.
            batch_wait: seconds a partial batch waits for more values before it runs.
            prefetch: for a class stage with a ``load(self, value)`` method: how many
                batches (or items) a background thread of each worker loads ahead of
                the calls, so reading inputs overlaps the model; ``__call__`` gets
                what ``load`` returned. Bounds the memory loaded values hold.
            retries, retry_backoff, timeout: per item; backoff doubles each retry.
            env: extra environment variables for the stage's workers.
            version: bump to force a recompute when the code did not change.
            requirements: pip requirement strings, or the path of a requirements
                file: the stage's workers run in a virtual environment with these
                installed, built once and cached (see :mod:`conveyor.envs`).
            python: an interpreter (or virtual environment directory) for the
                stage's workers; with ``requirements``, the base of the environment.
            side: stages this one reads while it runs, with ``ctx.side(name)``: a
                reduce's value, or any other stage's outputs as a mapping key ->
                output. The stage waits until they are finished; their results are
                part of what it computes, so a rerun that changes them reruns it.
        """
        def register(obj: Callable[..., Any]) -> Callable[..., Any]:
            self._add(obj, after=after, when=when, name=name,
                      resources=(cpus, ram, gpus, threads, resources),
                      concurrency=concurrency, batch_size=batch_size, retries=retries,
                      retry_backoff=retry_backoff, timeout=timeout, env=env,
                      version=version, reduce=False, min_workers=min_workers,
                      idle_timeout=idle_timeout, batch_wait=batch_wait, prefetch=prefetch,
                      requirements=requirements, python=python, side=side)
            return obj

        return register(target) if target is not None else register

    def reduce(self, target: Callable[..., Any] | None = None, *,
               after: Upstream | Sequence[Upstream],
               when: Callable[[Any], bool] | None = None,
               name: str | None = None,
               cpus: float = 1.0, ram: int | str | None = None, gpus: float = 0.0,
               threads: int | None = None, resources: Mapping[str, float] | None = None,
               retries: int = 0, retry_backoff: float = 1.0,
               timeout: float | None = None, env: Mapping[str, str] | None = None,
               version: str | None = None,
               requirements: str | os.PathLike[str] | Sequence[str] | None = None,
               python: str | os.PathLike[str] | None = None,
               side: Upstream | Sequence[Upstream] | None = None) -> Any:
        """Register a stage that runs once over every output of its upstreams.

        The function receives an iterator of the upstream values (ordered by
        key) and returns one value, keyed by the stage's name. It runs when
        nothing upstream can produce more, over the items that succeeded.
        """
        def register(obj: Callable[..., Any]) -> Callable[..., Any]:
            self._add(obj, after=after, when=when, name=name,
                      resources=(cpus, ram, gpus, threads, resources),
                      concurrency=1, batch_size=None, retries=retries,
                      retry_backoff=retry_backoff, timeout=timeout, env=env,
                      version=version, reduce=True, requirements=requirements,
                      python=python, side=side)
            return obj

        return register(target) if target is not None else register

    def group(self, target: Callable[..., Any] | None = None, *,
              after: Upstream | Sequence[Upstream],
              by: Callable[[Any], Any], partitions: int = 8,
              when: Callable[[Any], bool] | None = None,
              name: str | None = None,
              cpus: float = 1.0, ram: int | str | None = None, gpus: float = 0.0,
              threads: int | None = None, resources: Mapping[str, float] | None = None,
              concurrency: int | None = None, retries: int = 0, retry_backoff: float = 1.0,
              timeout: float | None = None, env: Mapping[str, str] | None = None,
              version: str | None = None,
              requirements: str | os.PathLike[str] | Sequence[str] | None = None,
              python: str | os.PathLike[str] | None = None,
              side: Upstream | Sequence[Upstream] | None = None) -> Any:
        """Register a stage that runs once per distinct key over the values with that key.

        ``by(value)`` gives an upstream value's key (a string, or an int taken
        as its string). The function is called as ``fn(key, values)`` (or
        ``fn(key, values, ctx)``) with an iterator over every value with that
        key, in the order of their item keys, and returns one output keyed by
        the group key, or yields several (``key/0``, ``key/1`` ...).

        Like a reduce it starts once everything above it is finished. The keys
        are spread over ``partitions`` by a stable hash; each partition is one
        item of the stage, run by a worker with the stage's resources, retries
        and timeout, as many at once as the budget allows. A key whose call
        raises fails its partition, naming the key; the others go on. A rerun
        runs again only the partitions whose values changed.
        """
        if not callable(by):
            raise StageDefinitionError(f"group {name or getattr(target, '__name__', '?')!r}: "
                                       f"by= must be a function of a value, got {by!r}")

        def register(obj: Callable[..., Any]) -> Callable[..., Any]:
            self._add(obj, after=after, when=when, name=name,
                      resources=(cpus, ram, gpus, threads, resources),
                      concurrency=concurrency, batch_size=None, retries=retries,
                      retry_backoff=retry_backoff, timeout=timeout, env=env,
                      version=version, reduce=False, requirements=requirements,
                      python=python, side=side, by=by, partitions=partitions)
            return obj

        return register(target) if target is not None else register

    def _add(self, obj: Callable[..., Any], *, after: Any, name: str | None,
             reduce: bool, **options: Any) -> None:
        if not callable(obj):
            raise StageDefinitionError(f"a stage must be a function or a class, got {obj!r}")
        stage_name = name or getattr(obj, "__name__", None)
        if not stage_name or not isinstance(stage_name, str):
            raise StageDefinitionError(f"cannot name the stage {obj!r}; pass name=")
        if stage_name in self._stages:
            raise StageDefinitionError(
                f"pipeline {self.name!r} already has a stage named {stage_name!r}")
        if "@" in stage_name or "/" in stage_name:
            raise StageDefinitionError(f"stage name {stage_name!r} must not contain '@' or '/'")
        try:
            options["resources"] = Resources.declare(*options["resources"])
        except StageDefinitionError as exc:
            raise StageDefinitionError(f"stage {stage_name!r}: {exc}") from None
        upstream = tuple(self._resolve(u, stage_name) for u in _as_list(after))
        if len(set(upstream)) != len(upstream):
            raise GraphError(f"stage {stage_name!r} names the same upstream twice")
        options["side"] = tuple(self._resolve(s, stage_name) for s in _as_list(options["side"]))
        options["env"] = dict(options["env"] or {})
        try:
            options["requirements"] = requirements_of(options["requirements"])
            options["python"] = interpreter(options["python"])
        except StageDefinitionError as exc:
            raise StageDefinitionError(f"stage {stage_name!r}: {exc}") from None
        call = obj.__call__ if inspect.isclass(obj) else obj  # type: ignore[operator]
        options["annotations"] = annotations(call, inspect.isclass(obj))
        stage = Stage(name=stage_name, target=obj, upstream=upstream, reduce=reduce, **options)
        check_stage(stage)
        self._stages[stage_name] = stage
        self._names[id(obj)] = stage_name

    def tuned(self, stage: str, **options: Any) -> "Pipeline":
        """A copy of this pipeline with some of ``stage``'s scheduling options changed.

        For trying another ``batch_size``, ``concurrency``, ``batch_wait``, ``prefetch``,
        ``min_workers``, ``idle_timeout``, ``retries`` or ``timeout`` without
        editing the stage; the copy is a different pipeline (its fingerprints
        differ where the options do).
        """
        allowed = {"batch_size", "concurrency", "batch_wait", "prefetch", "min_workers",
                   "idle_timeout", "retries", "retry_backoff", "timeout"}
        unknown = set(options) - allowed
        if unknown:
            raise StageDefinitionError(f"tuned() changes {', '.join(sorted(allowed))}; "
                                       f"not {', '.join(sorted(unknown))}")
        changed = replace(self[stage], **options)
        check_stage(changed)
        copy = Pipeline.__new__(Pipeline)
        copy.__dict__.update(self.__dict__)
        copy._stages = {**self._stages, stage: changed}
        copy._names = dict(self._names)
        return copy

    def _resolve(self, ref: Any, for_stage: str) -> str:
        if isinstance(ref, str):
            return ref  # may name a stage declared later; validate() checks it
        name = self._names.get(id(ref))
        if name is None:
            raise GraphError(f"stage {for_stage!r}: {ref!r} is not a stage of pipeline "
                             f"{self.name!r}")
        return name

    # -- the graph ---------------------------------------------------------------

    @property
    def stages(self) -> dict[str, Stage]:
        """The stages by name, in declaration order."""
        return dict(self._stages)

    def __getitem__(self, name: str) -> Stage:
        try:
            return self._stages[name]
        except KeyError:
            raise KeyError(f"pipeline {self.name!r} has no stage {name!r}") from None

    def validate(self) -> None:
        """Raise a :class:`GraphError` naming the stage if the graph cannot run."""
        if not self._stages:
            raise GraphError(f"pipeline {self.name!r} has no stages")
        for stage in self._stages.values():
            for up in stage.upstream:
                if up not in self._stages:
                    raise GraphError(f"stage {stage.name!r} comes after {up!r}, "
                                     f"which is not a stage of pipeline {self.name!r}")
        roots = [s.name for s in self._stages.values() if not s.upstream]
        if len(roots) > 1:
            raise GraphError(
                f"stages {', '.join(map(repr, roots))} all have no upstream; only one "
                f"stage can take the run's inputs; give the others after=")
        self.order()  # raises on a cycle
        if not roots:
            raise GraphError(f"pipeline {self.name!r} has no first stage (one without after=)")
        for stage in self._stages.values():
            for side in stage.side:
                if side not in self._stages:
                    raise GraphError(f"stage {stage.name!r} reads side input {side!r}, "
                                     f"which is not a stage of pipeline {self.name!r}")
                if side in self.descendants(stage.name):
                    raise GraphError(f"stage {stage.name!r} reads side input {side!r}, which "
                                     f"is below it: it would wait for itself")
        self._check_waits()

    def _check_waits(self) -> None:
        """A stage waits for its upstreams and its side inputs: no stage may end up
        waiting for itself through them."""
        state: dict[str, int] = {}  # 1: on the path, 2: checked

        def visit(name: str, path: list[str]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                cycle = " -> ".join(path[path.index(name):] + [name])
                raise GraphError(f"stages wait for each other through side inputs: {cycle}")
            state[name] = 1
            stage = self._stages[name]
            for needed in (*stage.upstream, *stage.side):
                visit(needed, path + [name])
            state[name] = 2

        for name in self._stages:
            visit(name, [])

    def root(self) -> Stage:
        """The stage that takes the run's inputs."""
        self.validate()
        return next(s for s in self._stages.values() if not s.upstream)

    def order(self) -> list[str]:
        """Stage names, each after all of its upstreams; raises on a cycle."""
        done: list[str] = []
        state: dict[str, int] = {}  # 1: on the path, 2: placed

        def visit(name: str, path: list[str]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                cycle = path[path.index(name):] + [name]
                raise GraphError(f"the stages form a cycle: {' -> '.join(cycle)}")
            state[name] = 1
            for up in self._stages[name].upstream:
                if up in self._stages:
                    visit(up, path + [name])
            state[name] = 2
            done.append(name)

        for name in self._stages:
            visit(name, [])
        return done

    def downstream(self, name: str) -> list[Stage]:
        """Stages that take ``name``'s outputs, in declaration order."""
        return [s for s in self._stages.values() if name in s.upstream]

    def routes(self, name: str) -> tuple[Route, ...]:
        """Where outputs of ``name`` can go, with each edge's condition."""
        return tuple(Route(s.name, s.when, s.reduce, s.by, s.partitions)
                     for s in self.downstream(name))

    def ancestors(self, name: str) -> set[str]:
        """Every stage upstream of ``name``, transitively."""
        seen: set[str] = set()
        todo = list(self._stages[name].upstream)
        while todo:
            up = todo.pop()
            if up not in seen:
                seen.add(up)
                todo.extend(self._stages[up].upstream)
        return seen

    def descendants(self, name: str) -> set[str]:
        """Every stage downstream of ``name``, transitively."""
        seen: set[str] = set()
        todo = [s.name for s in self.downstream(name)]
        while todo:
            down = todo.pop()
            if down not in seen:
                seen.add(down)
                todo.extend(s.name for s in self.downstream(down))
        return seen

    # -- running -------------------------------------------------------------------

    def run(self, inputs: Iterable[Any] | None = None, *, run_dir: str | os.PathLike[str],
            executor: str = "local", cpus: float | None = None, ram: int | str | None = None,
            gpus: int | None = None, force: Iterable[str] = (), retry: bool | Iterable[str] = True,
            progress: bool = False, bench: bool = False, address: str | None = None,
            store: str | None = None, detach: bool = False) -> "RunResult":
        """Run the pipeline over ``inputs`` and return the run's result.

        Args:
            inputs: JSON-serialisable values or :class:`~conveyor.Item`; a string
                is its own key. ``None`` resumes the inputs the run dir already has.
            run_dir: where the ledger, values and logs live; running again on
                the same directory resumes and reuses finished work.
            executor: ``"local"`` (worker processes, the default), ``"inline"``
                (in this process, one item at a time, for debugging) or ``"ray"``
                (Ray actors; needs ``pip install 'conveyor[ray]'``).
            cpus, ram, gpus: override the detected machine budget (with a Ray
                ``address``: the cluster's total CPUs, memory and GPUs).
            force: stages to recompute even if unchanged.
            retry: which failed items get a fresh set of retries: all (True, the
                default), none (False), or those of the named stages.
            progress: show live per-stage progress (a table on a terminal, else
                periodic lines on stderr).
            bench: benchmark mode: print and store (``bench.json``) per-stage wall
                time, items/s, mean/p95 item time, peak worker RSS and GPU memory.
            address: the Ray cluster to join (``"auto"``, ``"ray://host:10001"``);
                None starts a local Ray instance. Only with ``executor="ray"``.
            store: where large values live, as an fsspec URL or path (default:
                the run directory); recorded in the run directory for later runs.
            detach: run in a driver process of its own that outlives this one
                (see :mod:`conveyor.detached`): returns once it holds the run, a
                result whose ``pid``, ``status()``, ``wait()`` and ``stop()`` follow
                it, as ``open_run(run_dir)`` does from any process. The inputs are
                taken in here and sent along; read the results with ``outputs()``.

        Raises:
            PipelineError: the definition cannot run (before any work), or a
                stage broke its contract while running.
            InputError: duplicate keys or values that are not JSON.
            RunLockedError: another driver holds ``run_dir``.
            RunInterrupted: SIGINT/SIGTERM stopped the run; rerun to resume.
            ExecutorUnavailable: the executor cannot be used here.
            StoreError: ``store`` differs from the one the run directory records.
        """
        # The engine imports this module (stages, graphs): importing it here, when a
        # run starts, keeps `import conveyor` light and the import graph one-way.
        from .engine.batch import run_pipeline

        if detach:
            from .detached import detach as start_detached  # as run_pipeline, above

            return start_detached(self, inputs, run_dir, dict(
                executor=executor, cpus=cpus, ram=ram, gpus=gpus, force=tuple(force),
                retry=retry if isinstance(retry, bool) else tuple(retry), progress=progress,
                bench=bench, address=address, store=store))
        return run_pipeline(self, inputs, run_dir=run_dir, executor=executor, cpus=cpus,
                            ram=ram, gpus=gpus, force=force, retry=retry, progress=progress,
                            bench=bench, address=address, store=store)


def _as_list(after: Any) -> list[Any]:
    if after is None:
        return []
    if isinstance(after, (list, tuple)):
        return list(after)
    return [after]
