"""A real audio-language testbed: ``Qwen2AudioForConditionalGeneration`` from real parts.

* audio tower: the Whisper tiny.en encoder (80 mel bins, d_model 384, 4 layers, 6 heads,
  ffn 1536), converted from the CTranslate2 binary by :mod:`guardrail_testbeds.whisper_ct2`;
  Qwen2-Audio's encoder is Whisper's plus a stride-2 average pool before the final layer norm,
  so the weights map one to one (~25 audio tokens per second of speech);
* language model: Qwen2.5-Coder-0.5B-Instruct (bf16, :mod:`guardrail_testbeds.build`);
* projector: ``Linear(384 -> 896)``, the only weights that do not exist yet (344,960
  parameters). ``build_lalm()`` initialises it fresh (seeded) unless given a trained state.

The tokenizer is the LM's own, plus ``<|AUDIO|>``, ``<|audio_bos|>`` and ``<|audio_eos|>``.
Qwen2.5's tokenizer already uses 151646 (Qwen2-Audio's audio id) for ``<|object_ref_start|>``,
so the three tokens take the first spare rows of the embedding matrix instead: the GGUF
vocabulary pads 151665..151935 with ``[PADnnnnnn]`` fillers, whose rows are untrained; the
fillers at those ids are replaced, no other id changes, and the embedding matrix keeps its
151936 rows. The audio placeholder id is therefore ``AUDIO_TOKEN_ID`` (151665), read from the
tokenizer, and the model's ``config.audio_token_id`` is set to it.

The processor's chat template is Qwen2-Audio's (``Audio N: <|audio_bos|><|AUDIO|><|audio_eos|>``
blocks) with Qwen2.5's default system prompt, so a text-only conversation renders exactly as
the LM's own chat template renders it.

What a training step must save: only the projector (``projector_state_dict(model)``,
``save_projector``): ``weight`` [896, 384] and ``bias`` [896], ~1.4 MB in float32. Everything
else is rebuilt from the cache by ``build_lalm(projector_state=path_or_dict)``.

Speed: the encoder expects 30 s of features (3000 frames). :func:`encode_audio` runs it on the
real frames only (a 3 s clip: ~40x less work) and matches the masked 30 s run closely, so
training can cache encoder outputs once per clip; :func:`audio_embeddings` projects them.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guardrail.defaults import SAMPLING_RATE
from guardrail.testing.tiny import qwen2_audio_template
from guardrail_testbeds import build, whisper_ct2
from guardrail_testbeds.build import TestbedError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedTokenizerBase, Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor

log = logging.getLogger(__name__)

LM_NAME = "qwen2.5-coder-0.5b-instruct"
TESTBED = "qwen2-audio-testbed"  # the name the CLI's --testbed takes
PROJECTOR_FILE = Path(__file__).parent / "parts" / "qwen2-audio-testbed-projector.safetensors"
LORA_FILE = Path(__file__).parent / "parts" / "qwen2-audio-testbed-lora.safetensors"  # optional LM adapter
AUDIO_TOKEN, AUDIO_BOS, AUDIO_EOS = "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"
AUDIO_TOKENS = (AUDIO_TOKEN, AUDIO_BOS, AUDIO_EOS)
# ids they get in the Qwen2.5 tokenizer (first spare rows; asserted when the tokenizer is built)
AUDIO_TOKEN_ID, AUDIO_BOS_ID, AUDIO_EOS_ID = 151665, 151666, 151667
DEFAULT_SYSTEM_PROMPT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
PROJECTOR_KEYS = ("weight", "bias")

# Qwen2-Audio's chat template (transformers' Qwen2AudioProcessor default), with Qwen2.5's
# default system prompt so that text-only chats render exactly like the LM's own template.
CHAT_TEMPLATE = qwen2_audio_template(DEFAULT_SYSTEM_PROMPT)


# --------------------------------------------------------------------------- availability


def missing_parts() -> list[str]:
    """What the cache lacks to build the testbed (empty when ``build_lalm`` can run offline
    without fetching or building anything)."""
    missing = []
    if not (whisper_ct2.is_converted() or build.is_fetched(whisper_ct2.SOURCE)):
        missing.append(f"{whisper_ct2.SOURCE} (python -m guardrail_testbeds.build fetch {whisper_ct2.SOURCE})")
    if not build.is_built(LM_NAME):
        missing.append(f"{LM_NAME} (python -m guardrail_testbeds.build build {LM_NAME})")
    return missing


# --------------------------------------------------------------------------- tokenizer / processor


def _filler(i: int) -> str:
    return f"[PAD{i}]"


def audio_tokenizer_json(tokenizer_json: Mapping[str, Any], embedding_rows: int) -> dict[str, Any]:
    """The LM's ``tokenizer.json`` with the three audio tokens added at spare ids.

    A token already present keeps its id. Otherwise it takes the lowest id above every
    existing added token that is free or held by a ``[PADn]`` filler (replaced, in the GGUF
    layout); ids of real tokens never change. Raises when the embedding matrix has no spare
    row left.
    """
    d = json.loads(json.dumps(tokenizer_json))  # deep copy
    vocab: dict[str, int] = d["model"]["vocab"]
    added: list[dict[str, Any]] = d["added_tokens"]
    by_content = {a["content"]: a["id"] for a in added}
    id_to_vocab = {i: t for t, i in vocab.items()}
    taken = set(vocab.values()) | set(by_content.values())
    # tokenizers keeps an added token's id only when the model vocabulary holds it too (the
    # GGUF-derived tokenizer.json lists every special in both, then [PADn] fillers); tokens
    # outside the vocabulary are numbered after it, in order (the upstream Hugging Face layout)
    in_vocab = bool(added) and all(a["content"] in vocab for a in added)
    next_id = max(a["id"] for a in added) + 1 if in_vocab else max(taken) + 1
    merge_outputs = {(m if isinstance(m, str) else " ".join(m)).replace(" ", "") for m in d["model"].get("merges", [])}
    for content in AUDIO_TOKENS:
        if content in by_content:
            continue
        i = next_id
        while i in taken and id_to_vocab.get(i) != _filler(i):
            i += 1
        if i >= embedding_rows:
            raise TestbedError(f"no spare embedding row for {content} (rows: {embedding_rows}, next id {i})")
        filler = id_to_vocab.get(i)
        if filler is not None:
            if not in_vocab or filler in merge_outputs:
                raise TestbedError(f"{filler} at id {i} is produced by a merge; not a spare slot")
            del vocab[filler]
        if in_vocab:
            vocab[content] = i
        elif i != len(vocab) + len(added):
            raise TestbedError(f"cannot place {content} at id {i}: ids outside the vocabulary are sequential")
        added.append(
            {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
        )  # fmt: skip
        taken.add(i)
        by_content[content] = i
        next_id = i + 1
    added.sort(key=lambda a: a["id"])
    return d


def build_tokenizer(lm_dir: Path | None = None, *, embedding_rows: int | None = None) -> PreTrainedTokenizerBase:
    """The LM's tokenizer with the audio tokens (offline, from the built LM's files)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    lm_dir = lm_dir or build.hf_dir(LM_NAME)
    tj = json.loads((lm_dir / "tokenizer.json").read_text())
    cfg = json.loads((lm_dir / "tokenizer_config.json").read_text())
    if embedding_rows is None:
        embedding_rows = json.loads((lm_dir / "config.json").read_text())["vocab_size"]
    backend = Tokenizer.from_str(json.dumps(audio_tokenizer_json(tj, embedding_rows)))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=cfg.get("bos_token"),
        eos_token=cfg.get("eos_token"),
        pad_token=cfg.get("pad_token"),
        unk_token=cfg.get("unk_token"),
        extra_special_tokens={"audio_token": AUDIO_TOKEN, "audio_bos_token": AUDIO_BOS, "audio_eos_token": AUDIO_EOS},
        padding_side="left",
        model_max_length=32768,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_processor(tokenizer: PreTrainedTokenizerBase | None = None) -> Qwen2AudioProcessor:
    """``Qwen2AudioProcessor``: WhisperFeatureExtractor(80 mel bins), the Qwen tokenizer with
    audio tokens, the Qwen2-Audio chat template."""
    from transformers import Qwen2AudioProcessor, WhisperFeatureExtractor

    tok = tokenizer or build_tokenizer()
    ids = [tok.convert_tokens_to_ids(t) for t in AUDIO_TOKENS]
    if ids != [AUDIO_TOKEN_ID, AUDIO_BOS_ID, AUDIO_EOS_ID]:
        log.warning("audio tokens got ids %s (expected %s)", ids, [AUDIO_TOKEN_ID, AUDIO_BOS_ID, AUDIO_EOS_ID])
    fe = WhisperFeatureExtractor(feature_size=80, sampling_rate=SAMPLING_RATE)
    return Qwen2AudioProcessor(
        feature_extractor=fe, tokenizer=tok, chat_template=CHAT_TEMPLATE,
        audio_token=AUDIO_TOKEN, audio_bos_token=AUDIO_BOS, audio_eos_token=AUDIO_EOS,
    )  # fmt: skip


# --------------------------------------------------------------------------- model


def lalm_config(whisper_config: Any, lm_config: Any, audio_token_id: int) -> Any:
    """``Qwen2AudioConfig`` with Whisper's encoder shape and the LM's text config."""
    from transformers import Qwen2AudioConfig

    text = lm_config.to_dict()
    text["tie_word_embeddings"] = bool(getattr(lm_config, "tie_word_embeddings", False))
    config = Qwen2AudioConfig(
        audio_config={
            "model_type": "qwen2_audio_encoder",
            "num_mel_bins": whisper_config.num_mel_bins,
            "d_model": whisper_config.d_model,
            "encoder_layers": whisper_config.encoder_layers,
            "encoder_attention_heads": whisper_config.encoder_attention_heads,
            "encoder_ffn_dim": whisper_config.encoder_ffn_dim,
            "max_source_positions": whisper_config.max_source_positions,
            "activation_function": whisper_config.activation_function,
            "scale_embedding": False,
            "dropout": 0.0,
            "attention_dropout": 0.0,
            "activation_dropout": 0.0,
        },
        text_config=text,
        audio_token_id=audio_token_id,
    )
    config.architectures = ["Qwen2AudioForConditionalGeneration"]
    return config


def fresh_projector(in_features: int = 384, out_features: int = 896, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """A seeded ``nn.Linear`` initialisation (PyTorch's default), as float32 tensors."""
    import torch

    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        lin = torch.nn.Linear(in_features, out_features)
    finally:
        torch.random.set_rng_state(gen_state)
    return {k: v.detach().clone() for k, v in lin.state_dict().items()}


def projector_state_dict(model: Qwen2AudioForConditionalGeneration) -> dict[str, torch.Tensor]:
    """The trained part: ``{"weight": [896, 384], "bias": [896]}`` (cloned, on CPU)."""
    lin = model.model.multi_modal_projector.linear
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in lin.state_dict().items()}


def save_projector(
    model_or_state: Any, path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None
) -> Path:
    """Save the projector as safetensors (``weight``, ``bias``)."""
    from safetensors.torch import save_file

    state = model_or_state if isinstance(model_or_state, Mapping) else projector_state_dict(model_or_state)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", "kind": "qwen2-audio-testbed projector", "lm": LM_NAME, "audio": whisper_ct2.NAME}
    meta.update(metadata or {})
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=meta)
    return path


def load_projector(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _whisper_encoder_state(dtype: torch.dtype) -> tuple[Any, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file
    from transformers import WhisperConfig

    if not whisper_ct2.is_converted():
        whisper_ct2.convert()
    path = whisper_ct2.hf_path()
    wconf = WhisperConfig.from_pretrained(path)
    sd = load_file(str(path / "model.safetensors"))
    prefix = "model.encoder."
    enc = {k[len(prefix) :]: v.to(dtype) for k, v in sd.items() if k.startswith(prefix)}
    return wconf, enc


def build_lalm(
    projector_state: Mapping[str, torch.Tensor] | str | os.PathLike[str] | None = None,
    *,
    dtype: torch.dtype | None = None,
    audio_dtype: torch.dtype | None = None,
    seed: int = 0,
    build_if_missing: bool = True,
) -> tuple[Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor]:
    """``(Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor)``, eval mode, on CPU.

    ``projector_state``: a trained projector (dict or safetensors path); None gives a fresh
    seeded ``Linear(384, 896)`` (``seed``). The LM is in ``dtype`` (bf16 default, its stored
    precision); the audio tower and projector in ``audio_dtype`` (float32 default: the
    tower's float16 weights widen exactly). ``model.dtype`` is then ``audio_dtype`` (the
    tower's parameters come first), so callers that cast input features to ``model.dtype``
    keep them at full precision; the model casts audio embeddings to the LM's dtype itself.
    All weights are loaded into place, none is initialised at random except a fresh projector.
    """
    import torch
    from transformers import Qwen2AudioForConditionalGeneration

    dtype = dtype or torch.bfloat16
    audio_dtype = audio_dtype or torch.float32
    t0 = time.perf_counter()
    if not build_if_missing and missing_parts():
        raise TestbedError(f"the audio testbed needs: {'; '.join(missing_parts())}")
    wconf, enc_sd = _whisper_encoder_state(audio_dtype)
    lm, _ = build.load(LM_NAME, dtype=dtype, build_if_missing=build_if_missing)
    tok = build_tokenizer(embedding_rows=lm.config.vocab_size)
    processor = build_processor(tok)
    config = lalm_config(wconf, lm.config, tok.convert_tokens_to_ids(AUDIO_TOKEN))
    attn = getattr(lm.config, "_attn_implementation", None) or "sdpa"
    config._attn_implementation = attn
    config.text_config._attn_implementation = attn
    config.audio_config._attn_implementation = "sdpa"

    if projector_state is None:
        proj = fresh_projector(wconf.d_model, lm.config.hidden_size, seed=seed)
    elif isinstance(projector_state, Mapping):
        proj = dict(projector_state)
    else:
        proj = load_projector(projector_state)
    proj = {k.removeprefix("model.multi_modal_projector.linear.").removeprefix("linear."): v for k, v in proj.items()}
    if set(proj) != set(PROJECTOR_KEYS):
        raise TestbedError(f"projector state must hold {PROJECTOR_KEYS}, got {sorted(proj)}")
    want = {"weight": (lm.config.hidden_size, wconf.d_model), "bias": (lm.config.hidden_size,)}
    for k, shape in want.items():
        if tuple(proj[k].shape) != shape:
            raise TestbedError(f"projector {k} has shape {tuple(proj[k].shape)}, expected {shape}")

    sd: dict[str, torch.Tensor] = {}
    for k, v in lm.state_dict().items():
        if k.startswith("model."):
            sd["model.language_model." + k[len("model.") :]] = v
        else:
            sd[k] = v  # lm_head.weight
    sd.update({f"model.audio_tower.{k}": v for k, v in enc_sd.items()})
    sd.update({f"model.multi_modal_projector.linear.{k}": v.to(audio_dtype) for k, v in proj.items()})

    with torch.device("meta"):
        model = Qwen2AudioForConditionalGeneration(config)
    model.load_state_dict(sd, strict=True, assign=True)
    # non-persistent buffers (rotary inv_freq) are not in any state dict: take the LM's module
    model.model.language_model.rotary_emb = lm.model.rotary_emb
    meta = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if meta:
        raise TestbedError(f"audio testbed: tensors left unmaterialised: {meta[:5]}")
    if model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr() and not getattr(
        lm.config, "tie_word_embeddings", False
    ):
        raise TestbedError("lm_head got tied to the embeddings, but the LM's are separate")
    model.generation_config = lm.generation_config
    model.eval()
    log.info("audio testbed assembled in %.1f s", time.perf_counter() - t0)
    return model, processor


def load_testbed() -> tuple[Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor]:
    """The testbed with the parts trained by this project, shipped in the package: the projector
    (``PROJECTOR_FILE``) and, when there is one, the LM's LoRA adapter (``LORA_FILE``, merged
    into the LM's weights). Raises TestbedError when the projector is missing."""
    if not PROJECTOR_FILE.is_file():
        raise TestbedError(
            f"no trained projector at {PROJECTOR_FILE}; train one with "
            "python -m guardrail_testbeds.projector_train (prepare, train, export)"
        )
    model, processor = build_lalm(PROJECTOR_FILE)
    if LORA_FILE.is_file():
        from guardrail_testbeds.lora import load_lora, merge_lora

        merge_lora(model.model.language_model, load_lora(LORA_FILE))
    return model, processor


# --------------------------------------------------------------------------- fast audio path


def encode_audio(
    model: Qwen2AudioForConditionalGeneration, input_features: torch.Tensor, feature_attention_mask: torch.Tensor
) -> list[torch.Tensor]:
    """Audio tower outputs (before the projector) per clip, run on each clip's real frames only.

    ``Qwen2AudioEncoder.forward`` insists on 3000 frames (30 s) and masks the padding; this
    computes the same layers on the first ``n`` frames of each clip (``n`` from the mask, plus
    the two padding frames the convolutions see), with the same position embeddings, the
    stride-2 average pool and the final layer norm; attention covers exactly the keys the
    masked run lets through, so the two agree to float rounding. Returns
    ``[tokens_i, d_model]`` tensors with exactly as many rows as the processor inserts
    ``<|AUDIO|>`` tokens for clip i. Cache these for training: the tower is frozen.
    """
    import torch
    from torch import nn

    tower = model.model.audio_tower
    wdtype = tower.conv1.weight.dtype
    lengths = feature_attention_mask.sum(-1).tolist()
    out = []
    for feats, n in zip(input_features, lengths):
        n = int(n)
        n_conv, n_tokens = (int(v) for v in tower._get_feat_extract_output_lengths(torch.tensor(n)))
        # two frames past the clip: the last kept conv2 position sees conv1 at frame n, which
        # sees frame n + 1 (the feature extractor's padding value, as in the 30 s run)
        x = feats[:, : n + 2].unsqueeze(0).to(device=tower.conv1.weight.device, dtype=wdtype)
        x = nn.functional.gelu(tower.conv1(x))
        x = nn.functional.gelu(tower.conv2(x)).permute(0, 2, 1)[:, :n_conv]
        x = x + tower.embed_positions.weight[:n_conv]
        for layer in tower.layers:
            x = layer(x, None)
            x = x[0] if isinstance(x, tuple) else x
        x = tower.avg_pooler(x.permute(0, 2, 1)).permute(0, 2, 1)
        x = tower.layer_norm(x)
        out.append(x[0, :n_tokens])
    return out


def audio_embeddings(model: Qwen2AudioForConditionalGeneration, encoded: torch.Tensor) -> torch.Tensor:
    """Project encoder outputs (``encode_audio``) into the LM's embedding space."""
    proj = model.model.multi_modal_projector
    return proj(encoded.to(proj.linear.weight.dtype))


def chat(
    processor: Qwen2AudioProcessor, *, audio: Sequence[Any] = (), text: str | None = None, system: str | None = None
) -> str:
    """Render one user turn (audio clips first, then text) with the generation prompt."""
    content: list[dict[str, Any]] = [{"type": "audio", "audio": a} for a in audio]
    if text:
        content.append({"type": "text", "text": text})
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def inputs_embeds_with_audio(
    model: Qwen2AudioForConditionalGeneration, input_ids: torch.Tensor, encoded: Sequence[torch.Tensor]
) -> torch.Tensor:
    """The LM's input embeddings with each ``<|AUDIO|>`` run replaced by the projected
    ``encoded`` clips (from :func:`encode_audio`, in order): what the model's own forward
    builds, without running the 30 s encoder. Pass the result as ``inputs_embeds`` (with the
    processor's ``attention_mask``) to ``model(...)`` or ``model.generate(...)``; gradients
    flow into the projector."""
    import torch

    embed = model.get_input_embeddings()
    embeds = embed(input_ids)
    mask = input_ids == model.config.audio_token_id
    feats = torch.cat([audio_embeddings(model, e) for e in encoded], dim=0) if encoded else embeds.new_zeros(0)
    if int(mask.sum()) != feats.shape[0]:
        raise ValueError(f"{int(mask.sum())} audio tokens in input_ids but {feats.shape[0]} encoded audio frames")
    return embeds.masked_scatter(mask.unsqueeze(-1), feats.to(embeds.dtype))
