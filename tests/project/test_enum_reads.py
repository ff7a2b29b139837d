"""
Functions run on every request read no attribute of an enum class.

On CPython 3.11 `EnumType` defines `__getattr__`, so every attribute read on an enum
class (`Priority.CRITICAL`, `CircuitState.OPEN`, `Priority.parse`) runs the type's
``__getattr__`` hook: about ten times a module global's cost (3.12 dropped the hook).
The per-request functions below read such values from module constants instead; this
keeps them from coming back, reading the compiled code.
"""

from __future__ import annotations

import dis
import enum
import inspect
import sys
import types
from collections.abc import Callable, Mapping

import pytest

from resilient import CircuitBreaker, Priority
from resilient._service.pool import EndpointPool
from resilient.integrations import _otel_aiohttp
from resilient.integrations.aiohttp import _propagation, _server
from tests.project.test_hot_paths import code_objects


def enum_class_reads(code: types.CodeType, namespace: Mapping[str, object]) -> list[str]:
    """
    Where `code`, or code nested in it, loads a global enum class and reads an attribute.
    """
    found = []
    for nested in code_objects(code):
        previous = None
        for instruction in dis.get_instructions(nested):
            if (
                instruction.opname in {"LOAD_ATTR", "LOAD_METHOD"}
                and previous is not None
                and previous.opname == "LOAD_GLOBAL"
                and isinstance(namespace.get(previous.argval), enum.EnumType)
            ):
                found.append(f"{previous.argval}.{instruction.argval}")
            previous = instruction
    return found


def test_the_check_finds_an_enum_class_read() -> None:
    def reads(level: Priority) -> bool:
        return level is Priority.CRITICAL or Priority.parse("critical") is level

    critical = Priority.CRITICAL

    def reads_nothing(level: Priority) -> bool:
        return level is critical

    def reads_in_a_lambda() -> Callable[[], Priority]:
        return lambda: Priority.SHEDDABLE

    namespace = {"Priority": Priority}
    assert enum_class_reads(reads.__code__, namespace) == ["Priority.CRITICAL", "Priority.parse"]
    assert enum_class_reads(reads_in_a_lambda.__code__, namespace) == ["Priority.SHEDDABLE"]
    assert enum_class_reads(reads_nothing.__code__, namespace) == []


def test_the_hook_is_there_on_3_11() -> None:
    # The premise on the running interpreter: 3.11's EnumType has the hook, later ones don't.
    assert ("__getattr__" in vars(enum.EnumType)) == (sys.version_info < (3, 12))


@pytest.mark.parametrize(
    "function",
    [
        _propagation.stamp_headers,
        EndpointPool.is_ejected,
        CircuitBreaker.retry_in,  # is_ejected's callee
        CircuitBreaker._admit,  # every call while open: the open-breaker path
        _server._caller_priority,
        _otel_aiohttp.aiohttp_server_span_middleware,  # its per-request middleware inside
    ],
    ids=lambda function: function.__qualname__,
)
def test_per_request_functions_read_no_enum_class_attribute(
    function: Callable[..., object],
) -> None:
    function = inspect.unwrap(function)  # a decorator's wrapper would hide the body
    assert isinstance(function, types.FunctionType)
    assert enum_class_reads(function.__code__, function.__globals__) == [], (
        "read the member once into a module constant (see _propagation._CRITICAL)"
    )
