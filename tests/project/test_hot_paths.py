"""
No context variable's method is called through a name imported from another module.

CPython (3.11 to 3.13 at least) compiles ``NAME.method()`` for an imported ``NAME`` as
a plain attribute load and a call, not as a method call: it takes imported names for
modules, whose attributes that form reads fastest. For a `ContextVar` that builds a
bound method on every call, ~500 instructions on 3.11; `Timeout` made three per guarded
call and `Retry` two per retry until the engine bound them once
(`resilient._engine.context`: `deadline_in_force`, `set_deadline`, ...). This keeps
them out of every module's functions.
"""

from __future__ import annotations

import ast
import dis
import importlib
import pkgutil
import types
from contextvars import ContextVar
from pathlib import Path

import resilient


def _imported_names(tree: ast.Module) -> set[str]:
    return {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }


def calls_on_imported_context_variables(
    tree: ast.Module, namespace: dict[str, object]
) -> list[str]:
    """
    ``NAME.method(...)`` inside a function of `tree`, NAME imported and a `ContextVar`.
    """
    imported = _imported_names(tree)
    return [
        f"{function.name}:{node.lineno} {node.func.value.id}.{node.func.attr}"
        for function in ast.walk(tree)
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
        for node in ast.walk(function)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id in imported
        and isinstance(namespace.get(node.func.value.id), ContextVar)
    ]


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
    exec(compile(source, "<sample>", "exec"), namespace)  # noqa: S102  # our own sample
    assert calls_on_imported_context_variables(ast.parse(source), namespace) == [
        "imported:5 DEADLINE.get"
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
        tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
        offenders += [
            f"{info.name}.{where}"
            for where in calls_on_imported_context_variables(tree, vars(module))
        ]
    assert offenders == [], (
        "call the engine's bound functions instead (resilient._engine.context:"
        " deadline_in_force, set_deadline, reset_deadline, no_retries_in_force)"
    )
