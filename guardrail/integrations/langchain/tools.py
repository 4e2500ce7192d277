"""Tool calling and structured output for `GuardedChatModel`: tools bound as OpenAI function schemas (shown to
the model by its chat template), LangChain's tool choices in the guard's words, and `with_structured_output`
by tool calling (the default; "json_schema" too) or by JSON mode (the answer opens with "{")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any

from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass

__all__ = [
    "CALL_ARGUMENTS",
    "STRUCTURED_METHODS",
    "json_mode_format",
    "json_mode_parser",
    "request_options",
    "tool_choice_of",
    "tool_schemas",
    "with_raw",
]

# per-call arguments that shape the request rather than generation
CALL_ARGUMENTS = ("tools", "tool_choice", "parallel_tool_calls", "response_format")
STRUCTURED_METHODS = ("function_calling", "json_schema", "json_mode")


def tool_schemas(tools: Sequence[Any]) -> list[dict[str, Any]]:
    """Tools (pydantic models, functions, `BaseTool`s, dicts) as OpenAI function schemas."""
    return [convert_to_openai_tool(tool) for tool in tools]


def tool_choice_of(choice: Any) -> Any:
    """LangChain's tool choice as the guard's: True and "any" mean "required"; a dict names its function."""
    if choice is True or choice == "any":
        return "required"
    if isinstance(choice, Mapping):
        return (choice.get("function") or {}).get("name") or choice.get("name")
    return choice


def request_options(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The request-shaping arguments of a call (tools, tool_choice, response_format), in the guard's form."""
    options = {k: kwargs[k] for k in ("tools", "tool_choice", "response_format") if kwargs.get(k) is not None}
    if "tool_choice" in options:
        options["tool_choice"] = tool_choice_of(options["tool_choice"])
    return options


def json_mode_parser(schema: Any) -> Runnable[AIMessage, Any]:
    """The parser of a JSON-mode answer: into `schema` when it is a pydantic model, else a dict."""
    if isinstance(schema, type) and is_basemodel_subclass(schema):
        return PydanticOutputParser(pydantic_object=schema)
    return JsonOutputParser()


def json_mode_format(schema: Any) -> dict[str, Any]:
    """The `ls_structured_output_format` run option for JSON mode, as LangChain's models send it."""
    return {"kwargs": {"method": "json_mode"}, "schema": convert_to_json_schema(schema) if schema else None}


def with_raw(
    llm: Runnable[LanguageModelInput, AIMessage], parser: Runnable[AIMessage, Any], include_raw: bool
) -> Runnable[LanguageModelInput, Any]:
    """`llm | parser`, or with `include_raw` a dict of the raw message, the parsed value (None when parsing
    failed) and the parsing error."""
    if not include_raw:
        return llm | parser
    parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
    failed = RunnablePassthrough.assign(parsed=lambda _: None)
    return RunnableMap(raw=llm) | parsed.with_fallbacks([failed], exception_key="parsing_error")
