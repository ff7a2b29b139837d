"""
No context variable's method is called through a name imported from another module.

CPython (3.11 to 3.13 at least) compiles ``NAME.method()`` for an imported ``NAME`` as
a plain attribute load and a call, not as a method call: the compiler assumes an
imported name is a module. For a `ContextVar` that builds a bound method on every call,
~500 instructions on 3.11; `Timeout` made three per guarded call and `Retry` two per
retry until the engine bound them once (`resilient._engine.context`:
`deadline_in_force`, `set_deadline`, ...). The second test keeps such loads out of
every module of the package, reading the compiled code (lambdas included).

The first test checks that premise on the running interpreter. Should a future CPython
compile an imported name's method call as a method call, it fails: the bound functions
are then no longer needed for speed (they stay correct), and this file can go.
"""

from __future__ import annotations

import dis
import importlib
import pkgutil
import types
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path

import resilient


def code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    """`code` and every code object nested in it (functions, lambdas, comprehensions)."""
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from code_objects(const)


def bound_method_loads(module_code: types.CodeType, namespace: dict[str, object]) -> list[str]:
    """
    Where a function (or lambda) of the module loads a `ContextVar`'s method as a plain
    attribute: a global context variable, then LOAD_ATTR without the method-call form
    (3.11's LOAD_METHOD, 3.12+'s ``NULL|self``), which builds a bound method.
    """
    found = []
    for code in code_objects(module_code):
        previous = None
        for instruction in dis.get_instructions(code):
            if (
                instruction.opname == "LOAD_ATTR"
                and "NULL|self" not in instruction.argrepr
                and previous is not None
                and previous.opname == "LOAD_GLOBAL"
                and isinstance(namespace.get(previous.argval), ContextVar)
            ):
                found.append(f"{code.co_name}:{previous.argval}.{instruction.argval}")
            previous = instruction
    return found


def test_the_check_finds_such_a_call_and_it_compiles_to_an_attribute_load() -> None:
    # The premise, on the running interpreter: the imported name's method is loaded as
    # an attribute (no method-call form), a name defined here is not.
    source = (
        "from contextvars import ContextVar\n"
        "from resilient._engine.context import DEADLINE\n"
        "LOCAL = ContextVar('local')\n"
        "def imported():\n    return DEADLINE.get()\n"
        "def local():\n    return LOCAL.get()\n"
    )
    namespace: dict[str, object] = {}
    code = compile(source, "<sample>", "exec")
    exec(code, namespace)  # noqa: S102  # our own sample
    assert bound_method_loads(code, namespace) == ["imported:DEADLINE.get"]
    lambdas = "from resilient._engine.context import DEADLINE\nf = lambda: DEADLINE.set(None)\n"
    assert bound_method_loads(compile(lambdas, "<sample>", "exec"), namespace) == [
        "<lambda>:DEADLINE.set"
    ]
    imported, local = namespace["imported"], namespace["local"]
    assert isinstance(imported, types.FunctionType)
    assert isinstance(local, types.FunctionType)

    def loads(function: types.FunctionType) -> list[str]:
        return [
            f"{i.opname} {i.argrepr}"
            for i in dis.get_instructions(function)
            if i.opname in {"LOAD_ATTR", "LOAD_METHOD"}
        ]

    assert loads(imported) == ["LOAD_ATTR get"]  # a bound method per call
    assert loads(local) in (["LOAD_METHOD get"], ["LOAD_ATTR get + NULL|self"])


def test_no_module_calls_a_method_of_an_imported_context_variable() -> None:
    offenders = []
    modules = list(pkgutil.walk_packages(resilient.__path__, "resilient."))
    assert len(modules) > 40  # the walk found the package's modules
    for info in modules:
        module = importlib.import_module(info.name)
        if module.__file__ is None:
            continue
        code = compile(Path(module.__file__).read_text(encoding="utf-8"), module.__file__, "exec")
        offenders += [f"{info.name}.{where}" for where in bound_method_loads(code, vars(module))]
    assert offenders == [], (
        "call the engine's bound functions instead (resilient._engine.context:"
        " deadline_in_force, set_deadline, reset_deadline, no_retries_in_force)"
    )
