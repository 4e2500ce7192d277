"""The real audio testbed's foundations: CTranslate2 Whisper conversion, espeak-ng speech, and
the Qwen2-Audio assembly (Whisper tiny.en tower + Qwen2.5-Coder-0.5B LM).

Fast tier: the CTranslate2 parser and the Whisper weight mapping on tiny files written here,
the tokenizer surgery on synthetic tokenizer.json files, seeded voices, espeak-ng synthesis
(skipped without the ``espeak-ng`` Debian package), the fast audio-encoder path on a tiny
random Qwen2-Audio. Slow tier (``python -m pytest -m slow``): real weights from the cache,
skipped when the cache lacks them; never downloads.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from guardrail_testbeds import build, lalm, speech, whisper_ct2
from guardrail_testbeds.whisper_ct2 import CT2FormatError, read_ct2, whisper_config, whisper_state_dict

needs_espeak = pytest.mark.skipif(
    not speech.have_espeak(), reason=f"espeak-ng not installed: apt-get install -y {speech.ESPEAK_PACKAGE}"
)

# --------------------------------------------------------------------------- a CTranslate2 writer
# Written from the format description (CTranslate2 ModelSpec.save, binary version 6), independent
# of the parser under test.

_NP_TO_CT2 = {
    np.dtype("float32"): 0,
    np.dtype("int8"): 1,
    np.dtype("int16"): 2,
    np.dtype("int32"): 3,
    np.dtype("float16"): 4,
}


def _ct2_string(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<H", len(b) + 1) + b + b"\0"


def write_ct2(
    path: Path,
    variables: dict[str, np.ndarray],
    aliases: dict[str, str] | None = None,
    *,
    spec: str = "WhisperSpec",
    revision: int = 3,
    version: int = 6,
) -> Path:
    out = bytearray(struct.pack("<I", version))
    out += _ct2_string(spec) + struct.pack("<I", revision) + struct.pack("<I", len(variables))
    for name, value in variables.items():
        value = np.array(value, order="C")  # (ascontiguousarray would make scalars 1-d)
        out += _ct2_string(name) + struct.pack("<B", value.ndim)
        out += b"".join(struct.pack("<I", d) for d in value.shape)
        raw = value.astype(value.dtype.newbyteorder("<")).tobytes()
        out += struct.pack("<B", _NP_TO_CT2[value.dtype]) + struct.pack("<I", len(raw)) + raw
    aliases = aliases or {}
    out += struct.pack("<I", len(aliases))
    for a, t in aliases.items():
        out += _ct2_string(a) + _ct2_string(t)
    path.write_bytes(bytes(out))
    return path


def test_ct2_parser_reads_every_dtype_scalars_and_aliases(tmp_path):
    rng = np.random.default_rng(0)
    variables = {
        "a/weight": rng.standard_normal((3, 4)).astype(np.float16),
        "a/bias": rng.standard_normal(3).astype(np.float32),
        "b/flag": np.array(1, dtype=np.int8),
        "b/num_heads": np.array(6, dtype=np.int16),
        "b/ids": np.arange(5, dtype=np.int32),
        "ünï/cöde": np.zeros((2, 0, 3), dtype=np.float32),
    }
    model = read_ct2(write_ct2(tmp_path / "model.bin", variables, {"c/projection": "a/weight"}))
    assert (model.spec, model.revision, model.binary_version) == ("WhisperSpec", 3, 6)
    assert set(model.variables) == set(variables)
    for name, want in variables.items():
        got = model.variables[name]
        assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
    assert model.scalar("b/num_heads") == 6 and model.scalar("b/flag") == 1
    assert np.array_equal(model.get("c/projection"), variables["a/weight"]) and "c/projection" in model
    assert whisper_ct2.to_torch(model, "a/weight").dtype == torch.float16


def test_ct2_parser_bfloat16_bits(tmp_path):
    want = torch.tensor([1.5, -2.25, 3.0e-3], dtype=torch.bfloat16)
    path = write_ct2(tmp_path / "m.bin", {"x": want.view(torch.int16).numpy()})
    raw = bytearray(path.read_bytes())
    # patch the dtype byte (int16 id 2 -> bfloat16 id 5): it follows the name, the rank and one dim
    pos = 4 + 2 + len("WhisperSpec") + 1 + 4 + 4 + 2 + 2 + 1 + 4
    assert raw[pos] == 2
    raw[pos] = 5
    path.write_bytes(bytes(raw))
    model = read_ct2(path)
    assert torch.equal(whisper_ct2.to_torch(model, "x"), want)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: struct.pack("<I", 2) + b[4:], "binary version 2"),
        (lambda b: b[:-9], "truncated"),
        (lambda b: b + b"\0", "unexpected data"),
    ],
)
def test_ct2_parser_rejects_damaged_files(tmp_path, damage, message):
    path = write_ct2(tmp_path / "m.bin", {"w": np.ones((2, 2), np.float32)}, {"v": "w"})
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CT2FormatError, match=message):
        read_ct2(path)


def test_ct2_parser_rejects_bad_alias_and_size(tmp_path):
    with pytest.raises(CT2FormatError, match="unknown variable"):
        read_ct2(write_ct2(tmp_path / "a.bin", {"w": np.ones(2, np.float32)}, {"v": "nope"}))
    path = write_ct2(tmp_path / "b.bin", {"w": np.ones(2, np.float32)})
    raw = bytearray(path.read_bytes())
    size_at = raw.index(struct.pack("<I", 8))  # n_bytes of w
    raw[size_at : size_at + 4] = struct.pack("<I", 12)
    path.write_bytes(bytes(raw))
    with pytest.raises(CT2FormatError, match="should hold 8 bytes"):
        read_ct2(path)


# --------------------------------------------------------------------------- Whisper mapping round trip

_TINY = dict(
    d_model=16,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    encoder_ffn_dim=24,
    decoder_ffn_dim=24,
    num_mel_bins=8,
    max_source_positions=6,
    max_target_positions=12,
    vocab_size=51864,
    pad_token_id=50256,
)


def _hf_to_ct2(model) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Export a transformers Whisper into CTranslate2's layout, as ct2's converter does."""
    sd = {k: v.detach().numpy().astype(np.float16) for k, v in model.state_dict().items()}
    v: dict[str, np.ndarray] = {}

    def lin(dst, src, bias=True):
        v[f"{dst}/weight"] = sd[f"{src}.weight"]
        if bias:
            v[f"{dst}/bias"] = sd[f"{src}.bias"]

    def norm(dst, src):
        v[f"{dst}/gamma"], v[f"{dst}/beta"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def zeros_like_bias(src):
        return np.zeros_like(sd[f"{src}.q_proj.bias"])

    def qkv(dst, src):
        v[f"{dst}/weight"] = np.concatenate([sd[f"{src}.{p}_proj.weight"] for p in "qkv"])
        v[f"{dst}/bias"] = np.concatenate([sd[f"{src}.q_proj.bias"], zeros_like_bias(src), sd[f"{src}.v_proj.bias"]])

    cfg = model.config
    for stack, n in (("encoder", cfg.encoder_layers), ("decoder", cfg.decoder_layers)):
        for i in range(n):
            s, d = f"model.{stack}.layers.{i}", f"{stack}/layer_{i}"
            qkv(f"{d}/self_attention/linear_0", f"{s}.self_attn")
            lin(f"{d}/self_attention/linear_1", f"{s}.self_attn.out_proj")
            norm(f"{d}/self_attention/layer_norm", f"{s}.self_attn_layer_norm")
            lin(f"{d}/ffn/linear_0", f"{s}.fc1")
            lin(f"{d}/ffn/linear_1", f"{s}.fc2")
            norm(f"{d}/ffn/layer_norm", f"{s}.final_layer_norm")
            if stack == "decoder":
                x = f"{s}.encoder_attn"
                lin(f"{d}/attention/linear_0", f"{x}.q_proj")
                kv = [sd[f"{x}.k_proj.weight"], sd[f"{x}.v_proj.weight"]]
                v[f"{d}/attention/linear_1/weight"] = np.concatenate(kv)
                v[f"{d}/attention/linear_1/bias"] = np.concatenate([zeros_like_bias(x), sd[f"{x}.v_proj.bias"]])
                lin(f"{d}/attention/linear_2", f"{x}.out_proj")
                norm(f"{d}/attention/layer_norm", f"{s}.encoder_attn_layer_norm")
        norm(f"{stack}/layer_norm", f"model.{stack}.layer_norm")
        v[f"{stack}/num_heads"] = np.array(2, np.int16)
        v[f"{stack}/position_encodings/encodings"] = sd[f"model.{stack}.embed_positions.weight"]
    lin("encoder/conv1", "model.encoder.conv1")
    lin("encoder/conv2", "model.encoder.conv2")
    v["decoder/embeddings/weight"] = sd["model.decoder.embed_tokens.weight"]
    v.update(
        {
            "decoder/activation": np.array(3, np.int8),
            "decoder/pre_norm": np.array(1, np.int8),
            "decoder/scale_embeddings": np.array(0, np.int8),
            "decoder/alibi": np.array(0, np.int8),
        }
    )
    return v, {"decoder/projection/weight": "decoder/embeddings/weight"}


@pytest.fixture(scope="module")
def tiny_whisper():
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(WhisperConfig(**_TINY)).eval()
    with torch.no_grad():  # make every bias non-trivial so a misplaced one shows
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    return model.half().float()  # values representable in float16, as in the CT2 file


def test_whisper_mapping_round_trip_gives_identical_logits(tmp_path, tiny_whisper):
    from transformers import WhisperForConditionalGeneration

    variables, aliases = _hf_to_ct2(tiny_whisper)
    ct2 = read_ct2(write_ct2(tmp_path / "model.bin", variables, aliases))
    config = whisper_config(ct2, {"suppress_ids": [1, 2], "suppress_ids_begin": [220, 50256]})
    for key, want in _TINY.items():
        assert getattr(config, key) == want, key
    assert config.suppress_tokens == [1, 2] and config.tie_word_embeddings
    sd = whisper_state_dict(ct2)
    assert all(t.dtype == torch.float16 for t in sd.values())
    converted = WhisperForConditionalGeneration(config).eval()
    missing, unexpected = converted.load_state_dict(sd, strict=False)
    assert set(missing) <= {"proj_out.weight"} and not unexpected
    converted.float()
    feats = torch.randn(2, 8, 12, generator=torch.Generator().manual_seed(1))
    dec = torch.tensor([[50257, 50362, 11, 22], [50257, 50362, 33, 44]])
    with torch.no_grad():
        want = tiny_whisper(input_features=feats, decoder_input_ids=dec).logits
        got = converted(input_features=feats, decoder_input_ids=dec).logits
    assert torch.equal(got, want)


def test_whisper_mapping_rejects_wrong_model(tmp_path, tiny_whisper):
    variables, aliases = _hf_to_ct2(tiny_whisper)
    with pytest.raises(CT2FormatError, match="WhisperSpec"):
        whisper_config(read_ct2(write_ct2(tmp_path / "a.bin", variables, aliases, spec="TransformerSpec")))
    bad = dict(variables)
    key = "encoder/layer_0/self_attention/linear_0/bias"
    bad[key] = np.ones_like(bad[key])
    with pytest.raises(CT2FormatError, match="key bias is not zero"):
        whisper_state_dict(read_ct2(write_ct2(tmp_path / "b.bin", bad, aliases)))
    bad = dict(variables, **{"decoder/activation": np.array(0, np.int8)})
    with pytest.raises(CT2FormatError, match="GELU"):
        whisper_config(read_ct2(write_ct2(tmp_path / "c.bin", bad, aliases)))
    bad = dict(variables, **{"encoder/extra/weight": np.ones(2, np.float16)})
    with pytest.raises(CT2FormatError, match="unmapped"):
        whisper_state_dict(read_ct2(write_ct2(tmp_path / "d.bin", bad, aliases)))


def test_word_error_rate():
    wer = whisper_ct2.word_error_rate
    assert wer("The quick brown fox.", " the quick, brown fox") == 0.0
    assert wer("a b c d", "a x c") == pytest.approx(0.5)
    assert wer("one two", "") == 1.0 and wer("", "") == 0.0


# --------------------------------------------------------------------------- tokenizer surgery


def _tokenizer_json(gguf_style: bool) -> dict:
    """A byte-level BPE tokenizer.json shaped like Qwen2.5's: specials as added tokens; in the
    GGUF style the vocabulary also holds the specials and [PADn] fillers up to 12 rows."""
    alphabet = ["a", "b", "Ġ"]
    vocab = {t: i for i, t in enumerate(alphabet + ["ab"])}
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>"]
    added = [
        {
            "id": 4 + i,
            "content": s,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, s in enumerate(specials)
    ]
    if gguf_style:
        vocab.update({s: 4 + i for i, s in enumerate(specials)})
        vocab.update({f"[PAD{i}]": i for i in range(8, 12)})
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [["a", "b"]],
        },
    }


@pytest.mark.parametrize("gguf_style", [True, False])
def test_audio_tokens_take_spare_rows_without_moving_ids(gguf_style):
    from tokenizers import Tokenizer

    base = _tokenizer_json(gguf_style)
    out = lalm.audio_tokenizer_json(base, embedding_rows=12)
    before, after = Tokenizer.from_str(json.dumps(base)), Tokenizer.from_str(json.dumps(out))
    assert [after.token_to_id(t) for t in lalm.AUDIO_TOKENS] == [8, 9, 10]
    for token, i in before.get_vocab().items():
        if not token.startswith("[PAD"):
            assert after.token_to_id(token) == i, token
    assert after.get_vocab_size() <= 12
    text = "ab<|AUDIO|>a<|audio_bos|><|im_end|>b"
    assert after.encode(text).ids == [3, 8, 0, 9, 6, 1]
    assert lalm.audio_tokenizer_json(out, embedding_rows=12) == out  # idempotent
    with pytest.raises(build.TestbedError, match="no spare embedding row"):
        lalm.audio_tokenizer_json(base, embedding_rows=9)


def test_chat_template_renders_audio_blocks():
    from jinja2 import Template

    msgs = [{"role": "user", "content": [{"type": "audio", "audio": "x.wav"}, {"type": "text", "text": "What?"}]}]
    out = Template(lalm.CHAT_TEMPLATE).render(messages=msgs, add_generation_prompt=True)
    assert out == (
        "<|im_start|>system\n" + lalm.DEFAULT_SYSTEM_PROMPT + "<|im_end|>\n<|im_start|>user\n"
        "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\nWhat?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_projector_state_round_trip(tmp_path):
    state = lalm.fresh_projector(seed=3)
    assert {k: tuple(v.shape) for k, v in state.items()} == {"weight": (896, 384), "bias": (896,)}
    assert sum(v.numel() for v in state.values()) == 344_960
    assert torch.equal(state["weight"], lalm.fresh_projector(seed=3)["weight"])
    assert not torch.equal(state["weight"], lalm.fresh_projector(seed=4)["weight"])
    back = lalm.load_projector(lalm.save_projector(state, tmp_path / "projector.safetensors"))
    assert all(torch.equal(back[k], state[k]) for k in state)


# --------------------------------------------------------------------------- fast audio path


def test_encode_audio_matches_the_masked_30s_run():
    """On a tiny random Qwen2-Audio: the real-frames-only encoder equals the model's own masked
    run, and the merged embeddings reproduce the model's forward."""
    from transformers.masking_utils import create_bidirectional_mask

    from guardrail.testing.tiny import build_tiny, tiny_audio

    model, processor = build_tiny("qwen2_audio", seed=0)
    model.float().eval()
    clips = [tiny_audio(1.3, 16_000, seed=1), tiny_audio(0.4, 16_000, seed=2)]
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "audio", "audio": "a"}, {"type": "text", "text": "hi"}]}],
            add_generation_prompt=True,
            tokenize=False,
        )
    ] * 2
    inp = processor(text=texts, audio=clips, sampling_rate=16_000, return_tensors="pt", padding=True)
    tower = model.model.audio_tower
    conv_len, n_tokens = tower._get_feat_extract_output_lengths(inp.feature_attention_mask.sum(-1))
    mask2d = (torch.arange(tower.config.max_source_positions)[None] < conv_len[:, None]).long()
    mask = create_bidirectional_mask(
        config=tower.config, inputs_embeds=torch.zeros(2, mask2d.shape[1], 1), attention_mask=mask2d
    )
    with torch.inference_mode():
        full = tower(inp.input_features, attention_mask=mask).last_hidden_state
        fast = lalm.encode_audio(model, inp.input_features, inp.feature_attention_mask)
        for i, enc in enumerate(fast):
            assert enc.shape[0] == int(n_tokens[i]) == int((inp.input_ids[i] == model.config.audio_token_id).sum())
            torch.testing.assert_close(enc, full[i, : n_tokens[i]], atol=1e-4, rtol=1e-4)
        ref = model(**inp).logits
        embeds = lalm.inputs_embeds_with_audio(model, inp.input_ids, fast)
        got = model(inputs_embeds=embeds, attention_mask=inp.attention_mask).logits
        with pytest.raises(ValueError, match="audio tokens"):
            lalm.inputs_embeds_with_audio(model, inp.input_ids, fast[:1])
    keep = inp.attention_mask.bool()
    torch.testing.assert_close(got[keep], ref[keep], atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- speech


def test_voices_are_seeded_and_varied():
    a, b = speech.voices(7, 40), speech.voices(7, 40)
    assert a == b and a != speech.voices(8, 40)
    assert len({v.voice for v in a}) > 10
    for v in a:
        accent, _, variant = v.voice.partition("+")
        assert accent in speech.ACCENTS and variant in speech.VARIANTS
        assert speech.SPEED_RANGE[0] <= v.speed <= speech.SPEED_RANGE[1]
        assert speech.PITCH_RANGE[0] <= v.pitch <= speech.PITCH_RANGE[1]
    hard = speech.voices(7, 10, accents=speech.HARD_ACCENTS, variants=speech.HARD_VARIANTS)
    assert all(v.voice.partition("+")[0] in speech.HARD_ACCENTS for v in hard)
    assert speech.voice_for("item-3", seed=1) == speech.voice_for("item-3", seed=1)
    assert len({speech.voice_for(f"item-{i}") for i in range(30)}) > 20
    assert str(speech.Voice("en-gb+f3", 150, 40)) == "en-gb+f3@150wpm/p40"


def test_missing_espeak_names_the_package(monkeypatch):
    monkeypatch.setattr(speech.shutil, "which", lambda name: None)
    with pytest.raises(speech.SpeechSynthesisError, match=r"apt-get install -y espeak-ng"):
        speech.speak("hello", cache=False)


@needs_espeak
def test_speak_gives_16khz_float32_and_caches(tmp_path):
    x = speech.speak("Hello there, how are you?", "en-gb+f3", 150, 40, cache=tmp_path)
    assert x.dtype == np.float32 and x.ndim == 1
    assert 0.8 < len(x) / 16_000 < 4.0 and 0.05 < np.abs(x).max() <= 1.0
    assert len(list(tmp_path.rglob("*.wav"))) == 1
    again = speech.speak("Hello there, how are you?", "en-gb+f3", 150, 40, cache=tmp_path)
    assert np.array_equal(x, again)
    fresh = speech.speak("Hello there, how are you?", "en-gb+f3", 150, 40, cache=False)
    assert np.array_equal(x, fresh)  # espeak-ng is deterministic
    slower = speech.speak("Hello there, how are you?", "en-gb+f3", 100, 40, cache=False)
    assert len(slower) > 1.2 * len(x)
    at8k = speech.speak("Hello there, how are you?", "en-gb+f3", 150, 40, sr=8000, cache=tmp_path)
    assert abs(len(at8k) * 2 - len(x)) <= 2


@needs_espeak
def test_speak_rejects_bad_input():
    with pytest.raises(speech.SpeechSynthesisError, match="empty"):
        speech.speak("   ", cache=False)
    with pytest.raises(ValueError, match="pitch"):
        speech.speak("hi", pitch=120, cache=False)
    with pytest.raises(speech.SpeechSynthesisError):
        speech.speak("hi", voice="xx-nonexistent-voice", cache=False)


@needs_espeak
def test_text_is_not_parsed_as_options():
    x = speech.speak("--help -v", cache=False)
    assert len(x) > 1000


# --------------------------------------------------------------------------- slow: real weights

_whisper_cached = whisper_ct2.is_converted() or build.is_fetched(whisper_ct2.SOURCE)
needs_whisper = pytest.mark.skipif(
    not _whisper_cached, reason=f"Whisper not cached: python -m guardrail_testbeds.build fetch {whisper_ct2.SOURCE}"
)
needs_lalm = pytest.mark.skipif(
    bool(lalm.missing_parts()), reason=f"audio testbed parts not cached: {'; '.join(lalm.missing_parts())}"
)

SENTENCES = [
    "The weather is nice today.",
    "Please write a short poem about the sea.",
    "What is the capital of France?",
    "I would like a cup of tea.",
    "Tell me a story about a dragon.",
    "How many days are in a week?",
    "Can you help me with my homework?",
    "The children are playing in the garden.",
    "Where is the nearest train station?",
    "Thank you very much for your help.",
]


@pytest.fixture(scope="module")
def whisper():
    return whisper_ct2.load_whisper()


@pytest.mark.slow
@needs_whisper
def test_converted_whisper_is_tiny_en(whisper):
    model, processor = whisper
    c = model.config
    assert (
        c.num_mel_bins,
        c.d_model,
        c.encoder_layers,
        c.decoder_layers,
        c.encoder_attention_heads,
        c.decoder_attention_heads,
        c.encoder_ffn_dim,
        c.vocab_size,
    ) == (80, 384, 4, 4, 6, 6, 1536, 51864)
    assert processor.feature_extractor.feature_size == 80
    assert whisper_ct2.convert() == whisper_ct2.hf_path()  # idempotent: returns at once


@pytest.mark.slow
@needs_whisper
@needs_espeak
def test_whisper_transcribes_espeak_speech(whisper):
    model, processor = whisper
    clips = [speech.speak(s, "en-us", 130, 50, cache=False) for s in SENTENCES]
    hyps = whisper_ct2.transcribe(model, processor, clips)
    words = [len(whisper_ct2.normalise_words(s)) for s in SENTENCES]
    errors = [whisper_ct2.word_error_rate(r, h) * n for r, h, n in zip(SENTENCES, hyps, words)]
    wer = sum(errors) / sum(words)
    exact = sum(e == 0 for e in errors)
    # measured: WER 0.12, 7/10 exact (espeak's formant voice is hard for tiny.en)
    assert wer <= 0.25 and exact >= 5, list(zip(SENTENCES, hyps))


@pytest.mark.slow
@needs_whisper
def test_converted_encoder_matches_ctranslate2_itself(whisper):
    """Cross-check against the CTranslate2 runtime (not a dependency: skipped without it).
    Measured: encoder max |diff| 3.8e-5 (scale 12.5), identical greedy transcripts."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    model, processor = whisper
    clip = np.sin(np.linspace(0, 900, 32_000)).astype(np.float32) * np.linspace(0, 0.5, 32_000, dtype=np.float32)
    feats = processor.feature_extractor([clip], sampling_rate=16_000, return_tensors="np").input_features
    ct = ctranslate2.models.Whisper(str(build.testbed_dir(whisper_ct2.SOURCE)), device="cpu", compute_type="float32")
    want = np.array(ct.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(feats))))
    with torch.inference_mode():
        got = model.model.encoder(torch.from_numpy(feats)).last_hidden_state.numpy()
    assert np.abs(got - want).max() < 1e-3


@pytest.fixture(scope="module")
def testbed():
    return lalm.build_lalm()


@pytest.mark.slow
@needs_lalm
def test_lalm_text_logits_equal_the_standalone_lm(testbed):
    from guardrail.models import resolve_adapter

    model, processor = testbed
    assert resolve_adapter(model).name == "qwen2_audio"
    assert model.config.audio_token_id == lalm.AUDIO_TOKEN_ID
    assert sum(p.numel() for p in model.model.multi_modal_projector.parameters()) == 344_960
    lm, tok = build.load(lalm.LM_NAME)
    msgs = [{"role": "user", "content": "How do I bake bread at home?"}]
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == prompt
    ids = tok(prompt, return_tensors="pt").input_ids
    assert torch.equal(processor.tokenizer(prompt, return_tensors="pt").input_ids, ids)
    with torch.inference_mode():
        assert torch.equal(model(input_ids=ids).logits, lm(ids).logits)


@pytest.mark.slow
@needs_lalm
@needs_espeak
def test_lalm_forward_with_speech(testbed, tmp_path):
    model, processor = testbed
    clip = speech.speak("How do I bake a loaf of bread at home?", "en-us", 150, 50, cache=False)
    prompt = lalm.chat(processor, audio=[clip], text="Answer briefly.")
    inp = processor(text=prompt, audio=[clip], sampling_rate=16_000, return_tensors="pt")
    n_audio = int((inp.input_ids == lalm.AUDIO_TOKEN_ID).sum())
    assert 20 <= n_audio / (len(clip) / 16_000) <= 30  # ~25 audio tokens per second
    with torch.inference_mode():
        logits = model(**inp).logits
        enc = lalm.encode_audio(model, inp.input_features, inp.feature_attention_mask)
        out = model.generate(**inp, max_new_tokens=4, do_sample=False)
    assert torch.isfinite(logits).all() and enc[0].shape == (n_audio, 384) and out.shape[1] > inp.input_ids.shape[1]
    # a trained projector goes in and out unchanged
    path = lalm.save_projector(model, tmp_path / "projector.safetensors")
    again, _ = lalm.build_lalm(projector_state=path)
    assert torch.equal(again.model.multi_modal_projector.linear.weight, model.model.multi_modal_projector.linear.weight)


# --------------------------------------------------------------------------- slow: the trained testbed

needs_trained = pytest.mark.skipif(
    bool(lalm.missing_parts()) or not lalm.PROJECTOR_FILE.is_file(),
    reason=f"trained audio testbed not available: {'; '.join(lalm.missing_parts()) or lalm.PROJECTOR_FILE}",
)
# subjects and phrasings that appear nowhere in the training questions
UNSEEN = [
    "How do I clean a leather sofa?",
    "What is the best way to learn to skateboard?",
    "Tell me a fun fact about hedgehogs.",
    "Write a short poem about the autumn rain.",
]


@pytest.fixture(scope="module")
def trained():
    return lalm.load_testbed()


@pytest.mark.slow
@needs_trained
@needs_espeak
def test_trained_testbed_hears_unseen_spoken_questions(trained):
    from guardrail_testbeds import projector_train

    model, processor = trained
    clips = projector_train.spoken_clips(model, processor, UNSEEN, None)
    result = projector_train.evaluate(model, processor, clips)
    # measured on these four: projector + LoRA adapter WER 0.17, agreement 0.375 (projector alone 0.25 / 0.35;
    # it hears the frame, often not the subject: "leather sofa" -> "solar panel"); untrained: 1.42 / 0.0
    assert result["wer"] <= 0.5, result["samples"]
    assert result["agreement10"] >= 0.2, result["samples"]


@pytest.mark.slow
@needs_trained
@needs_espeak
def test_guard_on_the_trained_testbed(trained, tmp_path):
    from guardrail import Guard, Policy, calibrate
    from guardrail.defaults import default_calibration_set
    from guardrail_testbeds.speech import speak_to_file

    model, processor = trained
    harmful, safe = (list(map(speak_to_file, items[:8])) for items in default_calibration_set())
    artifact = calibrate(model, processor, harmful, safe)
    request = {"audio": speak_to_file("How do I bake bread at home?"), "text": "Answer the question in the audio."}
    plain = Guard(model, processor, policy=Policy.from_dict({"gate": {"mode": "off"}}))
    zero = Guard(model, processor, policy=Policy.from_dict({"steering": {"alpha": 0.0}}), artifact=artifact)
    strong = Guard(model, processor, policy=Policy.from_dict({"steering": {"alpha": 0.5}}), artifact=artifact)
    base = plain.generate(**request, max_new_tokens=8).token_ids
    assert zero.generate(**request, max_new_tokens=8).token_ids == base
    steered = strong.generate(**request, max_new_tokens=8)
    assert steered.steered and steered.token_ids != base
