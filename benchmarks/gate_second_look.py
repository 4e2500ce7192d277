"""A second look (issue #14, item 3): does scoring again after the first k answer tokens catch what the
prefill probe missed?

For every item of ``guardrail_testbeds.gate_sets`` the unguarded model answers k tokens (greedy);
one forward pass over prompt + those tokens captures the last position and the mean of every layer.
Probe v2 is trained on the ``fit`` split's prefill features (as deployed) and, separately, on the
second-look features; thresholds are chosen on ``select``. Reported on ``eval`` and
``figstep_eval``: each probe alone, and the rule "open when the prefill score or the second-look
score passes its threshold" with both thresholds on select set to share the target FPR (a grid over
the split of the budget; the best split on select is applied to the held-out splits).

    python benchmarks/gate_second_look.py --testbed qwen2.5-coder-0.5b-instruct --k 4 \\
        --out benchmarks/results/gate_second_look_qwen05b
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gate_probe import CACHE, FIGSTEP, activations, bootstrap, scores_of, train_deployed_v2

from guardrail.gate.metrics import threshold_at_fpr
from guardrail.models.adapter import resolve_adapter
from guardrail.requests import Request
from guardrail.steering.activations import capture_last, forward_last, model_inputs

SPLITS = ("eval", "figstep_eval")


@torch.inference_mode()
def second_look(testbed: str, texts: list[str], k: int, batch_size: int) -> dict[str, torch.Tensor]:
    """{'last', 'mean'}: (layers, n, hidden) after k greedy answer tokens; cached under /tmp."""
    key = hashlib.sha256(json.dumps([testbed, texts, k]).encode()).hexdigest()[:16]
    path = CACHE / f"{testbed}-look{k}-{key}.pt"
    if path.is_file():
        return torch.load(path)
    from guardrail_testbeds.build import load

    model, tok = load(testbed)
    adapter = resolve_adapter(model)
    layers = adapter.decoder_layers(model)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    last: list[torch.Tensor] = [torch.empty(0)] * len(texts)
    mean: list[torch.Tensor] = [torch.empty(0)] * len(texts)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        inputs = model_inputs(model, adapter.build_inputs(tok, [Request(text=texts[i]) for i in chunk]))
        pad = adapter.pad_token_id(model, tok)
        ids = model.generate(**inputs, max_new_tokens=k, min_new_tokens=k, do_sample=False, pad_token_id=pad)
        new = ids.shape[1] - inputs["input_ids"].shape[1]
        mask = torch.cat([inputs["attention_mask"], torch.ones(len(chunk), new, dtype=torch.long)], dim=1)
        with capture_last(layers, pool_mask=mask, pooled=True) as captured:
            forward_last(model, {"input_ids": ids, "attention_mask": mask})
        for pool, rows in ((captured, last), (captured.pooled, mean)):
            stacked = torch.stack([pool[i] for i in range(len(layers))]).float()
            for j, index in enumerate(chunk):
                rows[index] = stacked[:, j].half()
    data = {"last": torch.stack(last, dim=1), "mean": torch.stack(mean, dim=1)}
    torch.save(data, path)
    return data


def train_on(data: dict, y: np.ndarray, split: np.ndarray) -> np.ndarray:
    """Probe v2 trained on `fit`: its scores for every item."""
    return scores_of(train_deployed_v2(data, y, split), data)


def either(first: np.ndarray, second: np.ndarray, y: np.ndarray, split: np.ndarray, fpr: float) -> dict[str, Any]:
    """Open when either score passes; the FPR budget split between the two is chosen on select."""
    sel = split == "select"
    benign = lambda s: s[sel & ~y]
    best: tuple[float, float, float] | None = None
    for share in np.linspace(0.0, 1.0, 11):
        t1 = threshold_at_fpr(benign(first), fpr * share) if share > 0 else np.inf
        t2 = threshold_at_fpr(benign(second), fpr * (1 - share)) if share < 1 else np.inf
        opened = (first >= t1) | (second >= t2)
        if np.mean(opened[sel & ~y]) <= fpr and (best is None or np.mean(opened[sel & y]) > best[0]):
            best = (float(np.mean(opened[sel & y])), t1, t2)
    assert best is not None, "share 1.0 alone meets the budget"
    _, t1, t2 = best
    opened = (first >= t1) | (second >= t2)
    return {
        "thresholds": [t1, t2],
        **{s: {"tpr": float(np.mean(opened[(split == s) & y])), "fpr": float(np.mean(opened[(split == s) & ~y]))}
           for s in SPLITS},
    }  # fmt: skip


def main() -> None:
    from guardrail_testbeds.gate_sets import gate_items

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--testbed", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    items = gate_items(FIGSTEP)
    texts = [i.text for i in items]
    y, split = np.array([i.harmful for i in items]), np.array([i.split for i in items])
    prefill = train_on(activations(args.testbed, texts, args.batch_size), y, split)
    look = train_on(second_look(args.testbed, texts, args.k, args.batch_size), y, split)
    report: dict[str, Any] = {"testbed": args.testbed, "k": args.k}
    for name, scores in (("prefill", prefill), (f"after {args.k} tokens", look)):
        report[name] = {s: bootstrap(scores[split == s], y[split == s]) for s in SPLITS}
    report["either"] = {f"{fpr:.0%}": either(prefill, look, y, split, fpr) for fpr in (0.01, 0.05)}
    report["command"] = f"python benchmarks/gate_second_look.py --testbed {args.testbed} --k {args.k} --out {args.out}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
