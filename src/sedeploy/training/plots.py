"""The reference's figures as PNG: per-iteration loss, and per-epoch accuracy and loss."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

from ..core.io import atomic_write


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_history(history: Dict[str, Any], out: Path) -> List[Path]:
    """-> [loss_iterations.png, curves.png] written into out."""
    plt = _pyplot()
    written = []
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(range(1, len(history["iter_loss"]) + 1), history["iter_loss"], lw=0.6)
    ax.set(xlabel="iteration", ylabel="training loss", title="Training loss per iteration")
    ax.grid(alpha=0.3)
    written.append(_save(fig, out / "loss_iterations.png"))
    ep = history["epochs"]
    if ep:
        e = [r["epoch"] for r in ep]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
        on = ep[-1].get("selected_on", "test")
        for ax_, key, title in ((a1, "acc", "Accuracy (%)"), (a2, "loss", "Loss")):
            ax_.plot(e, [r[f"train_{key}"] for r in ep], "o-", label="train")
            if any(r.get(f"val_{key}") is not None for r in ep):
                ax_.plot(e, [r.get(f"val_{key}") for r in ep], "o-", label="validation (selects best.pt)")
            ax_.plot(e, [r[f"test_{key}"] for r in ep], "o--" if on == "val" else "o-",
                     label="test (not used for selection)" if on == "val" else "test (selects best.pt)")
            ax_.set(xlabel="epoch", title=title)
            ax_.legend()
            ax_.grid(alpha=0.3)
        written.append(_save(fig, out / "curves.png"))
    return written


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path
