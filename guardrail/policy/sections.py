"""The policy sections about serving rather than steering: `runtime` (where and how the model runs),
`limits`, `input` and `logging`, and the `Section` base every policy section shares (strict: an unknown
key is an error; checked on assignment too). `guardrail.policy.schema` assembles them into `Policy`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, field_validator, model_validator

from guardrail.models.placement import (
    DEVICE_MAP_STRATEGIES,
    DeviceMap,
    DeviceMapStrategy,
    DtypeName,
    Placement,
    check_device_name,
)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LimitsPolicy(Section):
    """Per-request limits; requests beyond them are rejected with a RequestError/AudioInputError."""

    max_audio_seconds: float = Field(
        default=30.0, gt=0, le=3600, allow_inf_nan=False, description="longest accepted audio clip, in seconds"
    )
    max_new_tokens: int = Field(default=512, ge=1, le=1_000_000, description="most tokens one request may generate")
    max_batch: int = Field(default=32, ge=1, le=4096, description="most requests generated together in one batch")
    max_text_chars: int = Field(
        default=32_000,
        ge=1,
        le=100_000_000,
        description="longest accepted request text, in characters (checked before tokenizing)",
    )
    max_prompt_tokens: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="longest accepted prompt, in tokens; null = the model's context length minus max_new_tokens",
    )


class InputPolicy(Section):
    """What request content the guard accepts beyond plain text and audio."""

    special_tokens: Literal["refuse", "escape"] = Field(
        default="refuse",
        description="user text containing the tokenizer's special tokens (role markers such as <|im_start|>): "
        "refuse with a RequestError, or escape them so they are read as plain text",
    )
    audio_dirs: list[str] = Field(
        default_factory=list,
        description="local directories that file:// audio URLs may read from (LangChain, server); "
        "empty = file URLs are refused",
    )


def _device_map(value: Any) -> str | dict[str, int | str] | None:
    """A strategy name or {module: GPU index, 'cpu', 'disk' or a device}; one error message for both forms."""
    if value is None or value in DEVICE_MAP_STRATEGIES:
        return value
    if isinstance(value, Mapping) and value and all(_module(k) and _map_target(v) for k, v in value.items()):
        return dict(value)
    raise ValueError("not a placement strategy, nor a non-empty mapping of module names to devices")


def _module(key: Any) -> bool:
    return isinstance(key, str)


def _map_target(value: Any) -> bool:
    """A GPU index or a device name (bool is an int to Python, not a GPU)."""
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool) and value >= 0)


PolicyDeviceMap = Annotated[
    DeviceMapStrategy | dict[str, int | str] | None,
    PlainValidator(_device_map, json_schema_input_type=DeviceMapStrategy | dict[str, int | str] | None),
]


class RuntimePolicy(Section):
    """Where the guarded model loads (device, dtype, device_map: read by `Guard.from_policy`, `guardrail run`
    and `calibrate`) and how it generates (steering follows it onto the compiled path)."""

    device: str | None = Field(
        default=None,
        examples=["cuda"],
        description="one device for the whole model: 'cuda', 'cuda:1', 'cpu', 'mps', or 'auto' (the first GPU "
        "when torch sees one, else the CPU); null = where transformers loads it (the CPU). Exclusive with "
        "device_map; a device the machine lacks fails when the model loads",
    )
    dtype: DtypeName = Field(
        default="auto", description="weights' precision when the model loads; auto = the checkpoint's own"
    )
    device_map: PolicyDeviceMap = Field(
        default=None,
        description="spread the model's layers over devices with accelerate (pip install accelerate): "
        f"{', '.join(DEVICE_MAP_STRATEGIES)}, or a mapping of module names to a GPU index, 'cpu', 'disk' or "
        "a device ('cuda:1'); null = one device (see device). Exclusive with device",
    )
    cache: Literal["dynamic", "static"] = Field(
        default="dynamic", description="KV cache: dynamic (grows per step) or static (fixed size, what compile needs)"
    )
    compile: bool = Field(
        default=False,
        description="torch.compile the decoding step (transformers' generate "
        "compiles it; needs cache: static); steering stays in the graph",
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str | None) -> str | None:
        return None if value is None else check_device_name(value)

    @model_validator(mode="after")
    def _consistent(self) -> RuntimePolicy:
        if self.compile and self.cache != "static":
            raise ValueError(
                "runtime.compile: true needs runtime.cache: static (a compiled decoding step needs "
                "a fixed-size KV cache)"
            )
        if self.device is not None and self.device_map is not None:
            raise ValueError(
                "runtime.device and runtime.device_map are exclusive: device puts the whole model on one "
                "device, device_map spreads its layers over devices; set one of them"
            )
        return self

    def placement(
        self, *, dtype: str | None = None, device: str | None = None, device_map: DeviceMap | None = None
    ) -> Placement:
        """`load_model`'s placement arguments: what the caller gives wins, the rest comes from this section.
        A caller's `device` or `device_map` replaces the section's placement entirely (both of its fields),
        so a policy's device_map never meets a caller's device."""
        chosen = device is not None or device_map is not None
        section_map = dict(self.device_map) if isinstance(self.device_map, Mapping) else self.device_map
        return Placement(
            dtype=dtype or self.dtype,
            device=device if chosen else self.device,
            device_map=device_map if chosen else section_map,
        )


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


class LoggingPolicy(Section):
    """Decision logs (one event per request)."""

    level: Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)] = Field(
        default="info", description="least severe level emitted"
    )
    log_content: bool = Field(
        default=False,
        description="include prompt and response text in log events; off by default so content stays out of logs",
    )
    format: Literal["json", "console", "auto"] = Field(
        default="auto",
        description="json: one JSON object per line; console: readable; auto: console on a terminal, json otherwise",
    )
