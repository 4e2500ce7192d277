"""Stage 1 of the audio testbed's training (issue 19): the generated corpus, its shards, the CTC / regression
objectives and the exported projector, on tiny tensors (the real run: python -m guardrail_testbeds.stage1_train)."""

from __future__ import annotations

import random

import pytest
import torch

from guardrail.testing.tiny import build_tiny
from guardrail_testbeds import build, lalm, speech, speech_corpus, stage1


class DictionaryOnly:
    """A stand-in for the LM's tokenizer whose vocabulary holds every dictionary word as a whole-word token."""

    def get_vocab(self) -> dict[str, int]:
        from spellchecker import SpellChecker

        words = SpellChecker().word_frequency.keys()
        return {"\u0120" + w: i for i, w in enumerate(sorted(words)) if w.isascii() and w.isalpha()}


@pytest.fixture
def word_table(tmp_path, monkeypatch):
    """The sentences' word table: the cached one (built from the LM testbed's tokenizer), or, where the LM
    testbed is not built (CI), one built here from pyspellchecker's dictionary alone in a temporary cache."""
    speech_corpus.word_table.cache_clear()
    if not (build.cache_dir() / speech_corpus.WORDS_FILE).is_file() and not build.is_built(lalm.LM_NAME):
        monkeypatch.setenv("GUARDRAIL_CACHE", str(tmp_path))
        rows = speech_corpus.words_table(DictionaryOnly())
        speech_corpus.write_word_table(tmp_path / speech_corpus.WORDS_FILE, rows)
    yield speech_corpus.word_table()
    speech_corpus.word_table.cache_clear()


def test_exclusion_catches_questions_and_their_five_word_runs():
    ex = speech_corpus.Exclusion(["How can someone grow tomatoes on a small balcony?"])
    assert "how can someone grow tomatoes on a small balcony" in ex  # case and punctuation do not matter
    assert "Tell me why grow tomatoes on a small shelf." in ex  # shares "grow tomatoes on a small"
    assert "Tell me why grow tomatoes on the balcony." not in ex


def test_generated_sentences_are_never_evaluation_questions(word_table):
    texts = speech_corpus.evaluation_texts(require_figstep=False)
    ex = speech_corpus.Exclusion(texts)
    generated = speech_corpus.sentences(3000, seed=0, exclude=ex)
    assert len(set(generated)) == 3000 and not any(s in ex for s in generated)
    lowered = {t.lower() for t in texts}
    assert not any(s.lower() in lowered for s in generated)
    if speech_corpus.figstep_dir().is_dir():  # FigStep 0-99 (both sides) are among the excluded
        figstep = speech_corpus.figstep_questions("safe") + speech_corpus.figstep_questions("harmful")
        assert len(figstep) == 200 and all(q in ex for q in figstep)


def test_a_corpus_without_figstep_to_exclude_is_refused(tmp_path):
    from guardrail_testbeds.build import TestbedError

    with pytest.raises(TestbedError, match="GUARDRAIL_FIGSTEP_DIR"):
        speech_corpus.evaluation_texts(tmp_path / "nowhere")
    assert len(speech_corpus.evaluation_texts(tmp_path / "nowhere", require_figstep=False)) > 500


def test_sentences_are_seeded_and_splits_differ(word_table):
    a = speech_corpus.sentences(50, seed=3)
    assert a == speech_corpus.sentences(50, seed=3)
    assert not set(a) & set(speech_corpus.sentences(50, seed=3, split="held"))
    words = set(word_table[0])
    assert len(words) > 10_000  # a wide slice of English, not a handful of frames
    v = speech_corpus.voice(7)
    assert v == speech_corpus.voice(7) and isinstance(v, speech.Voice)
    assert speech_corpus.SPEEDS[0] <= v.speed <= speech_corpus.SPEEDS[1]


def test_shards_round_trip(tmp_path):
    frames = [torch.randn(5, 8), torch.randn(3, 8)]
    tokens = [[1, 2, 3], [40]]
    path = speech_corpus.write_shard(tmp_path / "train-00000.safetensors", frames, tokens, ["a b c", "d"], ["v1", "v2"])
    shard = speech_corpus.read_shard(path)
    assert len(shard) == 2 and shard.texts == ["a b c", "d"] and shard.voices == ["v1", "v2"]
    f, t = shard.clip(1)
    assert f.dtype == torch.float16 and torch.allclose(f.float(), frames[1].half().float())
    assert t.tolist() == [40]
    assert speech_corpus.shard_paths(tmp_path, "train") == [path]
    (tmp_path / "bad.safetensors").write_bytes(path.read_bytes().replace(b"stage1 shard v1", b"stage1 shard v9"))
    with pytest.raises(ValueError, match="not a stage-1 shard"):
        speech_corpus.read_shard(tmp_path / "bad.safetensors")


def toy(
    n_clips: int, vocab: int = 40, d_in: int = 48, seed: int = 0, silence: int = 2
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Clips whose frames carry their tokens: each token has a prototype frame, spoken 3 frames long."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(vocab, d_in, generator=torch.Generator().manual_seed(99))
    rng = random.Random(seed)
    clips = []
    for _ in range(n_clips):
        ids = torch.tensor(rng.sample(range(vocab), rng.randint(2, 5)))
        frames = protos[ids].repeat_interleave(3, dim=0)
        frames = torch.cat([torch.zeros(silence, d_in), frames, torch.zeros(silence, d_in)])  # silence around
        clips.append((frames + 0.1 * torch.randn(frames.shape, generator=g), ids))
    return clips


def fit_ctc(head: stage1.Head, emb: torch.Tensor, data: list, steps: int = 150) -> list[float]:
    """Adam on the sampled-softmax CTC loss over the whole toy set; the loss at each step."""
    opt = torch.optim.Adam(head.parameters(), lr=2e-2)
    g, losses = torch.Generator().manual_seed(0), []
    for _ in range(steps):
        loss = stage1.ctc_loss(head, emb, stage1.make_batch(data), negatives=8, g=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def decoded_right(head: stage1.Head, emb: torch.Tensor, data: list) -> int:
    """Toy clips whose greedy decoding over the whole matrix gives back exactly their tokens."""
    return sum(stage1.collapse(stage1.frame_ids(head, emb, f, "ctc").tolist()) == t.tolist() for f, t in data)


def test_candidates_hold_every_positive_once_and_disjoint_negatives():
    g = torch.Generator().manual_seed(0)
    pos, neg = stage1.candidates([torch.tensor([5, 3, 5]), torch.tensor([9])], 30, 40, g)
    assert pos.tolist() == [3, 5, 9]
    assert not set(neg.tolist()) & {3, 5, 9} and len(set(neg.tolist())) == len(neg) > 0


def test_ctc_with_sampled_softmax_learns_a_toy_and_decodes_it():
    torch.manual_seed(0)
    emb = torch.randn(40, 64)  # full row rank: the linear projector can give every token its own direction
    head, data = stage1.Head(48, 64, seed=0), toy(24)
    losses = fit_ctc(head, emb, data)
    assert sum(losses[-10:]) / 10 < 0.3 * sum(losses[:10]) / 10
    right = decoded_right(head, emb, data)
    assert right >= 20  # greedy decoding over the WHOLE matrix, not just the sampled columns


def test_cosine_ctc_learns_the_toy_and_its_export_has_the_rows_length():
    torch.manual_seed(0)
    emb = 0.05 * torch.randn(40, 64)  # rows as short as the LM's (median norm ~0.5 there, ~0.4 here)
    head = stage1.Head(48, 64, seed=0, cosine=True)
    assert head.log_scale.requires_grad and float(head.blank.detach().norm()) > 0  # a blank with a direction
    data = toy(24)
    fit_ctc(head, emb, data)
    right = decoded_right(head, emb, data)
    assert right >= 20
    frames = torch.cat([f for f, _ in data])
    scale = stage1.norm_ratio(head, frames, emb)
    exported = torch.nn.Linear(48, 64)
    exported.load_state_dict(head.projector_state(scale))
    with torch.no_grad():
        lengths = exported(frames).norm(dim=-1)
    assert abs(float(lengths.median() / emb.norm(dim=-1).median()) - 1) < 1e-3
    # scaling changes no cosine, so the exported projector decodes exactly as the trained head
    head.proj.load_state_dict(exported.state_dict())
    again = decoded_right(head, emb, data)
    assert again == right


def test_dot_product_head_keeps_its_fixed_scale_and_zero_blank():
    head = stage1.Head(8, 16, seed=0)
    assert not head.log_scale.requires_grad and float(head.blank.detach().abs().sum()) == 0
    h, rows = torch.randn(3, 16), torch.randn(5, 16)
    assert torch.allclose(head.scores(h, rows), h @ rows.T)


def test_regression_objective_lowers_its_loss():
    emb = torch.randn(40, 64)
    head = stage1.Head(48, 64, seed=1)
    opt = torch.optim.Adam(head.parameters(), lr=2e-2)
    batch = stage1.make_batch(toy(16, seed=1, silence=0))  # the even alignment is exact here
    first = float(stage1.regress_loss(head, emb, batch).detach())
    for _ in range(100):
        loss = stage1.regress_loss(head, emb, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first
    assert stage1.spread(6, torch.tensor([7, 8])).tolist() == [7, 7, 7, 8, 8, 8]
    assert stage1.collapse([0, 3, 3, 0, 3, 5, 5, 0]) == [2, 2, 4]


def test_exported_projector_loads_into_the_testbed_class(tmp_path):
    model, _ = build_tiny("qwen2_audio")
    lin = model.model.multi_modal_projector.linear
    head = stage1.Head(lin.in_features, lin.out_features, seed=3)
    path = lalm.save_projector(head.projector_state(), tmp_path / "p.safetensors", {"stage": "1"})
    state = lalm.load_projector(path)
    assert set(state) == set(lalm.PROJECTOR_KEYS)
    lin.load_state_dict(state, strict=True)
    assert torch.equal(lin.weight, head.proj.weight.detach())
    x = torch.randn(4, lin.in_features)
    assert torch.allclose(lalm.audio_embeddings(model, x), head(x), atol=1e-6)  # type: ignore[arg-type]


def test_batched_encoding_matches_the_per_clip_path():
    from transformers import WhisperFeatureExtractor

    from guardrail_testbeds.corpus_build import encode, encode_batched

    model, _ = build_tiny("qwen2_audio", seed=0)
    g = torch.Generator().manual_seed(0)
    waves = [0.1 * torch.randn(n, generator=g).numpy() for n in (8_000, 20_000, 12_345)]
    one, batched = encode(model, waves), encode_batched(model, waves, batch=2)
    fe = WhisperFeatureExtractor(feature_size=model.config.audio_config.num_mel_bins, sampling_rate=16_000)
    for w, a, b in zip(waves, one, batched):
        f = fe([w], sampling_rate=16_000, return_attention_mask=True, return_tensors="pt")  # the 30 s padding
        ref = lalm.encode_audio(model, f["input_features"], f["attention_mask"])[0]  # type: ignore[arg-type]
        assert a.shape == b.shape == ref.shape and a.dtype == torch.float16 and a.shape[0] > 5
        assert torch.allclose(a.float(), ref, atol=2e-2, rtol=1e-2)
        assert torch.allclose(a.float(), b.float(), atol=2e-2, rtol=1e-2)


def test_packed_embeddings_remap_tokens_and_refuse_missing_ones(tmp_path):
    from safetensors.torch import save_file

    rows = torch.randn(5, 8)
    scale = rows.abs().amax(-1) / 127
    ids = torch.tensor([3, 10, 11, 40, 41])
    save_file({"ids": ids, "q": torch.round(rows / scale[:, None]).to(torch.int8), "scale": scale},
              str(tmp_path / "embed-int8.safetensors"))  # fmt: skip
    emb, got = stage1.load_packed_embeddings(tmp_path / "embed-int8.safetensors")
    assert torch.equal(got, ids) and torch.allclose(emb.float(), rows, atol=0.05)
    assert stage1.remap(torch.tensor([40, 3, 3, 11]), ids).tolist() == [3, 0, 0, 2]
    with pytest.raises(ValueError, match="no row"):
        stage1.remap(torch.tensor([3, 4]), ids)


def test_context_head_reads_neighbours_and_refuses_to_export():
    head = stage1.Head(4, 6, seed=0, context=1, hidden=8)
    x = torch.randn(2, 5, 4)
    y = head(x)
    assert y.shape == (2, 5, 6) and torch.allclose(head(x[1]), y[1])
    x2 = x.clone()
    x2[0, 3] += 1.0  # a neighbour of frame 2 and 4, not of frame 0
    y2 = head(x2)
    assert not torch.allclose(y2[0, 2], y[0, 2]) and torch.allclose(y2[0, 0], y[0, 0])
    with pytest.raises(TypeError, match="Linear"):
        head.projector_state()


@pytest.mark.slow
def test_exported_projector_builds_the_real_testbed(tmp_path):
    if lalm.missing_parts():
        pytest.skip(f"the audio testbed's weights are not cached: {lalm.missing_parts()}")
    head = stage1.Head(384, 896, seed=5)
    path = lalm.save_projector(head.projector_state(), tmp_path / "p.safetensors", {"stage": "1"})
    model, _ = lalm.build_lalm(path)
    assert torch.equal(model.model.multi_modal_projector.linear.weight, head.proj.weight.detach())
