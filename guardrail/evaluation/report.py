"""Write an evaluation report as JSON (everything, answers included), markdown and a PNG plot."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from guardrail.evaluation.harness import EvalReport, Setting, SettingResult


def write_report(report: EvalReport, out_dir: str | Path, command: str = "") -> dict[str, Path]:
    """Write report.json, report.md and tradeoff.png into `out_dir`; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "markdown": out / "report.md", "plot": out / "tradeoff.png"}
    data = report.to_dict() | {"command": command}
    paths["json"].write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    paths["markdown"].write_text(markdown(report, command), encoding="utf-8")
    plot(report, paths["plot"])
    return paths


def load_report(path: str | Path) -> tuple[EvalReport, str]:
    """Read a report.json written by `write_report`: (report, the command that made it)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    results = []
    for r in data["results"]:
        fields = {k: v for k, v in r.items() if k != "label"}
        setting = dict(fields.pop("setting"))
        if isinstance(setting.get("layers"), list):
            setting["layers"] = tuple(setting["layers"])
        for key in ("harmful_refusal_ci", "benign_response_ci"):
            fields[key] = tuple(fields[key])
        results.append(SettingResult(setting=Setting(**setting), **fields))
    meta = {k: data[k] for k in ("model", "judge", "instruction", "max_new_tokens", "n_calibration", "artifacts")}
    return EvalReport(results=results, **meta), data.get("command", "")


def merge_reports(paths: list[str | Path], out_dir: str | Path) -> dict[str, Path]:
    """Write one report from several runs of the same model and protocol (their settings side by side)."""
    loaded = [load_report(p) for p in paths]
    first = loaded[0][0]
    for report, _ in loaded[1:]:
        same = (report.model, report.instruction, report.max_new_tokens, report.n_calibration)
        if same != (first.model, first.instruction, first.max_new_tokens, first.n_calibration):
            raise ValueError(f"cannot merge reports of different runs: {same} vs {first.model!r}, ...")
    merged = EvalReport(
        model=first.model,
        judge=first.judge,
        instruction=first.instruction,
        max_new_tokens=first.max_new_tokens,
        n_calibration=first.n_calibration,
        results=[r for report, _ in loaded for r in report.results],
        artifacts={k: v for report, _ in loaded for k, v in report.artifacts.items()},
    )
    return write_report(merged, out_dir, command=" ; ".join(command for _, command in loaded))


def markdown(report: EvalReport, command: str = "") -> str:
    lines = [
        f"# Evaluation: {report.model}",
        "",
        f"Judge: {report.judge}. {report.results[0].n_harmful if report.results else 0} held-out pairs, "
        f"{report.n_calibration} calibration pairs, greedy, {report.max_new_tokens} new tokens. "
        f'Instruction: "{report.instruction}". Brackets: 95% Wilson intervals.',
        "",
    ]
    if command:
        lines += ["Command:", "", f"    {command}", ""]
    lines += [
        "| setting | harmful refusal % | benign response % | first-token KL (benign) | steered harmful / benign % |",
        "|---|---|---|---|---|",
    ]
    for r in report.results:
        lines.append(
            f"| {r.label} | {_pct(r.harmful_refusal, r.harmful_refusal_ci)} | "
            f"{_pct(r.benign_response, r.benign_response_ci)} | {r.kl_benign:.4f} | "
            f"{100 * r.steered_harmful:.0f} / {100 * r.steered_safe:.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot(report: EvalReport, path: Path) -> None:
    """Harmful refusal vs benign response: one line per method (and k) across alpha."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list] = defaultdict(list)
    for r in report.results:
        s = r.setting
        key = (
            s.method
            + (f" k={s.rank}" if s.method == "sarsteer" else "")
            + ("" if s.layers == "all" else f" layers {s.layers[0]}-{s.layers[-1]}")
            + ({"always": "", "probe": " +probe", "probe_exact": " +probe exact"}[s.gate])
            + (f" t={s.threshold:g}" if s.threshold is not None else "")
            + (f" ({r.note})" if r.note else "")
        )
        groups[key].append(r)
    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    for key, results in groups.items():
        results.sort(key=lambda r: r.setting.alpha)
        xs = [100 * r.benign_response for r in results]
        ys = [100 * r.harmful_refusal for r in results]
        ax.plot(xs, ys, marker="o", label=key, linestyle="-" if len(results) > 1 else "none")
        for r, x, y in zip(results, xs, ys):
            if r.setting.alpha:
                ax.annotate(f"{r.setting.alpha:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("benign response rate % (higher is better)")
    ax.set_ylabel("harmful refusal rate % (higher is better)")
    ax.set_xlim(-3, 103)
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.set_title(f"{report.model}: refusal vs over-refusal (labels: alpha)", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _pct(value: float, ci: tuple[float, float]) -> str:
    return f"{100 * value:.0f} [{100 * ci[0]:.0f}-{100 * ci[1]:.0f}]"
