"""A LangGraph agent with one tool, answering through the guarded model: every model turn goes through the
gate, and its decision record rides on the AIMessage (`response_metadata["decision"]`).

The graph is LangGraph's tool loop: the model either calls a tool or answers; a tool call runs the tool and
hands its result back to the model. The gate reads the whole conversation each turn (system prompt, tools,
earlier turns, tool results), so a harmful request met mid-conversation is still scored.

On the Qwen2.5-Coder-0.5B-Instruct testbed (built with `guardrail testbeds build qwen2.5-coder-0.5b-instruct`;
the first run calibrates an artifact and probe for it, minutes on CPU, then reuses them):

    python examples/langgraph_agent.py --testbed qwen2.5-coder-0.5b-instruct

Offline, in seconds, on a tiny random model (it never calls the tool; the loop ends after one answer):

    python examples/langgraph_agent.py --tiny

On your own model: --model DIR --artifact DIR [--policy gated] [--device cuda].
"""

from __future__ import annotations

import argparse
import json

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.tools import tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from guardrail.integrations.langchain import GuardedChatModel

SYSTEM = "Use the tools to get data. When a tool result is given, answer the user's question with it in one sentence."


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return json.dumps({"city": city, "weather": "sunny", "temperature_c": 21})


def build_agent(chat: GuardedChatModel):
    """The tool loop: model -> (tool call? -> tools -> model) -> end."""
    model = chat.bind_tools([get_weather])

    def call_model(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [model.invoke([SystemMessage(SYSTEM), *state["messages"]])]}

    graph = StateGraph(MessagesState)
    graph.add_node("model", call_model)
    graph.add_node("tools", ToolNode([get_weather]))
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", tools_condition)
    graph.add_edge("tools", "model")
    return graph.compile()


def chat_model(args: argparse.Namespace) -> GuardedChatModel:
    if args.tiny:
        from guardrail.testing.tiny import tiny_guard

        return GuardedChatModel(guard=tiny_guard("qwen2", args.policy), max_tokens=args.max_tokens)
    if args.testbed:
        from guardrail_testbeds.guarded import guarded_testbed

        model_dir, artifact = guarded_testbed(args.testbed)
        args.model, args.artifact = str(model_dir), str(artifact)
    return GuardedChatModel(
        model=args.model, policy=args.policy, artifact=args.artifact, device=args.device, max_tokens=args.max_tokens
    )


def show(message: BaseMessage) -> dict:
    """One line per message; for the model's turns, the gate's decision."""
    row: dict = {"type": message.type, "content": message.text[:120]}
    if isinstance(message, AIMessage):
        decision = message.response_metadata["decision"]
        row["tool_calls"] = [{"name": c["name"], "args": c["args"]} for c in message.tool_calls]
        row["decision"] = {k: decision[k] for k in ("steered", "blocked", "probe_score", "finish_reason")}
    print(json.dumps(row))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--tiny", action="store_true", help="a tiny random model, offline")
    where.add_argument("--testbed", help="a built real-weight testbed")
    where.add_argument("--model", help="a model directory or hub id (with --artifact)")
    parser.add_argument("--artifact")
    parser.add_argument("--policy", default="gated")
    parser.add_argument("--device")
    parser.add_argument("--max-tokens", type=int, default=80)
    parser.add_argument("--question", action="append", help="what the user asks (repeatable)")
    args = parser.parse_args()
    agent = build_agent(chat_model(args))
    for question in args.question or ["What is the weather in Paris right now?"]:
        for message in agent.invoke({"messages": [HumanMessage(question)]})["messages"]:
            show(message)


if __name__ == "__main__":
    main()
