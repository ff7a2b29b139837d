"""
The public surface of `resilient`: what `__all__` exports, the error tree, what
``import resilient`` loads, the import paths of integrations, and the typing marker.
"""

from __future__ import annotations

import importlib
import importlib.resources
import json
import pickle
import pkgutil
import tomllib
from pathlib import Path
from types import FunctionType, ModuleType

import pytest

import resilient
import resilient.testing
from resilient import (
    BulkheadFullError,
    CircuitOpenError,
    ConcurrencyLimitError,
    NoHealthyInstanceError,
    RateLimitedError,
    RejectedError,
    ResilienceError,
    ThrottledError,
    TimeoutExceeded,
)
from resilient.validation import check_fraction, check_int, check_seconds
from tests._paths import REPO_ROOT
from tests._run import python

# The names DESIGN.md's core API contract promises.
CONTRACT = (
    "Bulkhead",
    "BulkheadFullError",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitState",
    "Fallback",
    "HealthMonitor",
    "HealthStatus",
    "Hedge",
    "ResilienceError",
    "Retry",
    "Timeout",
    "TimeoutExceeded",
    "pipeline",
)

# Names in a private module's `__all__` that deliberately stay out of `resilient.__all__`,
# with the reason. A new public name must be exported or listed here.
INTERNAL = {
    "_engine.context": {
        "DEADLINE",
        "NO_RETRIES",
        "Deadline",
        "retries_allowed",
    }  # set by Timeout; read by Retry, Hedge
    # the variables' methods bound once, for Timeout's and Retry's per-call paths
    | {"deadline_in_force", "no_retries_in_force", "reset_deadline", "set_deadline"},
    # a pipeline of built-in policies in one frame; the steps' "not decided" token
    "_engine.fusion": {"NOT_NOW", "Fusion", "fusion_of"},
    # the fused call's generated source, unobserved and heard by listeners
    "_engine.fusion_source": {"heard_lines", "unheard_lines"},
    # storage=pybreaker...Storage() and from_pybreaker(), behind the optional extra
    "_policies.breaker.pybreaker_store": {
        "STORAGE_WORKERS",
        "PybreakerStore",
        "pybreaker_listener_hook",
    },
    "_policies.breaker.accounting": {"Accounting", "Consecutive", "CountWindow", "TimeWindow"}
    | {"check_window"},  # shared with AdaptiveThrottle
    "_policies.breaker.link": {"StoreLink"},  # the breaker's bounded round trips to its store
    "_policies.breaker.lua": {"SCRIPT"},  # RedisBreakerStore's script
    "_policies.breaker.settings": {"Rules", "store_of", "window_accounting"},  # breaker setup
    "_engine.policy": {"Args", "AsyncFn", "Kwargs"},  # the shape of `_run`'s arguments
    "_engine.window": {"BUCKETS", "BucketedWindow"},  # RetryBudget's (and breakers') window
    "_engine.public": {"publish"},  # run by each public module on its own names
    "_policies.rate_limit": {"permits_of"},  # shared with RedisRateLimiter
    "_policies.retry": {"set_instant_retries"},  # public as resilient.testing.set_instant_retries
    "_engine.validate": {
        "check_async_redis",
        "check_clock",
        "check_exception_types",
        "check_fraction",
        "check_hooks",
        "check_int",
        "check_name",
        "check_rate",
        "check_seconds",
        "error_matcher",
        "retryable_by_default",
    },
    "_policies.watchdog": {"TASK_OF_LOOP", "Watched", "Watchdog", "Watchdogs"},  # Timeout's
    "_policies.bulkhead": {"shedding"},  # its repr's tail, shared with AdaptiveConcurrency
    # The bulkhead's priority queue, shared with AdaptiveConcurrency.
    "_policies.wait_queue": {
        "GRANTED",
        "SERVICE_TIME_WEIGHT",
        "TIMED_OUT",
        "Outcome",
        "Waiter",
        "enqueue",
        "ewma",
        "leave",
        "why_left",
    },
    "_engine.callables": {
        "awaitable_checked",
        "check_async",
        "is_coroutine_callable",
        "label",
        "not_callable",
        "returns_coroutine",
    },
    # Behind Policy._emit; users configure the `resilient.<kind>` loggers, not these.
    "_engine.logging": {"DecisionLog", "decision_log", "level_of"},
}

# ``import resilient`` must not load these: integrations' libraries (DESIGN.md), and
# the shared-breaker stack (pybreaker pulls in redis-py when it is installed).
HEAVY_MODULES = ("aiohttp", "prometheus_client", "opentelemetry", "pybreaker", "redis")


def private_modules(package: ModuleType = resilient) -> list[ModuleType]:
    """
    Every private module of `resilient` (``resilient._name``, and every module inside a
    private package such as ``resilient._engine``, at any depth), imported.
    """
    modules = []
    for info in pkgutil.iter_modules(package.__path__, f"{package.__name__}."):
        if package is resilient and not info.name.startswith("resilient._"):
            continue  # public: resilient.testing, resilient.integrations
        module = importlib.import_module(info.name)
        modules.append(module)
        if info.ispkg:
            modules += private_modules(module)
    return modules


def test_all_is_sorted_without_duplicates() -> None:
    """
    `resilient.__all__` is sorted and lists each name once (constants first, as ruff's
    RUF022 sorts it).
    """
    names = list(resilient.__all__)
    assert names == sorted(names, key=lambda name: (not name.isupper(), name))
    assert len(names) == len(set(names))


def test_every_name_in_all_exists() -> None:
    """
    Every name in `__all__` is an attribute of the package.
    """
    missing = [name for name in resilient.__all__ if not hasattr(resilient, name)]
    assert missing == []


def test_contract_names_are_exported() -> None:
    """
    The names DESIGN.md's API contract promises (those built so far) are exported.
    """
    assert set(CONTRACT) <= set(resilient.__all__)


def test_public_names_of_private_modules_are_exported() -> None:
    """
    Every name a private module lists in its `__all__` is exported from `resilient`
    as the same object, unless it is declared internal (with a reason) above.
    """
    unexported = []
    for module in private_modules():
        short = module.__name__.removeprefix("resilient.")
        declared = getattr(module, "__all__", None)
        assert declared is not None, f"{module.__name__} has no __all__"
        internal = INTERNAL.get(short, set())
        assert internal <= set(declared), f"stale INTERNAL entries for {short}"
        for name in declared:
            if name in internal:
                continue
            if name not in resilient.__all__:
                unexported.append(f"{short}.{name}")
            else:
                assert getattr(resilient, name) is getattr(module, name), name
    assert unexported == []


PUBLIC_MODULES = (
    "resilient",
    "resilient.testing",
    "resilient.validation",
    "resilient.integrations.aiohttp",
    "resilient.integrations.etcd",
    "resilient.integrations.otel",
    "resilient.integrations.prometheus",
)


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_public_names_show_their_public_module(name: str) -> None:
    """
    Every class and function a public module exports says it lives there (its
    ``__module__``, hence its repr, pickle path and docs), not in the private module
    that defines it: ``resilient.CircuitOpenError``, as trio does.
    """
    module = importlib.import_module(name)
    exported = [getattr(module, attr) for attr in module.__all__]
    checked = [obj for obj in exported if isinstance(obj, type | FunctionType)]
    assert checked  # the check sees something in every module
    assert {obj.__qualname__: obj.__module__ for obj in checked if obj.__module__ != name} == {}
    if name == "resilient":
        assert repr(CircuitOpenError) == "<class 'resilient.CircuitOpenError'>"


def test_validation_module_checks_like_the_policies() -> None:
    """
    `resilient.validation`, public for users' own policies and for the integrations,
    returns the checked value and names owner, parameter and value in its errors.
    """
    assert check_seconds("Debounce", "seconds", 2) == 2.0
    assert check_int("Debounce", "burst", 3, minimum=1) == 3
    assert check_fraction("Debounce", "share", 1) == 1.0
    with pytest.raises(ValueError, match=r"Debounce\(seconds=-1\): seconds must be finite"):
        check_seconds("Debounce", "seconds", -1)
    with pytest.raises(TypeError, match=r"Debounce\(burst=...\): expected an int"):
        check_int("Debounce", "burst", True, minimum=1)
    with pytest.raises(ValueError, match=r"Debounce\(share=0\): share must be in \(0, 1\]"):
        check_fraction("Debounce", "share", 0)


def test_testing_module_exports_exist() -> None:
    """
    `resilient.testing.__all__` is sorted and every name in it exists.
    """
    names = list(resilient.testing.__all__)
    assert names == sorted(names)
    assert [name for name in names if not hasattr(resilient.testing, name)] == []


def test_error_tree() -> None:
    """
    Every policy error is a `ResilienceError`; rejections share `RejectedError`.
    """
    assert issubclass(RejectedError, ResilienceError)
    assert issubclass(CircuitOpenError, RejectedError)
    assert issubclass(BulkheadFullError, RejectedError)
    assert issubclass(RateLimitedError, RejectedError)
    assert issubclass(ConcurrencyLimitError, RejectedError)
    assert issubclass(ThrottledError, RejectedError)
    assert issubclass(TimeoutExceeded, ResilienceError)
    assert not issubclass(TimeoutExceeded, RejectedError)


def test_timeout_exceeded_is_a_builtin_timeout_error() -> None:
    """
    `TimeoutExceeded` is caught by ``except TimeoutError`` (and so by
    ``except asyncio.TimeoutError``, the same class since Python 3.11).
    """
    assert issubclass(TimeoutExceeded, TimeoutError)
    error = TimeoutExceeded("fetch", 2.0)
    with pytest.raises(TimeoutError) as caught:
        raise error
    assert caught.value is error


@pytest.mark.parametrize(
    "error",
    [
        ResilienceError("base"),
        RejectedError("refused"),
        CircuitOpenError("inventory", 12.5),
        BulkheadFullError("db", 4, 8, "queue full"),
        RateLimitedError("api", 0.25, 2, "redis unreachable"),
        ConcurrencyLimitError("db", 7, "queue full"),
        ThrottledError("pricing", 0.5),
        NoHealthyInstanceError("orders", 3, 3),
        TimeoutExceeded("fetch", 2.0),
    ],
    ids=lambda error: type(error).__name__,
)
def test_errors_pickle_round_trip(error: ResilienceError) -> None:
    """
    Errors survive pickling (process pools, multiprocessing queues) with their type,
    message and attributes.
    """
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301  # our own bytes
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.args == error.args
    assert vars(copy) == vars(error)


def test_circuit_open_error_reads_its_attributes_from_its_args() -> None:
    """
    The open breaker's error keeps only its ``args`` (it is raised for every call while
    open): the attributes read them, and keywords fail loudly rather than leave them empty.
    """
    error = CircuitOpenError("inventory", 12.5)
    assert (error.name, error.retry_in, error.args) == ("inventory", 12.5, ("inventory", 12.5))
    assert str(error) == "circuit 'inventory' is open; next probe in 12.500s"
    with pytest.raises(TypeError, match="positional-only"):
        CircuitOpenError(name="inventory", retry_in=12.5)  # type: ignore[call-arg]


def test_import_loads_no_optional_dependencies(tmp_path: Path) -> None:
    """
    In a fresh interpreter, ``import resilient`` and ``import resilient.testing`` load
    none of aiohttp, prometheus_client, opentelemetry (nor pybreaker, redis-py or
    `resilient.integrations`).
    """
    code = (
        "import json, sys\n"
        "import resilient, resilient.testing\n"
        f"heavy = {HEAVY_MODULES!r}\n"
        "loaded = sorted(m for m in sys.modules\n"
        "                if m.split('.')[0] in heavy or m.startswith('resilient.integrations'))\n"
        "print(json.dumps(loaded))\n"
    )
    completed = python("-I", "-c", code, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout) == []


def test_detection_of_loaded_modules_works(tmp_path: Path) -> None:
    """
    The check above sees a module once it is imported (so an empty answer means
    something): importing `resilient.integrations` shows up.
    """
    code = (
        "import json, sys\n"
        "import resilient.integrations\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('resilient.'))))\n"
    )
    completed = python("-I", "-c", code, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert "resilient.integrations" in json.loads(completed.stdout)


def test_integrations_import_as_resilient_integrations(tmp_path: Path) -> None:
    """
    Outside the source tree, ``import resilient.integrations`` works and comes from the
    `integrations/` folder. (That an installed wheel has no top-level ``integrations``
    is checked in tests/project/test_packaging.py; the editable install is the project root on
    sys.path, which shows every top-level folder.)
    """
    completed = python(
        "-I",
        "-c",
        "import resilient.integrations as i; print(i.__name__, i.__file__)",
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr
    name, path = completed.stdout.split()
    assert name == "resilient.integrations"
    assert Path(path).parent.name == "integrations"


def test_py_typed_ships() -> None:
    """
    The PEP 561 marker `py.typed` is in the package and declared as package data, so
    wheels carry it too.
    """
    assert importlib.resources.files("resilient").joinpath("py.typed").is_file()
    with (REPO_ROOT / "pyproject.toml").open("rb") as file:
        setuptools = tomllib.load(file)["tool"]["setuptools"]
    assert "py.typed" in setuptools["package-data"]["resilient"]
