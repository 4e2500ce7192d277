"""The audio testbed's projector training, on a tiny random Qwen2-Audio (the real run is a job of its
own: python -m guardrail_testbeds.projector_train)."""

from __future__ import annotations

import torch

from guardrail.testing.tiny import build_tiny
from guardrail_testbeds import projector_train as pt
from guardrail_testbeds import train_questions
from guardrail_testbeds.speech import Voice


def clips(model, n: int = 4) -> list[pt.Clip]:
    gen = torch.Generator().manual_seed(0)
    width = model.config.audio_config.d_model
    qs = ["how do I bake bread", "tell me about the moon", "write a poem about owls", "how do I fix a bike"]
    return [
        pt.Clip(
            qs[i % 4],
            qs[i % 4],
            Voice(),
            train_questions.INSTRUCTIONS[i % 4],
            torch.randn(6 + i, width, generator=gen),
            [5 + i, 7, 9 + i],
        )
        for i in range(n)
    ]


def test_questions_split_by_subject_and_are_distinct():
    qs = train_questions.questions()
    train, held = train_questions.split_by_subject(qs, held_out=0.1, seed=0)
    assert len(qs) == len(set(q.text for q in qs)) and len(train) + len(held) == len(qs)
    assert not {q.subject for q in train} & {q.subject for q in held} and held


def test_chats_and_instructions():
    _, processor = build_tiny("qwen2_audio")
    assert pt.typed_instruction("Answer the question in the audio.") == "Answer the question."
    assert pt.typed_instruction(None) is None
    chat = pt.audio_chat(processor, 5, "Answer the question in the audio.")
    assert chat.count("<|AUDIO|>") == 5 and chat.rstrip().endswith("assistant")
    assert "How do I fly?\nAnswer the question." in pt.typed_chat(
        processor, "How do I fly?", "Answer the question in the audio."
    )
    assert pt.agreement([1, 2, 3, 4], [1, 9, 3, 4, 5], n=4) == 0.75


def test_training_steps_lower_both_losses_and_move_only_the_projector():
    model, processor = build_tiny("qwen2_audio", seed=0)
    with torch.no_grad():  # a random tiny LM is nearly uniform whatever it reads: sharpen its outputs
        model.lm_head.weight.mul_(20)
    model.requires_grad_(False)
    proj = model.model.multi_modal_projector.linear
    proj.load_state_dict(pt.ridge_init(model, processor, clips(model)))
    proj.requires_grad_(True)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "multi_modal_projector" not in k}
    opt = torch.optim.AdamW(proj.parameters(), lr=1e-2)
    batch, tasks = clips(model), ["transcribe", "answer", "transcribe", "answer"]
    first = {k: v.item() for k, v in pt.loss_on_batch(model, processor, batch, tasks).items()}
    for _ in range(30):
        loss = sum(pt.loss_on_batch(model, processor, batch, tasks).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = {k: v.item() for k, v in pt.loss_on_batch(model, processor, batch, tasks).items()}
    assert set(first) == {"transcribe", "answer"}
    assert last["transcribe"] < 0.85 * first["transcribe"] and last["answer"] < 0.5 * first["answer"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in frozen.items())


def test_word_sentences_are_seeded_varied_questions():
    _, processor = build_tiny("qwen2_audio")
    words = ["bread", "river", "lantern", "garden", "violin", "pepper", "castle", "winter", "saddle", "mirror"]
    a = train_questions.word_sentences(words, 20, seed=1)
    assert a == train_questions.word_sentences(words, 20, seed=1) != train_questions.word_sentences(words, 20, 2)
    assert all(s.endswith("?") and s.startswith(train_questions.FRAMES) for s in a)
    assert all(
        5 <= len(s[:-1].split()) - len(f.split()) <= 10
        for s in a
        for f in train_questions.FRAMES
        if s.startswith(f + " ")
    )
    found = pt.tokenizer_words(processor.tokenizer)
    assert all(w.isalpha() and w.islower() and 4 <= len(w) <= 11 for w in found)


def test_lora_training_moves_projector_and_adapter_and_merges_into_plain_weights():
    from guardrail_testbeds import lora

    model, processor = build_tiny("qwen2_audio", seed=0)
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    model.requires_grad_(False)
    lm = model.model.language_model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lora.add_lora(lm, rank=4)
    proj = model.model.multi_modal_projector.linear
    proj.requires_grad_(True)
    params = [*proj.parameters(), *lora.adapter_parameters(lm)]
    assert len(params) > 2 and all(p.requires_grad for p in params)
    assert len(lora.adapter_parameters(lm)) == len([n for n, _ in lm.named_parameters() if "lora_" in n])
    opt = torch.optim.AdamW(params, lr=3e-3)
    batch, tasks = clips(model), ["transcribe", "answer", "transcribe", "answer"]
    first = pt.loss_on_batch(model, processor, batch, tasks)
    assert set(first) == {"transcribe", "answer", "text"} and first["text"].item() < 1e-6  # B starts at 0
    for _ in range(31):
        loss = sum(pt.loss_on_batch(model, processor, batch, tasks).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = pt.loss_on_batch(model, processor, batch, tasks)
    assert last["transcribe"] < 0.5 * first["transcribe"] and last["answer"] < 0.6 * first["answer"]

    ids = torch.tensor([[3, 5, 7, 11, 13]])
    with torch.no_grad():
        adapted = lm(input_ids=ids).last_hidden_state
        with lora.adapters_off(lm):
            original = lm(input_ids=ids).last_hidden_state
    assert not torch.allclose(adapted, original, atol=1e-4)
    state = lora.lora_state(lm)

    fresh, _ = build_tiny("qwen2_audio", seed=0)  # plain modules, same base weights
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in before.items() if "lm_head" not in k)
    with torch.no_grad():
        base = fresh.model.language_model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(base, original, atol=1e-5, rtol=1e-5)
    lora.merge_lora(fresh.model.language_model, state)
    with torch.no_grad():
        merged = fresh.model.language_model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(merged, adapted, atol=1e-4, rtol=1e-4)


def test_lora_errors_name_the_problem(tmp_path):
    import pytest

    from guardrail_testbeds import lora

    model, _ = build_tiny("qwen2_audio", seed=0)
    with pytest.raises(ValueError, match="no LoRA adapter"):
        lora.lora_state(model.model.language_model)
    lora.add_lora(model.model.language_model, rank=2)
    state = lora.lora_state(model.model.language_model)
    path = lora.save_lora(state, tmp_path / "a.safetensors", {"kind": "test"})
    loaded = lora.load_lora(path)
    assert set(loaded) == set(state)
    other, _ = build_tiny("qwen2", seed=0)
    bad = {
        "scale": loaded["scale"],
        "nowhere.lora_A": loaded[next(k for k in loaded if k.endswith("lora_A"))],
        "nowhere.lora_B": loaded[next(k for k in loaded if k.endswith("lora_B"))],
    }
    with pytest.raises(KeyError, match="nowhere"):
        lora.merge_lora(other.model, bad)


def test_stage1_corpus_gives_transcription_clips_and_an_empty_one_is_refused(tmp_path):
    import pytest

    from guardrail_testbeds import speech_corpus

    frames = [torch.randn(5, 384), torch.randn(3, 384), torch.randn(4, 384)]
    speech_corpus.write_shard(tmp_path / "train-00000.safetensors", frames[:2], [[1, 2], [3]], ["a b", "c"], ["v", "w"])
    speech_corpus.write_shard(tmp_path / "train-00001.safetensors", frames[2:], [[4]], ["d"], ["x"])
    got = pt.corpus_clips(tmp_path)
    assert [c.question for c in got] == ["a b", "c", "d"] and all(c.answer == [] for c in got)
    assert torch.allclose(got[2].encoded.float(), frames[2].half().float())
    assert [c.question for c in pt.corpus_clips(tmp_path, limit=2)] == ["a b", "c"]
    with pytest.raises(ValueError, match="corpus_build train"):
        pt.corpus_clips(tmp_path / "none")
