"""Planning a submitted search in a child process, with a memory and a time limit.

:func:`~structsearch.search.context.plan_search` builds the teacher and the student base with
random weights, counts their cost with fvcore and may time the smallest student. Admission caps
every setting that sizes this work, but caps on settings cannot bound what a model's constructor or
fvcore does with them, and the API process serves everyone: one spec must not take its memory or
its threads. So the plan is made in a child process:

* its address space is limited (``RLIMIT_AS``: the interpreter as forked plus
  ``planning_memory_mb``); an allocation past it fails in the child, never in the API;
* it has ``planning_timeout_s`` to answer, then it is killed;
* it sees no GPU (``CUDA_VISIBLE_DEVICES=""``): planning is the API machine's CPU work, and budgets
  measured on ``cuda`` are checked by the workers (as on a CPU-only API machine before);
* ``torch.set_num_threads`` for ``measure.threads`` happens there, not in the API.

A breach is an :class:`~structsearch.errors.AdmissionError` (422) naming the limit. The same child
then opens the Optuna study from its plan (which holds the models, so it stays in the child) once
the API has claimed the study's name: :class:`PlanningChild` talks to it over a pipe in two steps.

Children are forked from a ``forkserver`` that has imported torch, timm and the search code once,
so a submission pays milliseconds for the fork, not seconds of imports.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any

from structsearch import errors
from structsearch.errors import AdmissionError, StructsearchError, one_line
from structsearch.search.spec import StudySpec
from structsearch.search.storage import hide_secrets

#: Imported once by the forkserver, so each planning child starts with them loaded.
PRELOAD = ["structsearch.search.context", "structsearch.search.study"]


class PlanningFailed(RuntimeError):
    """The child could not open the study (a database error, a bug): the operator's to look at."""


def _context() -> multiprocessing.context.BaseContext:
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        return ctx
    return multiprocessing.get_context("spawn")


class PlanningChild:
    """One submission's planning process: ``planned()``, then ``open_study(name, warm_from)``.

    Use as a context manager; leaving it stops the child whatever happened.
    """

    def __init__(self, spec: StudySpec, database_url: str, memory_mb: int, timeout_s: float) -> None:
        self.spec = spec
        self.database_url = database_url
        self.memory_mb = memory_mb
        self.timeout_s = timeout_s
        ctx = _context()
        self._conn, child_conn = ctx.Pipe()
        self._process = ctx.Process(  # type: ignore[attr-defined]  # every concrete context has Process
            target=_child_main,
            args=(child_conn, spec.model_dump(mode="json"), database_url, memory_mb * 2**20),
            daemon=True,
            name="structsearch-planning",
        )
        self._child_conn = child_conn

    def __enter__(self) -> PlanningChild:
        self._process.start()
        self._child_conn.close()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._conn.close()
        if self._process.is_alive():
            self._process.kill()
        self._process.join(5)

    def planned(self) -> None:
        """Wait for the plan; raise the spec's own error, or an :class:`AdmissionError` for a
        spec that needs more memory or time than planning may have."""
        reply = self._receive()
        if reply[0] == "internal":
            raise AdmissionError(f"this spec cannot be planned: {reply[1]}")

    def open_study(self, name: str, warm_from: list[str]) -> None:
        """Have the child create the study ``name`` from its plan (warm start from ``warm_from``)."""
        try:
            self._conn.send(("open", name, warm_from))
            reply = self._receive()
        except StructsearchError as e:  # a project error now is not the spec's: the study did not open
            raise PlanningFailed(f"opening the study failed: {e}") from None
        if reply[0] == "internal":
            raise PlanningFailed(f"opening the study failed: {reply[1]}")

    def _receive(self) -> tuple[Any, ...]:
        """The child's next ``("ok",)`` or ``("internal", text)``; project errors are raised."""
        reply: tuple[Any, ...] | None = None
        try:
            ready = self._conn.poll(self.timeout_s)
            if ready:
                reply = tuple(self._conn.recv())
        except (EOFError, OSError):
            ready = True
        if not ready:
            self._process.kill()
            raise AdmissionError(
                f"planning this spec needs more than {self.timeout_s:g} s (setting STRUCTSEARCH_PLANNING_TIMEOUT_S); "
                "ask for a smaller model or input size"
            )
        if reply is None:  # the child died without a word
            self._process.join(5)
            code = self._process.exitcode
            if code is None or code >= 0:
                raise PlanningFailed(f"the planning process exited with code {code}")
            reply = ("memory", "")  # a signal: the OOM killer's SIGKILL, or an abort on a failed allocation
        if reply[0] == "memory":
            raise AdmissionError(
                f"planning this spec needs more than {self.memory_mb / 1024:g} GB of memory "
                "(setting STRUCTSEARCH_PLANNING_MEMORY_MB); ask for a smaller model, batch or input size"
            )
        if reply[0] == "user":
            cls = getattr(errors, reply[1], None)
            if not (isinstance(cls, type) and issubclass(cls, StructsearchError)):
                cls = StructsearchError
            raise cls(reply[2])
        return reply


def _limit_memory(extra_bytes: int) -> None:
    """Cap the address space at what the process maps now plus ``extra_bytes`` (Linux: statm)."""
    try:
        with open("/proc/self/statm") as f:
            current = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        current = 0
    limit = current + extra_bytes
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _classify(e: BaseException, url: str) -> tuple[str, ...]:
    if isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and "alloc" in str(e).lower()):
        return ("memory",)
    if isinstance(e, StructsearchError):
        return ("user", type(e).__name__, str(e))
    return ("internal", hide_secrets(one_line(e), url))


def _child_main(conn: Connection, spec_data: dict[str, Any], url: str, memory_bytes: int) -> None:
    """The child: plan, say so, then open the study when asked (or exit when the pipe closes)."""
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    _limit_memory(memory_bytes)
    import dataclasses

    from structsearch.search.context import plan_search
    from structsearch.search.spec import parse_study_spec

    try:
        plan = plan_search(parse_study_spec(spec_data))
    except BaseException as e:  # noqa: BLE001 - every failure is reported to the parent
        conn.send(_classify(e, url))
        return
    conn.send(("ok",))
    try:
        _, name, warm_from = conn.recv()
    except (EOFError, OSError):
        return
    try:
        import optuna

        from structsearch.search.study import open_study

        storage = optuna.storages.RDBStorage(url, skip_table_creation=True)
        try:
            named = plan.spec.with_overrides(name=name)
            open_study(dataclasses.replace(plan, spec=named), storage, warm_from=warm_from)
        finally:
            storage.engine.dispose()
    except BaseException as e:  # noqa: BLE001
        conn.send(_classify(e, url))
        return
    conn.send(("ok",))
