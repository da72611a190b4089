"""Text the commands print: backtest scores."""

from __future__ import annotations

from typing import Any


def scores(scores: dict[str, Any], label: str) -> str:
    """Backtest scores of the model (named ``label``) and the baselines, one line each."""
    from kronos_tasks.evaluation.backtest import BASELINES

    lines = [f"{scores['origins']} origins, {scores['points']} points (close)"]
    for name in ("model", *BASELINES):
        if name not in scores:
            continue
        entry = scores[name]
        shown = label if name == "model" else name
        text = (
            f"  {shown:<22} MAE {entry['mae']:.6g}  MAPE {entry['mape']:.3f}%  skill vs persistence "
            f"{entry['skill']:+.3f}  direction {entry['direction_accuracy']:.3f} "
            f"[{entry['direction_ci_low']:.3f}, {entry['direction_ci_high']:.3f}]"
        )
        if "brier" in entry:
            text += f"  Brier {entry['brier']:.4f}"
        lines.append(text)
    model = scores.get("model", {})
    extra = {k: v for k, v in model.items() if k.startswith(("pinball", "crps", "coverage", "brier_skill"))}
    if extra:
        lines.append("  " + "  ".join(f"{k} {v:.4g}" for k, v in extra.items()))
    if "reliability" in scores:
        lines.append(
            "  reliability of P(close up): "
            + ", ".join(
                f"[{b['bin_low']:.1f},{b['bin_high']:.1f}) n={b['count']} obs={b['observed']:.2f}"
                for b in scores["reliability"]
                if b["count"]
            )
        )
    return "\n".join(lines)
