"""One declaration per public function, and plans any driver can run.

Each public function is declared once in ``cacheorm.crud`` (its plan); ``co.X``,
``co.ops.X``, the ``__all__`` lists and the mypy plugin derive from it. Plans
never sleep or call user code themselves: they yield ``Sleep`` and ``Call``
instructions, which the synchronous drivers carry out here and an asynchronous
driver (sketched below, as the engine's docstring describes it) awaits.
"""

from __future__ import annotations

import asyncio
import inspect
import pydoc
import time

import pytest

import cacheorm as co
from cacheorm import crud
from cacheorm.backends.base import Cas
from cacheorm.engine import DECLARED, Call, Plan, Sleep, Step, dispatch
from tests.records import COUNTER, PERSON, Counter, Person

# ------------------------------------------------------------------ declared once


def test_every_function_and_its_op_take_the_same_parameters() -> None:
    for name in crud.__all__:
        declared = inspect.signature(DECLARED[name].plan).parameters
        assert inspect.signature(getattr(co, name)).parameters == declared, name
        assert inspect.signature(getattr(co.ops, name)).parameters == declared, name


def test_the_public_lists_name_exactly_the_declared_functions() -> None:
    import mypy.types  # noqa: F401  # first, as in mypy: mypy.expandtype imports it circularly

    from cacheorm import mypy as plugin

    declared = set(DECLARED)
    assert set(crud.__all__) == declared
    assert {name for name in co.__all__ if name in declared} == declared
    assert all(getattr(co, name) is getattr(crud, name) for name in declared)
    assert set(co.ops.__all__) == declared | {"Op", "execute"}
    hooked = (plugin._REPO_FIRST | plugin._UPDATE | plugin._UPDATE_MANY) - {"cacheorm.repo.on"}
    assert hooked == {
        f"cacheorm.{module}.{name}" for module in ("crud", "ops", "aio") for name in declared
    }
    # The plugin hooks functions by where mypy sees them defined.
    for name in declared:
        assert getattr(co, name).__module__ == "cacheorm.crud"
        assert getattr(co.ops, name).__module__ == "cacheorm.ops"


def test_help_shows_each_function_with_its_docstring_and_result() -> None:
    text = pydoc.plain(pydoc.render_doc(co.get))
    assert "get(repo: 'Repo[R, K]', key: 'K', /) -> 'R'" in text
    assert "Return the record stored under ``key``." in text
    assert "Raises:" in text
    load = inspect.signature(co.get_or_load)
    assert list(load.parameters) == ["repo", "key", "loader", "lock_ttl", "wait", "negative_ttl"]
    assert inspect.signature(co.ops.get_many).return_annotation == "Op[list[R | None]]"
    assert ":func:`cacheorm.get`" in (co.ops.get.__doc__ or "")


def test_an_op_takes_the_options_its_function_takes() -> None:
    people = co.Repo(PERSON)
    calls: list[str] = []

    def load(name: str) -> Person:
        calls.append(name)
        return Person(name, 1.5)

    op = co.ops.get_or_load(people, "Sam", load, lock_ttl=5, wait=0.0)
    assert op.kwargs == {"lock_ttl": 5, "wait": 0.0}
    assert co.execute(op) == [Person("Sam", 1.5)]
    assert calls == ["Sam"]
    (refused,) = co.execute(
        co.ops.get_or_load(people, "Bo", load, lock_ttl=0), raise_on_error=False
    )
    assert isinstance(refused, co.ValidationError)
    assert "lock_ttl" in str(refused)


def test_an_op_keeps_a_snapshot_of_its_arguments() -> None:
    people = co.Repo(PERSON)
    with pytest.raises(co.ValidationError, match="single key"):
        co.ops.get_many(people, "Sam")  # refused when the op is built, not split into letters
    records = (Person(name, 1.0) for name in ("A", "B"))  # one-shot
    insert = co.ops.insert_many(people, records)
    assert co.execute(insert) == co.execute(insert) == [[Person("A", 1.0), Person("B", 1.0)]]
    changes = {"A": {"height": 2.0}}
    update = co.ops.update_many(people, changes)
    changes["A"]["height"] = 3.0  # the caller reuses its dict
    assert co.execute(update) == [[Person("A", 2.0)]]


# ------------------------------------------------------------------ pure plans


def drive(backend: co.Backend, plan: Plan[object], steps: list[Step]) -> object:
    """A minimal synchronous driver that records every step, sleeping and calling for the plan.

    A ``Cas`` is answered "lost" the first time each key meets one, as if another
    writer had won the race.
    """
    lost: set[bytes] = set()
    answer: list[object] | BaseException | None = None
    while True:
        try:
            step = _resume(plan, answer)
        except StopIteration as stop:
            return stop.value
        steps.append(step)
        answer = _answer(backend, step, lost)


def _resume(plan: Plan[object], answer: list[object] | BaseException | None) -> Step:
    if answer is None:
        return next(plan)
    if isinstance(answer, BaseException):
        return plan.throw(answer)
    return plan.send(answer)


def _answer(backend: co.Backend, step: Step, lost: set[bytes]) -> list[object] | BaseException:
    if isinstance(step, Sleep):
        REAL_SLEEP(step.seconds)
        return []
    if isinstance(step, Call):
        try:
            return [step.fn()]
        except Exception as err:  # thrown into the plan at its yield
            return err
    answers: list[object] = []
    for command in step:
        if isinstance(command, Cas) and command.key not in lost:
            lost.add(command.key)
            answers.append(False)
        else:
            answers.extend(dispatch(backend, [command]))
    return answers


REAL_SLEEP = time.sleep


@pytest.fixture
def no_sleeping(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plans must not block: ``time.sleep`` fails the test (drivers use ``REAL_SLEEP``)."""

    def refuse(seconds: float) -> None:
        raise AssertionError(f"time.sleep({seconds}) called outside a driver")

    monkeypatch.setattr(time, "sleep", refuse)


def test_get_or_load_waits_and_loads_through_its_driver(no_sleeping: None) -> None:
    backend = co.MemoryBackend()
    people = co.Repo(PERSON, backend=backend)
    lock = crud.LOCK_PREFIX + PERSON.encode_key("Sam")
    backend.add(lock, b"another caller", 10)  # someone else is loading Sam
    calls: list[str] = []

    def load(name: str) -> Person:
        calls.append(name)
        return Person(name, 1.0)

    plan = DECLARED["get_or_load"].plan(people, "Sam", load, wait=0.05)
    assert calls == []  # building the plan runs nothing
    steps: list[Step] = []
    started = time.monotonic()
    assert drive(backend, plan, steps) == Person("Sam", 1.0)
    assert time.monotonic() - started < 2.0
    assert any(isinstance(step, Sleep) for step in steps)  # polled the lock, via the driver
    assert [step for step in steps if isinstance(step, Call)] != []
    assert calls == ["Sam"]  # called by the driver, once, after `wait`
    assert co.get(people, "Sam") == Person("Sam", 1.0)


def test_a_user_function_error_is_thrown_into_the_plan(no_sleeping: None) -> None:
    backend = co.MemoryBackend()
    people = co.Repo(PERSON, backend=backend)

    def broken(name: str) -> Person:
        raise RuntimeError("database down")

    steps: list[Step] = []
    with pytest.raises(RuntimeError, match="database down"):
        drive(backend, DECLARED["get_or_load"].plan(people, "Sam", broken), steps)
    assert backend.get(crud.LOCK_PREFIX + PERSON.encode_key("Sam")) is None  # released
    commands = [command for step in steps if isinstance(step, list) for command in step]
    assert type(commands[-1]).__name__ == "DeleteIf"  # the release came after the Call failed


def test_modify_backs_off_and_calls_its_function_through_the_driver(no_sleeping: None) -> None:
    backend = co.MemoryBackend()
    counters = co.Repo(COUNTER, backend=backend)
    co.insert(counters, Counter("hits", 0))
    seen: list[int] = []

    def bump(counter: Counter) -> Counter:
        seen.append(counter.value)
        return counter._replace(value=counter.value + 1)

    steps: list[Step] = []
    result = drive(backend, DECLARED["modify"].plan(counters, "hits", bump), steps)
    assert result == Counter("hits", 1)
    assert seen == [0, 0]  # the first compare-and-set was lost: called again
    kinds = [type(step).__name__ if not isinstance(step, list) else "phase" for step in steps]
    assert kinds == ["phase", "Call", "phase", "Sleep", "phase", "Call", "phase"]


def test_update_many_passes_its_plans_backoff_on_to_the_driver(no_sleeping: None) -> None:
    backend = co.MemoryBackend()
    people = co.Repo(PERSON, backend=backend)
    co.insert_many(people, [Person("A", 1.0), Person("B", 1.0)])
    steps: list[Step] = []
    changes = {"A": {"height": 2.0}, "B": {"married": True}, "Z": {"height": 0.5}}
    result = drive(backend, DECLARED["update_many"].plan(people, changes), steps)
    assert result == [Person("A", 2.0), Person("B", 1.0, married=True), None]
    assert sum(isinstance(step, Sleep) for step in steps) == 2  # one lost CAS per record


def test_the_sync_functions_sleep_in_the_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    backend = co.MemoryBackend()
    people = co.Repo(PERSON, backend=backend)
    backend.add(crud.LOCK_PREFIX + PERSON.encode_key("Sam"), b"another caller", 10)
    assert co.get_or_load(people, "Sam", lambda n: Person(n, 1.0), wait=0.01) == Person("Sam", 1.0)
    assert slept  # the engine slept for the plan


# ------------------------------------------------------------------ an async driver


async def drive_async(backend: co.Backend, plan: Plan[object]) -> object:
    """The async driver the engine's docstring sketches (commands sent synchronously here)."""
    answer: list[object] | BaseException | None = None
    while True:
        try:
            step = _resume(plan, answer)
        except StopIteration as stop:
            return stop.value
        try:
            match step:
                case Sleep(seconds):
                    await asyncio.sleep(seconds)
                    answer = []
                case Call(fn):
                    result = fn()
                    if inspect.isawaitable(result):
                        result = await result
                    answer = [result]
                case commands:
                    answer = dispatch(backend, commands)
        except BaseException as err:
            answer = err


def test_an_async_driver_runs_the_same_plans_with_coroutine_callables(
    no_sleeping: None,
) -> None:
    backend = co.MemoryBackend()
    people = co.Repo(PERSON, backend=backend)
    backend.add(crud.LOCK_PREFIX + PERSON.encode_key("Sam"), b"another caller", 10)

    async def load(name: str) -> Person:
        await asyncio.sleep(0)
        return Person(name, 1.0)

    async def taller(person: Person) -> Person:
        await asyncio.sleep(0)
        return person._replace(height=person.height + 1)

    def plan(name: str, *args: object, **kwargs: object) -> Plan[object]:
        return DECLARED[name].plan(people, *args, **kwargs)

    async def main() -> list[object]:
        return [
            await drive_async(backend, plan("get_or_load", "Sam", load, wait=0.02)),
            await drive_async(backend, plan("modify", "Sam", taller)),
            await drive_async(backend, plan("get", "Sam")),
            await drive_async(backend, plan("insert", Person("Bo", 1.5))),
        ]

    assert asyncio.run(main()) == [
        Person("Sam", 1.0),
        Person("Sam", 2.0),
        Person("Sam", 2.0),
        Person("Bo", 1.5),
    ]


def test_building_a_plan_runs_nothing(no_sleeping: None) -> None:
    people = co.Repo(PERSON, backend=co.MemoryBackend())
    called: list[Person] = []

    def same(person: Person) -> Person:
        called.append(person)
        return person

    for name, args in [
        ("modify", ("Sam", same)),
        ("get_or_load", ("Sam", same)),
        ("get_many", ("not a list",)),  # checked when the plan runs: an op's own error
        ("update", ("Sam",)),
    ]:
        DECLARED[name].plan(people, *args).close()
    assert called == []
