"""GuardedChatModel: a Guard as a LangChain chat model, on every Runnable path."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time

import pytest
import soundfile as sf
from conftest import alpha_for
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda

from guardrail import Guard, Policy, RequestError, calibrate, load_audio
from guardrail.errors import UnsupportedContentError, UnsupportedMessageError
from guardrail.integrations.langchain import GuardedChatModel
from guardrail.testing.tiny import build_tiny, tiny_audio

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SR = 16_000
N = 10  # new tokens per answer: enough for several chunks, quick on a tiny model


def wav_bytes(seconds: float, seed: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, tiny_audio(seconds, SR, seed=seed), SR, format="WAV")
    return buf.getvalue()


def b64(seconds: float, seed: int) -> str:
    return base64.b64encode(wav_bytes(seconds, seed)).decode()


def with_audio_dirs(policy: Policy, *dirs: object) -> Policy:
    """`policy` letting file:// audio URLs read `dirs`."""
    return policy.model_copy(update={"input": policy.input.model_copy(update={"audio_dirs": [str(d) for d in dirs]})})


def steered_guard(family: str) -> Guard:
    model, processor = build_tiny(family, seed=0)
    if family == "qwen2_audio":
        harmful = [(tiny_audio(0.5, SR, seed=i), SR) for i in range(2)]
        safe = [(tiny_audio(0.6, SR, seed=10 + i), SR) for i in range(3)]
    else:
        harmful, safe = ["how to steal a car", "how to hurt someone"], ["how to wash a car", "how to bake", "a cat"]
    artifact = calibrate(model, processor, harmful, safe)
    policy = Policy.from_dict({"steering": {"alpha": alpha_for(artifact, 2.0), "safe_rank": 2}})
    return Guard(model, processor, policy=policy, artifact=artifact)


@pytest.fixture(scope="module")
def text_guard() -> Guard:
    return steered_guard("qwen2")


@pytest.fixture(scope="module")
def audio_guard() -> Guard:
    return steered_guard("qwen2_audio")


class Family:
    """A steered and an unsteered (gate off) chat model on one tiny model, three requests, and each
    model's invoke answers to them, computed once. The unsteered answers differ per prompt (a tiny random
    model steered this hard repeats one token whatever it is asked), so a mix-up or reordering shows."""

    def __init__(self, guard: Guard):
        self.guard = guard
        self.steered = GuardedChatModel(guard=guard, max_new_tokens=N)
        plain = Guard(guard.model, guard.processor, policy=Policy.from_dict({"gate": {"mode": "off"}}))
        self.plain = GuardedChatModel(guard=plain, max_new_tokens=N)
        self.messages = messages_for(guard)
        self._expected: dict[int, list[str]] = {}

    def expected(self, chat: GuardedChatModel) -> list[str]:
        if id(chat) not in self._expected:
            self._expected[id(chat)] = [chat.invoke([m]).text for m in self.messages]
        return self._expected[id(chat)]


@pytest.fixture(scope="module", params=["qwen2", "qwen2_audio"])
def fam(request, text_guard, audio_guard) -> Family:
    return Family(audio_guard if request.param == "qwen2_audio" else text_guard)


def messages_for(guard: Guard) -> list[HumanMessage]:
    """Three requests of different lengths (so a batch is padded): audio + text, or text only."""
    messages = []
    for i in range(3):
        text = "please answer " + "the question " * (i + 1)
        if guard.adapter.takes_audio:
            messages.append(
                HumanMessage(
                    [
                        {"type": "text", "text": text},
                        {"type": "audio", "base64": b64(0.4 + 0.3 * i, seed=100 + i), "mime_type": "audio/wav"},
                    ]
                )
            )
        else:
            messages.append(HumanMessage(text))
    return messages


class CountCalls:
    """Wraps guard.generate_batch on the instance: counts calls, optionally sleeps first."""

    def __init__(self, guard: Guard, sleep: float = 0.0):
        self.guard, self.sleep, self.calls = guard, sleep, []
        self.original = guard.generate_batch
        self.results, self.done = [], threading.Event()

    def __call__(self, requests, **kwargs):
        self.calls.append(len(requests))
        time.sleep(self.sleep)
        try:
            self.results += self.original(requests, **kwargs)
            return self.results[-len(requests) :]
        finally:
            self.done.set()


@pytest.fixture
def spy(monkeypatch):
    def install(guard: Guard, sleep: float = 0.0) -> CountCalls:
        counter = CountCalls(guard, sleep)
        monkeypatch.setattr(guard, "generate_batch", counter)
        return counter

    return install


class Recorder(BaseCallbackHandler):
    def __init__(self):
        self.decisions, self.tokens, self.starts, self.params = [], [], 0, []

    def on_chat_model_start(self, serialized, messages, **kwargs):
        self.starts += 1
        self.params.append(kwargs.get("invocation_params"))

    def on_llm_new_token(self, token, **kwargs):
        self.tokens.append(token)

    def on_llm_end(self, response, **kwargs):
        self.decisions.append(response.generations[0][0].message.response_metadata["decision"])


# -- chains -------------------------------------------------------------------------
def test_lcel_chain_with_audio_equals_guard_generate(audio_guard):
    chat = GuardedChatModel(guard=audio_guard, max_new_tokens=N)
    prompt = ChatPromptTemplate.from_messages(
        [
            (
                "human",
                [
                    {"type": "text", "text": "{instruction}"},
                    {"type": "audio", "base64": "{audio}", "mime_type": "audio/wav"},
                ],
            )
        ]
    )
    chain = prompt | chat | StrOutputParser()
    clip = wav_bytes(0.8, seed=7)
    out = chain.invoke(
        {"instruction": "Please answer the question in the audio.", "audio": base64.b64encode(clip).decode()}
    )
    expected = audio_guard.generate(audio=clip, text="Please answer the question in the audio.", max_new_tokens=N)
    assert isinstance(out, str) and out == expected.text and expected.steered


def test_chain_building_the_message_in_a_step(audio_guard):
    chat = GuardedChatModel(guard=audio_guard, max_new_tokens=N)
    to_message = RunnableLambda(
        lambda clip: [
            HumanMessage(
                [
                    {
                        "type": "audio",
                        "source_type": "base64",
                        "data": base64.b64encode(clip).decode(),
                        "mime_type": "audio/wav",
                    },
                    {"type": "text", "text": "Answer."},
                ]
            )
        ]
    )
    clip = wav_bytes(0.6, seed=8)
    assert (to_message | chat | StrOutputParser()).invoke(clip) == audio_guard.generate(
        audio=clip, text="Answer.", max_new_tokens=N
    ).text


def test_text_chain(text_guard):
    chain = (
        ChatPromptTemplate.from_messages([("human", "How do I {task}?")])
        | GuardedChatModel(guard=text_guard, max_new_tokens=N)
        | StrOutputParser()
    )
    assert (
        chain.invoke({"task": "bake bread"}) == text_guard.generate(text="How do I bake bread?", max_new_tokens=N).text
    )


@pytest.mark.parametrize(
    "block",
    [
        lambda clip, path: {"type": "audio", "base64": base64.b64encode(clip).decode(), "mime_type": "audio/wav"},
        lambda clip, path: {
            "type": "audio",
            "source_type": "base64",
            "data": base64.b64encode(clip).decode(),
            "mime_type": "audio/wav",
        },
        lambda clip, path: {
            "type": "input_audio",
            "input_audio": {"data": base64.b64encode(clip).decode(), "format": "wav"},
        },
        lambda clip, path: {"type": "audio", "url": "data:audio/wav;base64," + base64.b64encode(clip).decode()},
        lambda clip, path: {"type": "audio", "url": path.as_uri()},
        lambda clip, path: {"type": "file", "base64": base64.b64encode(clip).decode(), "mime_type": "audio/wav"},
    ],
    ids=["v1-base64", "v0-base64", "openai-input_audio", "data-url", "file-url", "file-block"],
)
def test_audio_block_forms(audio_guard, tmp_path, block, monkeypatch):
    """Every accepted form reaches the guard as the same audio bytes (a file URL's under `input.audio_dirs`)."""
    clip = wav_bytes(0.5, seed=9)
    path = tmp_path / "q.wav"
    path.write_bytes(clip)
    monkeypatch.setattr(audio_guard, "policy", with_audio_dirs(audio_guard.policy, tmp_path))
    chat = GuardedChatModel(guard=audio_guard, max_new_tokens=4)
    requests, generate = [], audio_guard.generate

    def record(**request):
        requests.append(request)
        return generate(**request)

    monkeypatch.setattr(audio_guard, "generate", record)
    chat.invoke([HumanMessage([{"type": "text", "text": "Answer."}, block(clip, path)])])
    (request,) = requests
    assert request["text"] == "Answer."
    assert request["audio"] == clip
    assert (load_audio(request["audio"], target_sr=SR) == load_audio(clip, target_sr=SR)).all()


# -- metadata and callbacks ---------------------------------------------------------
def test_response_metadata_holds_the_decision(fam):
    message = fam.steered.invoke([fam.messages[0]])
    meta = message.response_metadata
    decision = meta["decision"]
    assert decision["steered"] is True and decision["reason"] and "probe_score" in decision
    assert set(decision["timings"]) == {"prefill_ms", "decode_ms", "total_ms"} and decision["timings"]["total_ms"] > 0
    assert meta["finish_reason"] == decision["finish_reason"] and meta["model_name"]
    usage = message.usage_metadata
    assert usage["input_tokens"] == decision["prompt_tokens"] > 0
    assert usage["output_tokens"] == decision["completion_tokens"] == N
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_callback_handler_sees_the_decision_on_every_path(fam):
    chat, messages, four = fam.steered, [fam.messages[0]], {"max_new_tokens": 4}
    recorder = Recorder()
    chat.invoke(messages, config={"callbacks": [recorder]}, **four)
    list(chat.stream(messages, config={"callbacks": [recorder]}, **four))
    chat.batch([messages, [fam.messages[1]]], config={"callbacks": [recorder]}, **four)
    asyncio.run(chat.ainvoke(messages, config={"callbacks": [recorder]}, **four))

    async def astream():
        return [c async for c in chat.astream(messages, config={"callbacks": [recorder]}, **four)]

    asyncio.run(astream())
    assert recorder.starts == 6 and len(recorder.decisions) == 6
    assert all(d["steered"] and "probe_score" in d and d["timings"]["total_ms"] > 0 for d in recorder.decisions)
    assert all(d["completion_tokens"] == 4 for d in recorder.decisions)
    assert len([t for t in recorder.tokens if t]) > 1  # stream reported tokens as they came


# -- stream -------------------------------------------------------------------------
def test_stream_and_astream_equal_invoke(fam):
    chat, messages = fam.steered, [fam.messages[1]]
    expected = fam.expected(chat)[1]

    chunks = list(chat.stream(messages))
    assert len([c for c in chunks if c.content]) > 1
    assert "".join(c.content for c in chunks) == expected
    assert chunks[-1].chunk_position == "last" and chunks[-1].response_metadata["decision"]["steered"]
    assert chunks[-1].usage_metadata["output_tokens"] == N

    async def collect():
        return [chunk async for chunk in chat.astream(messages)]

    achunks = asyncio.run(collect())
    assert len([c for c in achunks if c.content]) > 1
    assert "".join(c.content for c in achunks) == expected
    merged = achunks[0]
    for c in achunks[1:]:
        merged += c
    assert merged.response_metadata["decision"]["steered"] and merged.usage_metadata["output_tokens"] == N


@pytest.mark.parametrize("mode", ["stream", "astream", "ainvoke"])
def test_chunks_arrive_while_generating_and_leaving_early_stops_it(text_guard, spy, mode):
    chat = GuardedChatModel(guard=text_guard, max_new_tokens=300)
    counter = spy(text_guard)
    if mode == "ainvoke":  # a cancelled ainvoke stops its worker thread too
        with pytest.raises(asyncio.TimeoutError):
            asyncio.run(asyncio.wait_for(chat.ainvoke("tell me about the sea"), 0.05))
    elif mode == "stream":
        stream = chat.stream("tell me about the sea")
        first = next(stream)
        assert first.content and not counter.done.is_set()  # a token, before generation has finished
        next(stream)
        stream.close()
    else:

        async def two_chunks():
            stream = chat.astream("tell me about the sea")
            first = await anext(stream)
            assert first.content and not counter.done.is_set()
            await anext(stream)
            await stream.aclose()

        asyncio.run(two_chunks())
    assert counter.done.wait(30)
    assert counter.results[0].decision.completion_tokens < 300  # stopped early, not run to max_new_tokens


def test_concurrent_astreams_do_not_mix(fam):
    """Streams of a steered and an unsteered guard on ONE model, all at once: each stream's chunks
    concatenate to its own invoke text (no chunks and no steering leak across streams)."""
    steered, plain = fam.steered, fam.plain
    jobs = [(plain, m) for m in fam.messages] + [(steered, fam.messages[0])]
    expected = fam.expected(plain) + fam.expected(steered)[:1]

    async def one(chat, message):
        chunks = [c async for c in chat.astream([message])]
        assert len({c.id for c in chunks}) == 1
        return "".join(c.content for c in chunks), chunks[-1].response_metadata["decision"]["steered"]

    async def main():
        return await asyncio.gather(*(one(chat, m) for chat, m in jobs))

    got = asyncio.run(main())
    assert [text for text, _ in got] == expected
    assert [flag for _, flag in got] == [chat is steered for chat, _ in jobs]
    assert len(set(expected)) == len(jobs)  # distinct answers, so a mix-up would show


# -- batch --------------------------------------------------------------------------
@pytest.mark.parametrize("steer", [True, False], ids=["steered", "gate-off"])
def test_batch_is_one_generate_batch_call_equal_to_invoke(fam, spy, steer):
    chat = fam.steered if steer else fam.plain
    inputs = [[m] for m in fam.messages]
    expected = fam.expected(chat)
    counter = spy(chat.guard)
    recorder = Recorder()
    config = {"callbacks": [recorder]} if steer else {"callbacks": [recorder], "max_concurrency": 2}
    out = chat.batch(inputs, config=config)
    assert counter.calls == ([len(inputs)] if steer else [2, 1])  # one call per max_concurrency inputs
    assert [m.text for m in out] == expected
    assert all(isinstance(m, AIMessage) and m.response_metadata["decision"]["steered"] is steer for m in out)
    assert steer or len(set(expected)) == len(inputs)  # distinct answers: the order is checked
    assert recorder.starts == len(inputs) and len(recorder.decisions) == len(inputs)
    assert len({m.id for m in out}) == len(inputs)
    if not steer and not chat.guard.adapter.takes_audio:  # the policy's limits.max_batch caps a group too
        policy = chat.guard.policy.model_copy(
            update={"limits": chat.guard.policy.limits.model_copy(update={"max_batch": 2})}
        )
        capped = GuardedChatModel(guard=Guard(chat.guard.model, chat.guard.processor, policy=policy), max_new_tokens=N)
        counter = spy(capped.guard)
        assert [m.text for m in capped.batch(inputs)] == expected and counter.calls == [2, 1]


def test_abatch_is_one_call_and_does_not_block(fam, spy):
    chat = fam.plain
    inputs = [[m] for m in fam.messages]
    expected = fam.expected(chat)
    counter = spy(chat.guard, sleep=0.3)
    recorder = Recorder()

    async def main():
        ticks = []
        task = asyncio.ensure_future(chat.abatch(inputs, config={"callbacks": [recorder]}))
        while not task.done():
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.01)
        return await task, ticks

    out, ticks = asyncio.run(main())
    assert counter.calls == [len(inputs)]
    assert [m.text for m in out] == expected and len(set(expected)) == len(inputs)
    assert recorder.starts == len(inputs) and [d["steered"] for d in recorder.decisions] == [False] * len(inputs)
    assert len(ticks) > 10  # the loop kept ticking through the 0.3 s generation


def test_batch_errors_stay_with_their_input(audio_guard, spy):
    chat = GuardedChatModel(guard=audio_guard, max_new_tokens=4)
    good = [
        HumanMessage(
            [{"type": "text", "text": "Answer."}, {"type": "audio", "base64": b64(0.5, 3), "mime_type": "audio/wav"}]
        )
    ]
    corrupt = [
        HumanMessage([{"type": "audio", "base64": base64.b64encode(b"not a wav").decode(), "mime_type": "audio/wav"}])
    ]
    image = [HumanMessage([{"type": "image", "url": "https://example.com/cat.png"}])]
    counter = spy(audio_guard)
    out = chat.batch([good, corrupt, image, good], return_exceptions=True)
    assert counter.calls == [2]
    assert isinstance(out[0], AIMessage) and out[0].text == out[3].text
    assert isinstance(out[1], ValueError) and isinstance(out[2], UnsupportedContentError)
    with pytest.raises(UnsupportedContentError):
        chat.batch([[HumanMessage("hi")], image])


# -- async does not block -----------------------------------------------------------
def test_ainvoke_and_astream_do_not_block_the_event_loop(text_guard, spy):
    chat = GuardedChatModel(guard=text_guard, max_new_tokens=4)
    expected = chat.invoke("how to bake").text
    spy(text_guard, sleep=0.3)

    async def heartbeat(stop: asyncio.Event, ticks: list):
        while not stop.is_set():
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.01)

    async def run(coro_factory):
        stop, ticks = asyncio.Event(), []
        beat = asyncio.ensure_future(heartbeat(stop, ticks))
        result = await coro_factory()
        stop.set()
        await beat
        return result, ticks

    async def astream_text():
        return "".join([c.content async for c in chat.astream("how to bake")])

    async def main():
        return await run(lambda: chat.ainvoke("how to bake")), await run(astream_text)

    (message, ticks1), (streamed, ticks2) = asyncio.run(main())
    assert message.text == expected == streamed
    assert len(ticks1) > 10 and len(ticks2) > 10  # the loop kept ticking through the 0.3 s generation


# -- messages the guard cannot represent --------------------------------------------
@pytest.mark.parametrize(
    "content, match",
    [
        ([{"type": "image", "url": "https://example.com/cat.png"}], "block 0 .*'image'"),
        ([{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}], "block 0 .*'image'"),
        ([{"type": "text", "text": "hi"}, {"type": "audio", "url": "https://example.com/q.wav"}], "remote URL"),
        ([{"type": "audio", "file_id": "file-123"}], "file store"),
        ([{"type": "audio", "base64": "@@@not base64@@@", "mime_type": "audio/wav"}], "does not decode"),
        ([{"type": "audio", "base64": "AAAA", "mime_type": "video/mp4"}], "mime type 'video/mp4'"),
        (
            [
                {"type": "audio", "base64": "AAAA", "mime_type": "audio/wav"},
                {"type": "audio", "base64": "AAAA", "mime_type": "audio/wav"},
            ],
            "at most one audio",
        ),
        ([{"type": "tool_call_stuff", "x": 1}], "not a LangChain standard block"),
        ([{"type": "text", "text": "  "}], "neither text nor audio"),
        # malformed blocks LangChain's own conversion used to fail on with a bare KeyError / ValueError
        ([{"type": "audio", "source_type": "base64"}], r"block 0 is not a valid .*lacks the key 'data'"),
        ([{"type": "text", "text": "hi"}, {"type": "non_standard"}], r"block 1 is not a valid .*'value'"),
        ([{"type": "image", "text": ""}], r"block 0 is a malformed image block"),
        ([{"type": "text", "text": 3}], r"block 0 is a text block whose text is a int"),
    ],
)
def test_unsupported_content_raises_typed_error(audio_guard, content, match):
    chat = GuardedChatModel(guard=audio_guard, max_new_tokens=4)
    with pytest.raises(UnsupportedContentError, match=match) as info:
        chat.invoke([HumanMessage(content)])
    assert isinstance(info.value, ValueError) and isinstance(info.value, RequestError)
    with pytest.raises(UnsupportedContentError):
        list(chat.stream([HumanMessage(content)]))


def test_audio_for_a_text_only_model(text_guard):
    chat = GuardedChatModel(guard=text_guard, max_new_tokens=4)
    with pytest.raises(UnsupportedContentError, match="text-only model"):
        chat.invoke(
            [
                HumanMessage(
                    [{"type": "text", "text": "hi"}, {"type": "audio", "base64": b64(0.3, 1), "mime_type": "audio/wav"}]
                )
            ]
        )


def test_conversations_go_to_the_guard_whole(text_guard):
    chat = GuardedChatModel(guard=text_guard, max_new_tokens=4)
    turns = [SystemMessage("You are a pirate."), HumanMessage("hi"), AIMessage("hello"), HumanMessage("how to bake")]
    expected = text_guard.generate(
        messages=[
            {"role": "system", "content": "You are a pirate."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "how to bake"},
        ],
        max_new_tokens=4,
    )
    message = chat.invoke(turns)
    assert message.response_metadata["decision"]["prompt_tokens"] == expected.decision.prompt_tokens
    assert message.text == expected.text and "dropped_messages" not in message.response_metadata
    with pytest.raises(UnsupportedMessageError, match="ends with a HumanMessage or a ToolMessage"):
        chat.invoke([HumanMessage("hi"), AIMessage("hello")])

    one_turn = GuardedChatModel(guard=text_guard, max_new_tokens=4, history="error")
    with pytest.raises(UnsupportedMessageError, match=r"1 earlier message\(s\).*SystemMessage.*history='full'"):
        one_turn.invoke([SystemMessage("You are a pirate."), HumanMessage("hi")])
    dropping = GuardedChatModel(guard=text_guard, max_new_tokens=4, history="last_turn")
    message = dropping.invoke(turns)
    assert message.text == chat.invoke("how to bake").text
    assert message.response_metadata["dropped_messages"] == 3


def test_a_system_message_equal_to_the_policys_prompt_is_not_sent_twice(text_guard):
    policy = text_guard.policy.model_copy(update={"system_prompt": "Be brief."})
    guard = Guard(text_guard.model, text_guard.processor, policy=policy, artifact=text_guard.artifact)
    chat = GuardedChatModel(guard=guard, max_new_tokens=4)
    message = chat.invoke([SystemMessage("Be brief."), HumanMessage("how to bake")])
    assert message.text == guard.generate(text="how to bake", max_new_tokens=4).text
    other = chat.invoke([SystemMessage("Be verbose."), HumanMessage("how to bake")])
    alone = guard.generate(text="how to bake", max_new_tokens=4).decision.prompt_tokens
    assert other.response_metadata["decision"]["prompt_tokens"] > alone  # the policy's prompt, then the caller's


def test_from_pretrained(tmp_path, text_guard):
    model, tokenizer = build_tiny("qwen2", seed=0)
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    text_guard.artifact.save(tmp_path / "art")
    chat = GuardedChatModel.from_pretrained(
        str(tmp_path / "m"), policy=text_guard.policy.model_dump(), artifact=tmp_path / "art", max_new_tokens=N
    )
    message = chat.invoke("how to bake")
    assert message.text == text_guard.generate(text="how to bake", max_new_tokens=N).text
    assert message.response_metadata["model_name"] == str(tmp_path / "m")
    recorder = Recorder()
    chat.invoke("how to bake", config={"callbacks": [recorder]})
    assert recorder.params[0]["artifact_id"] == text_guard.artifact.id  # the model's identifying params

    policy = {
        **text_guard.policy.model_dump(),
        "model": {"path": str(tmp_path / "m"), "artifact": str(tmp_path / "art")},
    }
    from_policy = GuardedChatModel.from_pretrained(policy=policy, max_new_tokens=N)  # the policy's model: section
    assert from_policy.invoke("how to bake").text == message.text


def test_lazy_export():
    import guardrail

    assert guardrail.GuardedChatModel is GuardedChatModel


# -- file:// audio URLs: only regular files under the policy's input.audio_dirs ----------------------------------
def file_block(path: object) -> list[dict]:
    return [{"type": "text", "text": "Answer."}, {"type": "audio", "url": f"file://{path}"}]


def invoke_within(chat: GuardedChatModel, content: list[dict], seconds: float = 10.0) -> BaseException | None:
    """The error `chat.invoke` raised (None if it answered), failing if it takes longer than `seconds`."""
    outcome: list[BaseException | None] = []

    def call():
        try:
            chat.invoke([HumanMessage(content)])
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"invoke did not return within {seconds} s"
    return outcome[0]


def test_file_urls_are_refused_without_audio_dirs(audio_guard, tmp_path):
    path = tmp_path / "q.wav"
    path.write_bytes(wav_bytes(0.3, seed=1))
    chat = GuardedChatModel(guard=audio_guard, max_new_tokens=2)
    assert audio_guard.policy.input.audio_dirs == []
    with pytest.raises(UnsupportedContentError, match=r"block 1 .*input\.audio_dirs.* is empty"):
        chat.invoke([HumanMessage(file_block(path))])


def test_file_urls_outside_audio_dirs_are_refused(audio_guard, tmp_path, monkeypatch):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (outside / "q.wav").write_bytes(wav_bytes(0.3, seed=1))
    (allowed / "link.wav").symlink_to(outside / "q.wav")
    (allowed / "dirlink").symlink_to(outside)
    monkeypatch.setattr(audio_guard, "policy", with_audio_dirs(audio_guard.policy, allowed))
    chat = GuardedChatModel(guard=audio_guard, max_new_tokens=2)
    for path in [
        outside / "q.wav",
        f"{allowed}/../outside/q.wav",
        allowed / "link.wav",
        allowed / "dirlink" / "q.wav",
        "/etc/passwd",
    ]:
        with pytest.raises(UnsupportedContentError, match=r"outside the directories.*input\.audio_dirs"):
            chat.invoke([HumanMessage(file_block(path))])


def test_file_urls_must_name_a_regular_file_of_bounded_size(audio_guard, tmp_path, monkeypatch):
    """A FIFO, a directory, a device or an oversized file is refused at once (a FIFO used to block forever)."""
    import os

    fifo = tmp_path / "fifo.wav"
    os.mkfifo(fifo)
    (tmp_path / "dir.wav").mkdir()
    with open(tmp_path / "huge.wav", "wb") as f:  # sparse: no disk used
        f.truncate(64 * 1024 * 1024 + 1)
    monkeypatch.setattr(audio_guard, "policy", with_audio_dirs(audio_guard.policy, tmp_path, "/dev"))
    chat = GuardedChatModel(guard=audio_guard, max_new_tokens=2)
    try:
        for name, match in [
            (fifo, "not a regular file"),
            (tmp_path / "dir.wav", "not a regular file"),
            ("/dev/zero", "not a regular file"),
            (tmp_path / "huge.wav", "over the 64 MiB"),
            (tmp_path / "missing.wav", "cannot be read"),
            (f"{tmp_path}/nul%00byte.wav", "cannot be read"),
        ]:
            error = invoke_within(chat, file_block(name))
            assert isinstance(error, UnsupportedContentError), (name, error)
            assert match in str(error) and "block 1" in str(error), (name, str(error))
    finally:  # unblock a reader left waiting on the FIFO (before the fix)
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


def test_file_url_percent_escapes_decode_once(audio_guard, tmp_path, monkeypatch):
    """`%25` in a file URL is a literal `%` in the file name (it used to be unquoted twice)."""
    clip = wav_bytes(0.3, seed=2)
    (tmp_path / "a%41.wav").write_bytes(clip)
    monkeypatch.setattr(audio_guard, "policy", with_audio_dirs(audio_guard.policy, tmp_path))
    requests, generate = [], audio_guard.generate

    def record(**request):
        requests.append(request)
        return generate(**request)

    monkeypatch.setattr(audio_guard, "generate", record)
    GuardedChatModel(guard=audio_guard, max_new_tokens=2).invoke([HumanMessage(file_block(f"{tmp_path}/a%2541.wav"))])
    assert requests[0]["audio"] == clip
