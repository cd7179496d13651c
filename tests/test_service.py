"""Which methods a service exposes, how params bind, and what rpc.discover publishes."""

from __future__ import annotations

import types
from typing import Literal

import pytest

from micromessaging import ConfigurationError, Service, method
from micromessaging._openrpc import openrpc_document, signature_line
from micromessaging._service import InvalidParams
from micromessaging.examples.calculator import Calculator


class Base:
    def inherited(self) -> str:
        return "from base"

    def overridden(self) -> str:
        return "base"


class Rich(Base):
    limit = 10
    callable_attribute = staticmethod(len)

    def __init__(self) -> None:
        self.instance_function = lambda: "instance"

    def public(self, a: int) -> int:
        return a

    async def coroutine(self) -> str:
        return "async"

    @staticmethod
    def static(x: str) -> str:
        return x

    @classmethod
    def klass(cls) -> str:
        return cls.__name__

    @property
    def prop(self) -> int:
        return 1

    overridden = None  # hides the base's function: never exposed

    def _private(self) -> None: ...

    def __dunder__(self) -> None: ...


def test_seed_calculator_exposes_exactly_its_methods() -> None:
    assert set(Service.from_object(Calculator()).methods) == {"add", "subtract"}


def test_exposure_rules() -> None:
    exposed = set(Service.from_object(Rich()).methods)
    assert exposed == {"inherited", "public", "coroutine", "static", "klass"}


def test_object_builtins_never_exposed() -> None:
    exposed = set(Service.from_object(Rich()).methods)
    assert not exposed & set(dir(object))


def test_class_is_instantiated() -> None:
    service = Service.from_object(Calculator)
    assert service.name == "Calculator"
    assert set(service.methods) == {"add", "subtract"}


def test_class_needing_arguments_gives_a_clear_error() -> None:
    class NeedsConfig:
        def __init__(self, dsn: str) -> None: ...

        def get(self) -> None: ...

    with pytest.raises(ConfigurationError, match="instance"):
        Service.from_object(NeedsConfig)


def test_declared_methods_only_once_one_is_declared() -> None:
    class Declared:
        @method
        def visible(self) -> int:
            return 1

        @method(name="math.double")
        def double(self, x: int) -> int:
            return 2 * x

        def helper(self) -> None: ...

    assert set(Service.from_object(Declared()).methods) == {"visible", "math.double"}


def test_service_decorator_and_reserved_names() -> None:
    service = Service("calc")

    @service.method
    def add(a: float, b: float) -> float:
        return a + b

    @service.method(name="math.mul")
    async def mul(a: float, b: float) -> float:
        return a * b

    assert set(service.methods) == {"add", "math.mul"}
    assert service.methods["math.mul"].is_async
    with pytest.raises(ConfigurationError, match="reserved"):
        service.add("rpc.evil", add)
    with pytest.raises(ConfigurationError, match="twice"):
        service.add("add", add)


def test_module_exposes_its_own_functions() -> None:
    module = types.ModuleType("shop")
    exec(  # the module's own code
        "from math import sqrt\ndef price(n: int) -> int:\n    return n\n"
        "def _hidden():\n    pass\n",
        module.__dict__,
    )
    assert set(Service.from_object(module).methods) == {"price"}


def test_object_without_methods_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="no methods"):
        Service.from_object(object())


def bind(func, params):
    service = Service()
    service.add("f", func)
    return service.methods["f"].bind(params)


def test_binding_positional_and_named() -> None:
    def f(a, b=2, *, c=3): ...

    assert bind(f, [1]) == ([1], {})
    assert bind(f, [1, 5]) == ([1, 5], {})
    assert bind(f, {"a": 1, "c": 4}) == ([], {"a": 1, "c": 4})


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ([], "missing required param 'a'"),
        ([1, 2, 3], "takes at most 2 params, got 3"),
        ({"b": 1}, "missing required param 'a'"),
        ({"a": 1, "z": 2}, "unexpected param 'z'"),
        (None, "missing required param 'a'"),
    ],
)
def test_binding_errors_name_the_problem(params, message) -> None:
    def f(a, b=2): ...

    with pytest.raises(InvalidParams, match=message):
        bind(f, params)


def test_keyword_and_positional_only() -> None:
    def f(a, /, b, *, c): ...

    with pytest.raises(InvalidParams, match="'c' can only be passed by name"):
        bind(f, [1, 2])
    with pytest.raises(InvalidParams, match="'a' can only be passed by position"):
        bind(f, {"a": 1, "b": 2, "c": 3})


def test_var_args_and_kwargs() -> None:
    def f(*numbers: int, **options: str): ...

    assert bind(f, [1, 2, 3]) == ([1, 2, 3], {})
    assert bind(f, {"x": "y"}) == ([], {"x": "y"})
    with pytest.raises(InvalidParams, match="'numbers' must be an integer, got a string"):
        bind(f, [1, "2"])
    with pytest.raises(InvalidParams, match="'options' must be a string"):
        bind(f, {"x": 1})


@pytest.mark.parametrize(
    ("hint", "good", "bad", "message"),
    [
        (int, 3, 3.5, "must be an integer, got a number"),
        (int, 3, True, "must be an integer, got a boolean"),
        (float, 3, "3", "must be a number, got a string"),
        (bool, False, 0, "must be a boolean"),
        (str, "x", None, "must be a string, got null"),
        (list[int], [1, 2], [1, "2"], "'a'[1] must be an integer"),
        (dict[str, float], {"x": 1.5}, {"x": "y"}, "'a'['x'] must be a number"),
        (int | None, None, "x", "must be an integer or null"),
        (Literal["up", "down"], "up", "left", "must be one of 'up', 'down'"),
        (tuple[int, str], [1, "a"], [1], "must have 2 items"),
    ],
)
def test_type_hints_are_checked(hint, good, bad, message) -> None:
    def f(a): ...

    f.__annotations__ = {"a": hint}
    assert bind(f, [good]) == ([good], {})
    with pytest.raises(InvalidParams, match=message.replace("[", r"\[").replace("|", r"\|")):
        bind(f, [bad])


def test_unknown_hints_check_nothing() -> None:
    class Money: ...

    def f(amount: Money, later: "Unresolvable"): ...  # type: ignore[name-defined] # noqa: F821, UP037

    assert bind(f, ["anything", 1]) == (["anything", 1], {})


def test_openrpc_document() -> None:
    service = Service("calc", version="2.1.0")

    @service.method
    def add(a: float, b: float = 1.0) -> float:
        """Add two numbers.

        Longer text."""
        return a + b

    document = openrpc_document(service)
    assert document["openrpc"].startswith("1.")
    assert document["info"] == {"title": "calc", "version": "2.1.0"}
    (described,) = document["methods"]
    assert described["name"] == "add"
    assert described["summary"] == "Add two numbers."
    assert described["params"] == [
        {"name": "a", "required": True, "schema": {"type": "number"}},
        {"name": "b", "required": False, "schema": {"type": "number", "default": 1.0}},
    ]
    assert described["result"] == {"name": "result", "schema": {"type": "number"}}
    assert signature_line(described) == "add(a: number, b: number = 1.0) -> number"


def test_openrpc_of_untyped_seed_calculator() -> None:
    document = openrpc_document(Service.from_object(Calculator()))
    lines = sorted(signature_line(m) for m in document["methods"])
    assert lines == ["add(a, b)", "subtract(a, b)"]
