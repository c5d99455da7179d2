"""Training curves as PNG bytes (matplotlib, headless): what the report embeds."""

from __future__ import annotations

import io

import matplotlib

from ..records import MetricsRow

matplotlib.use("Agg")  # no display on workers, CI or head nodes
import matplotlib.pyplot as plt  # noqa: E402


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def pretrain_curves(rows: list[MetricsRow]) -> bytes:
    """Loss and validation loss vs tokens, tokens/s and MFU vs step."""
    figure, (loss_axis, rate_axis) = plt.subplots(1, 2, figsize=(10, 3.6))
    tokens = [r.tokens / 1e6 for r in rows]
    loss_axis.plot(tokens, [r.loss for r in rows], label="train loss", linewidth=1)
    val = [(r.tokens / 1e6, r.val_loss) for r in rows if r.val_loss is not None]
    if val:
        loss_axis.plot(*zip(*val, strict=True), "o-", label="val loss")
    loss_axis.set_xlabel("tokens (M)")
    loss_axis.set_ylabel("loss (nats/token)")
    loss_axis.legend()
    loss_axis.grid(alpha=0.3)
    steps = [r.step for r in rows]
    rate_axis.plot(steps, [r.tokens_per_s for r in rows], color="tab:green", linewidth=1)
    rate_axis.set_xlabel("step")
    rate_axis.set_ylabel("tokens/s", color="tab:green")
    mfu_axis = rate_axis.twinx()
    mfu_axis.plot(steps, [100 * r.mfu for r in rows], color="tab:red", linewidth=1)
    mfu_axis.set_ylabel("MFU (%)", color="tab:red")
    rate_axis.grid(alpha=0.3)
    return _png(figure)


def finetune_curves(runs: dict[str, list[MetricsRow]]) -> bytes:
    """Per init (pretrained, scratch): train/val loss and validation accuracy vs step."""
    figure, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(10, 3.6))
    for (name, rows), color in zip(runs.items(), ("tab:blue", "tab:orange", "tab:green", "tab:red"), strict=False):
        steps = [r.step for r in rows]
        loss_axis.plot(steps, [r.loss for r in rows], color=color, alpha=0.4, linewidth=1, label=f"{name} train")
        val = [(r.step, r.val_loss, r.val_accuracy) for r in rows if r.val_loss is not None]
        if val:
            loss_axis.plot([v[0] for v in val], [v[1] for v in val], "o-", color=color, label=f"{name} val")
            acc_axis.plot([v[0] for v in val], [100 * (v[2] or 0) for v in val], "o-", color=color, label=name)
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("cross-entropy")
    loss_axis.legend(fontsize=8)
    loss_axis.grid(alpha=0.3)
    acc_axis.set_xlabel("step")
    acc_axis.set_ylabel("validation accuracy (%)")
    acc_axis.legend(fontsize=8)
    acc_axis.grid(alpha=0.3)
    return _png(figure)
