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
    _throughput(rate_axis, rows)
    return _png(figure)


def _throughput(axis, rows: list[MetricsRow]) -> None:
    """Tokens/s vs step, with MFU on the right. MFU is tokens/s times a constant of the run (FLOPs
    per token over peak FLOP/s), so it is the same curve: drawn as a second scale of one line, not as
    a second line hiding the first; a run whose ratio changed (a resume on other hardware) gets both."""
    rated = [r for r in rows if r.tokens_per_s is not None]
    steps = [r.step for r in rated]
    axis.plot(steps, [r.tokens_per_s for r in rated], color="tab:green", linewidth=1)
    axis.set_xlabel("step")
    axis.set_ylabel("tokens/s", color="tab:green")
    axis.grid(alpha=0.3)
    ratios = [r.mfu / r.tokens_per_s for r in rated if r.mfu is not None and r.tokens_per_s > 0]
    if not ratios:
        return
    low, high = min(ratios), max(ratios)
    if high <= low * 1.01:
        percent_per_token = 100 * sorted(ratios)[len(ratios) // 2]
        mfu_axis = axis.secondary_yaxis(
            "right", functions=(lambda t: t * percent_per_token, lambda m: m / percent_per_token)
        )
    else:
        mfu_axis = axis.twinx()
        mfu = [(r.step, 100 * r.mfu) for r in rated if r.mfu is not None]
        mfu_axis.plot(*zip(*mfu, strict=True), color="tab:red", linewidth=1, linestyle="--")
    mfu_axis.set_ylabel("MFU (%)", color="tab:red")


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
