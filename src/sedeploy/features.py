"""The reference's feature-map view: each image beside the first N channels of every conv block.

As in the source, forward hooks on the conv layers capture their outputs; the original image is
shown de-normalized. Images are decoded with the runtime's loader (no torch there) and resized
and normalized with torchvision, as the model was evaluated.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

import numpy as np
import torch

from .core.errors import UserError
from .core.io import atomic_write, ensure_writable_dir
from .core.decode import load_image
from .checkpoint import build_model, load_checkpoint


def eval_transform(input_size: Sequence[int], mean: Sequence[float], std: Sequence[float]):
    """torchvision's test-time transform for a decoded 'L'/'RGB' PIL image."""
    from torchvision import transforms as T
    return T.Compose([T.Resize(tuple(input_size[1:])), T.ToTensor(), T.Normalize(mean, std)])


def feature_maps(ckpt_path: str, images: List[str], out: str, channels: int = 9) -> List[Path]:
    if channels <= 0:
        raise UserError(f"--channels must be positive, got {channels}")
    ckpt = load_checkpoint(ckpt_path)
    model = build_model(ckpt, ckpt_path)
    outdir = ensure_writable_dir(out, option="--out")
    tf = eval_transform(ckpt["input_size"], ckpt["mean"], ckpt["std"])
    captured: List[torch.Tensor] = []
    hooks = [b.conv.register_forward_hook(lambda m, i, o: captured.append(o.detach())) for b in model.blocks]
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []
    try:
        for p in images:
            img = load_image(p, ckpt["input_size"][0])
            x = tf(img)[None]                                          # (1, C, H, W)
            captured.clear()
            with torch.no_grad():
                probs = torch.softmax(model(x), 1)[0]
            k = int(probs.argmax())
            n = min(channels, min(f.shape[1] for f in captured))
            fig, axes = plt.subplots(len(captured), n + 1, figsize=(1.6 * (n + 1), 1.7 * len(captured)))
            axes = np.atleast_2d(axes)
            shown = (x[0] * torch.tensor(ckpt["std"])[:, None, None] + torch.tensor(ckpt["mean"])[:, None, None])
            shown = shown.clamp(0, 1).permute(1, 2, 0).numpy()
            for r, fmap in enumerate(captured):
                ax0 = axes[r, 0]
                ax0.axis("off")
                if r == 0:
                    ax0.imshow(shown.squeeze(-1) if shown.shape[-1] == 1 else shown, cmap="gray")
                    ax0.set_title(f"{ckpt['classes'][k]}\n{100 * probs[k]:.1f}%", fontsize=8)
                for c in range(n):
                    ax = axes[r, c + 1]
                    ax.imshow(fmap[0, c].numpy(), cmap="viridis")
                    ax.set_title(f"conv{r + 1} ch{c}", fontsize=7)
                    ax.axis("off")
            fig.tight_layout()
            dest = outdir / f"{Path(p).stem}_features.png"
            atomic_write(dest, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
            plt.close(fig)
            written.append(dest)
    finally:
        for h in hooks:
            h.remove()
    return written
