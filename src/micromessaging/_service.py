"""Which methods a service exposes, and how a request's params bind to them.

A service is plain domain code. `Service.from_object` exposes the public functions defined
on an object's class (its own and its base classes', never `object`'s), or, when some of
them carry the `@method` decorator, only those. Names starting with ``_`` and attributes
that are not functions are never exposed, and no name a caller sends is ever looked up on
the object itself: only in the table built here.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from ._exceptions import ConfigurationError
from ._schema import Schema, exact_types, problem, schema_for
from ._types import JSON, Params

F = TypeVar("F", bound=Callable[..., Any])

_MARK = "__micromessaging_method__"
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_BY_NAME = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


@overload
def method(func: F, /) -> F: ...
@overload
def method(*, name: str | None = None) -> Callable[[F], F]: ...
def method(func: F | None = None, /, *, name: str | None = None) -> F | Callable[[F], F]:
    """Declare a function as a remote method, optionally under another name.

    On a class, once one function is declared this way, only declared ones are exposed.
    """

    def mark(target: F) -> F:
        setattr(target, _MARK, name or target.__name__)
        return target

    return mark(func) if func is not None else mark


class InvalidParams(Exception):
    """Params that do not fit a method's signature or hints."""


@dataclass(slots=True)
class Method:
    """One exposed method: the callable, how params bind to it, and its published schema."""

    name: str
    func: Callable[..., Any]
    is_async: bool
    doc: str | None
    parameters: tuple[inspect.Parameter, ...]
    schemas: dict[str, Schema]
    result_schema: Schema
    _positional: tuple[str, ...] = field(init=False)
    _required_positional: int = field(init=False)
    _by_name: frozenset[str] = field(init=False)
    _required_by_name: tuple[str, ...] = field(init=False)
    _keyword_only: tuple[str, ...] = field(init=False)
    _positional_only: tuple[str, ...] = field(init=False)
    _var_positional: str | None = field(init=False)
    _var_keyword: str | None = field(init=False)
    _types: dict[str, frozenset[type]] = field(init=False)
    _deep: dict[str, Schema] = field(init=False)

    def __post_init__(self) -> None:
        params = self.parameters
        kind = inspect.Parameter
        positional = [p for p in params if p.kind in _POSITIONAL]
        required = [p for p in params if p.default is p.empty]
        self._positional = tuple(p.name for p in positional)
        self._required_positional = sum(1 for p in positional if p.default is p.empty)
        self._by_name = frozenset(p.name for p in params if p.kind in _BY_NAME)
        self._required_by_name = tuple(p.name for p in required if p.kind in _BY_NAME)
        self._keyword_only = tuple(p.name for p in required if p.kind is kind.KEYWORD_ONLY)
        self._positional_only = tuple(p.name for p in required if p.kind is kind.POSITIONAL_ONLY)
        kinds = {p.kind: p.name for p in params}
        self._var_positional = kinds.get(kind.VAR_POSITIONAL)
        self._var_keyword = kinds.get(kind.VAR_KEYWORD)
        checked = {name: schema for name, schema in self.schemas.items() if schema}
        types_ = {name: exact_types(schema) for name, schema in checked.items()}
        self._types = {name: found for name, found in types_.items() if found is not None}
        self._deep = {name: checked[name] for name, found in types_.items() if found is None}

    @classmethod
    def from_function(cls, name: str, func: Callable[..., Any]) -> Method:
        """Describe `func` (a function or bound method) as the method `name`."""
        if name.startswith("rpc."):
            raise ConfigurationError(f"method names starting with 'rpc.' are reserved: {name!r}")
        signature = inspect.signature(func)
        hints = _hints(func)
        schemas = {
            p.name: schema_for(hints[p.name]) if p.name in hints else {}
            for p in signature.parameters.values()
        }
        target = func.__call__ if not inspect.isroutine(func) else func  # type: ignore[operator]
        return cls(
            name=name,
            func=func,
            is_async=inspect.iscoroutinefunction(target),
            doc=inspect.getdoc(func),
            parameters=tuple(signature.parameters.values()),
            schemas=schemas,
            result_schema=schema_for(hints["return"]) if "return" in hints else {},
        )

    def bind(self, params: Params) -> tuple[list[JSON], dict[str, JSON]]:
        """Check `params` against the signature and hints: (args, kwargs), or `InvalidParams`."""
        if params is None or isinstance(params, list):
            args = params or []
            self._check_positional(args)
            return args, {}
        self._check_named(params)
        return [], params

    def _check_positional(self, args: list[JSON]) -> None:
        count = len(args)
        if count > len(self._positional) and self._var_positional is None:
            raise InvalidParams(
                f"{self.name} takes at most {len(self._positional)} params, got {count}"
            )
        if count < self._required_positional:
            missing = self._positional[count : self._required_positional]
            raise InvalidParams(f"missing required param {_names(missing)}")
        if self._keyword_only:
            raise InvalidParams(f"{_names(self._keyword_only)} can only be passed by name")
        if self._types or self._deep:
            names = self._positional + (self._var_positional,) * (count - len(self._positional))
            self._check_values(zip(names, args, strict=False))

    def _check_named(self, kwargs: dict[str, JSON]) -> None:
        if self._positional_only:
            raise InvalidParams(f"{_names(self._positional_only)} can only be passed by position")
        if self._var_keyword is None:
            unexpected = [key for key in kwargs if key not in self._by_name]
            if unexpected:
                raise InvalidParams(f"unexpected param {_names(unexpected)}")
        missing = [name for name in self._required_by_name if name not in kwargs]
        if missing:
            raise InvalidParams(f"missing required param {_names(missing)}")
        if self._types or self._deep:
            self._check_values(
                (key if key in self._by_name else self._var_keyword, value)
                for key, value in kwargs.items()
            )

    def _check_values(self, pairs: typing.Iterable[tuple[str | None, JSON]]) -> None:
        types_, deep = self._types, self._deep
        for name, value in pairs:
            allowed = types_.get(name)  # type: ignore[arg-type]
            if allowed is not None:
                if type(value) in allowed:
                    continue
                schema = self.schemas[name]  # type: ignore[index]
            elif name in deep:
                schema = deep[name]
            else:
                continue
            found = problem(value, schema, repr(name))
            if found:
                raise InvalidParams(found)


def _names(names: typing.Sequence[str]) -> str:
    return ", ".join(repr(name) for name in names)


def _hints(func: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(func, include_extras=True)
    except Exception:
        # Unresolvable forward references: publish and check nothing rather than fail.
        return {}


class Service:
    """A named set of methods that a worker serves."""

    def __init__(self, name: str = "service", *, version: str = "1.0.0") -> None:
        self.name = name
        self.version = version
        self._methods: dict[str, Method] = {}

    @overload
    def method(self, func: F, /) -> F: ...
    @overload
    def method(self, func: None = None, /, *, name: str | None = None) -> Callable[[F], F]: ...
    def method(self, func: F | None = None, /, *, name: str | None = None) -> F | Callable[[F], F]:
        """Decorator: add a function to this service, optionally under another name."""

        def register(target: F) -> F:
            self.add(name or target.__name__, target)
            return target

        return register(func) if func is not None else register

    def add(self, name: str, func: Callable[..., Any]) -> None:
        """Expose `func` as the method `name`."""
        if name in self._methods:
            raise ConfigurationError(f"method {name!r} is declared twice")
        self._methods[name] = Method.from_function(name, func)

    @property
    def methods(self) -> Mapping[str, Method]:
        """The exposed methods, by name."""
        return types.MappingProxyType(self._methods)

    def __contains__(self, name: object) -> bool:
        return name in self._methods

    def __iter__(self) -> Iterator[Method]:
        return iter(self._methods.values())

    @classmethod
    def from_object(cls, obj: object, name: str | None = None) -> Service:
        """Build the service for a plain object, a class (instantiated) or a module."""
        if isinstance(obj, Service):
            return obj
        if isinstance(obj, type):
            klass = obj
            try:
                obj = klass()
            except TypeError as exc:
                raise ConfigurationError(
                    f"could not instantiate {klass.__qualname__} without arguments ({exc}); "
                    "point the worker at an instance instead"
                ) from exc
        service = cls(name or _default_name(obj))
        for method_name, func in _exposed(obj):
            service.add(method_name, func)
        if not service._methods:
            raise ConfigurationError(f"{obj!r} exposes no methods")
        return service


def _default_name(obj: object) -> str:
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    return type(obj).__name__


def _exposed(obj: object) -> list[tuple[str, Callable[..., Any]]]:
    """(name, bound callable) for each method `obj` exposes."""
    if isinstance(obj, types.ModuleType):
        found = {
            attr: value
            for attr, value in vars(obj).items()
            if inspect.isfunction(value) and value.__module__ == obj.__name__
        }
        bound = dict(found)
    else:
        # Walk the class, never the instance: what a subclass defines hides what its bases
        # define under the same name, whether or not it is a function.
        found, bound, seen = {}, {}, set()
        for klass in type(obj).__mro__[:-1]:
            for attr, value in vars(klass).items():
                if attr in seen:
                    continue
                seen.add(attr)
                raw = value.__func__ if isinstance(value, staticmethod | classmethod) else value
                if inspect.isfunction(raw):
                    found[attr] = raw
                    bound[attr] = value.__get__(obj, type(obj))
    declared = {attr: getattr(raw, _MARK) for attr, raw in found.items() if hasattr(raw, _MARK)}
    if declared:
        return [(name, bound[attr]) for attr, name in declared.items()]
    return [(attr, bound[attr]) for attr in found if not attr.startswith("_")]
