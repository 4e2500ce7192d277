"""The package root exports what an application needs, and nothing private."""

import importlib
import warnings

import pytest

import guardrail
from guardrail import errors


def test_every_exported_name_resolves():
    for name in guardrail.__all__:
        assert getattr(guardrail, name) is not None, name


def test_every_error_is_exported_and_in_one_hierarchy():
    classes = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, Exception)]
    assert {c.__name__ for c in classes} <= set(guardrail.__all__)
    assert all(issubclass(c, errors.GuardrailError) for c in classes)
    # the module docstring's tree names every class
    assert all(c.__name__ in errors.__doc__ for c in classes)


def test_input_errors_are_value_or_type_errors():
    for name in (
        "AudioInputError",
        "AudioTypeError",
        "UnsupportedModelError",
        "ArtifactError",
        "PolicyError",
        "RequestError",
        "ProbeError",
        "UnsupportedContentError",
        "UnsupportedMessageError",
        "DeviceError",
    ):
        assert issubclass(getattr(errors, name), (ValueError, TypeError)), name


def test_adapter_names_moved_to_models_with_a_warning():
    with pytest.warns(DeprecationWarning, match="guardrail.models.resolve_adapter"):
        moved = guardrail.resolve_adapter
    assert moved is importlib.import_module("guardrail.models").resolve_adapter
    with pytest.raises(AttributeError):
        guardrail.no_such_name  # noqa: B018


def test_chat_model_is_lazy():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from guardrail.integrations.langchain import GuardedChatModel
    assert guardrail.GuardedChatModel is GuardedChatModel
