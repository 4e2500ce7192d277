"""examples/langgraph_agent.py: LangGraph's tool loop through the guarded model. Offline on a tiny model (the
loop's mechanics and the decision on each model turn); in the slow tier on the Qwen2.5-Coder-0.5B-Instruct
testbed, where the model really calls the tool and answers from its result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import is_testbed_built

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "langgraph_agent.py"
TESTBED = "qwen2.5-coder-0.5b-instruct"


def run_agent(*args: str) -> list[dict]:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, timeout=1800, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_the_agent_runs_on_a_tiny_model_with_a_decision_on_every_model_turn():
    rows = run_agent("--tiny", "--max-tokens", "8")
    assert [r["type"] for r in rows] == ["human", "ai"]  # random weights call no tool: one answer ends the loop
    decision = rows[1]["decision"]
    assert set(decision) == {"steered", "blocked", "probe_score", "finish_reason"}
    assert decision["probe_score"] is not None  # the `gated` policy scored the turn


@pytest.mark.slow
@pytest.mark.skipif(not is_testbed_built(TESTBED), reason=f"testbed not built: guardrail testbeds build {TESTBED}")
def test_a_two_step_tool_loop_on_the_testbed():
    rows = run_agent("--testbed", TESTBED, "--question", "What is the weather in Paris right now?")
    assert [r["type"] for r in rows] == ["human", "ai", "tool", "ai"]
    call, answer = rows[1], rows[3]
    assert call["tool_calls"] == [{"name": "get_weather", "args": {"city": "Paris"}}]
    assert call["decision"]["finish_reason"] == "tool_calls" and json.loads(rows[2]["content"])["city"] == "Paris"
    assert "sunny" in answer["content"].lower() and answer["tool_calls"] == []
    for turn in (call, answer):  # the gate decided on each model turn, and let these benign ones through
        assert turn["decision"]["probe_score"] is not None and not turn["decision"]["steered"]
