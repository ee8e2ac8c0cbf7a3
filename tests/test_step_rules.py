"""The step rules in shared code, unit by unit (the conformance suite asserts them on
every engine)."""

from __future__ import annotations

import functools
import sys

import pytest

from jobkit.errors import PayloadTooLargeError, StepError
from jobkit_engine.runtime import (
    decode_exception,
    encode,
    encode_exception,
    json_size,
    step_ref,
)


def plain(x: int) -> int:
    return x


def _decorated(fn):  # type: ignore[no-untyped-def]
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        return fn(*args, **kwargs)

    return wrapper


def _undecorated(x: int) -> int:
    return x


hidden = _decorated(_undecorated)  # its qualname says "_decorated.<locals>.wrapper"


class Steps:
    @staticmethod
    def static(x: int) -> int:
        return x

    @classmethod
    def klass(cls, x: int) -> int:
        return x


def test_importable_functions_are_accepted() -> None:
    assert step_ref("s", plain) == f"{__name__}:plain"
    assert step_ref("s", Steps.static) == f"{__name__}:Steps.static"
    assert step_ref("s", Steps.klass) == f"{__name__}:Steps.klass"


@pytest.mark.parametrize(
    ("fn", "why"),
    [
        (lambda: 1, "no import path"),
        (functools.partial(plain, 1), "no import path"),
        (hidden, "no import path"),
        (len, "not a step function of the application"),
        (functools.reduce, "not a step function of the application"),
    ],
)
def test_functions_without_a_usable_import_path_are_refused(fn: object, why: str) -> None:
    with pytest.raises(StepError, match=why):
        step_ref("s", fn)  # type: ignore[arg-type]


def test_a_function_shadowed_at_module_level_is_refused() -> None:
    original = globals()["plain"]
    try:
        globals()["plain"] = lambda x: x
        with pytest.raises(StepError, match="does not name this function"):
            step_ref("s", original)
    finally:
        globals()["plain"] = original


def test_json_size_counts_utf8_and_refuses_what_has_no_json() -> None:
    assert json_size({"a": "é"}) == len('{"a":"é"}'.encode())
    with pytest.raises(TypeError):
        json_size("\udce9")
    with pytest.raises(TypeError):
        json_size(float("nan"))


def test_encode_names_what_is_too_large() -> None:
    with pytest.raises(PayloadTooLargeError, match=r"the result of step 's' is 12 bytes") as e:
        encode("x" * 10, "the result of step 's'", 11)
    assert (e.value.size, e.value.limit) == (12, 11)


class Quota(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code
        self.handle = object()


def test_exceptions_round_trip_with_their_class_and_json_attributes() -> None:
    decoded = decode_exception(encode_exception(Quota("too many", 429)))
    assert type(decoded) is Quota
    assert (str(decoded), decoded.code, hasattr(decoded, "handle")) == ("too many", 429, False)
    assert "Quota: too many" in str(decoded.__cause__)


def test_a_class_that_cannot_be_imported_becomes_a_stand_in_of_the_same_name() -> None:
    data = encode_exception(Quota("x", 1)) | {"module": "not_loaded_anywhere", "fatal": True}
    decoded = decode_exception(data)
    assert type(decoded).__name__ == "Quota"
    from jobkit_engine.runtime import FatalStepFailedError

    assert isinstance(decoded, FatalStepFailedError)


def test_key_error_keeps_its_message_as_it_was() -> None:
    decoded = decode_exception(encode_exception(KeyError("k")))
    assert isinstance(decoded, KeyError)
    assert str(decoded) == "'k'"


def _logged(fn):  # type: ignore[no-untyped-def]
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        return fn(*args, **kwargs)

    return wrapper


@_logged
def wrapped(x: int) -> int:
    return x


def test_a_function_decorated_with_wraps_is_accepted() -> None:
    assert step_ref("s", wrapped) == f"{__name__}:wrapped"


def test_a_step_name_never_makes_a_worker_import_a_module() -> None:
    from jobkit_engine.runtime import resolve_ref

    assert resolve_ref(f"{__name__}:plain") is plain
    with pytest.raises(StepError, match="has not imported"):
        resolve_ref("antigravity_is_not_loaded:fly")
    with pytest.raises(StepError, match="not a step function of the application"):
        resolve_ref("os:system")
    assert "antigravity_is_not_loaded" not in __import__("sys").modules


class Heir(Steps):
    pass


def test_an_inherited_classmethod_is_refused_where_a_worker_would_call_another_class() -> None:
    with pytest.raises(StepError, match="inherited by Heir"):
        step_ref("s", Heir.klass)
    assert step_ref("s", Heir.static) == f"{__name__}:Steps.static"  # no class involved


def test_a_temporal_workflow_never_imports_a_module_a_failure_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from jobkit_dispatch.engines.temporal import _steps as temporal_steps

    monkeypatch.setattr(temporal_steps, "_worker_modules", frozenset())
    temporal_steps.remember_worker_modules()
    assert temporal_steps._import_passed_through("json") is __import__("json")
    for module in ("antigravity_is_not_loaded", "jobkit_dispatch.not_a_loaded_submodule"):
        with pytest.raises(ImportError, match="not a module this worker loaded"):
            temporal_steps._import_passed_through(module)
        assert module not in sys.modules


def test_a_forged_step_name_cannot_reach_a_library_function_through_imports() -> None:
    from jobkit_engine.runtime import resolve_ref

    for ref in ("jobkit_engine._steps:sys.exit", f"{__name__}:functools.reduce"):
        with pytest.raises(StepError, match="not a function defined in"):
            resolve_ref(ref)
    with pytest.raises(StepError):
        resolve_ref(f"{__name__}:plain.__globals__")
