"""`sora plan`: per-GPU memory of each parallelism strategy for a run config, before anything launches.

Model-state bytes follow DeepSpeed's own accounting (bf16 weights and gradients, fp32 master weights
and Adam moments), so the totals agree with `estimate_zero2_model_states_mem_needs` and
`estimate_zero3_model_states_mem_needs` (a test checks it):

    zero1     params 2N          grads 2N + 4N/d     optimizer 12N/d
    zero2     params 2N          grads 6N/d          optimizer 12N/d      (DeepSpeed: 2N + 18N/d)
    zero3     params 2N/d + 4L   grads 4N/d          optimizer 12N/d      (DeepSpeed: 4L + 18N/d)
    offload   params 4L on the GPU; 18N x 1.5 per node in CPU memory      (DeepSpeed: 4L)
    pipeline  zero1 on the parameters of the heaviest stage, d = workers / stages

N parameters, d data-parallel ranks, L the largest single module (what ZeRO-3 gathers at once).
Activations are the tensors autograd keeps for one micro batch: a block's full activations, or,
for a block that `train.activation_checkpointing` checkpoints (every block, or one in n), only its
input, plus one block's full activations while the backward recomputes it; a pipeline stage keeps
up to min(stages - i, micro-batches) micro batches of them (DeepSpeed's 1F1B schedule) and
recomputes one block at a time. The pipeline bubble is (p - 1) / (m + p - 1).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..config.run import RunConfig
from ..errors import UserError

GIB = 1 << 30
STRATEGIES = ("zero1", "zero2", "zero3", "pipeline", "offload")
# Preference among the strategies that fit: least communication first (ZeRO-2 moves as many bytes
# as ZeRO-1 with less memory; ZeRO-3 adds a parameter all-gather; pipeline idles in its bubble;
# offload is bound by PCIe).
PREFERENCE = ("zero2", "zero1", "zero3", "pipeline", "offload")
OVERHEAD_BYTES = 2 * GIB  # CUDA context, NCCL and DeepSpeed communication buckets (assumed)


@dataclass(frozen=True)
class ModelShape:
    """What the memory model needs to know about the model, read from a meta-device instance."""

    total_params: int
    largest_module_params: int
    layers: int
    hidden: int
    kv_dim: int
    ffn: int
    vocab: int
    layer_params: tuple[int, ...]  # pipeline layer list: embedding, blocks..., final norm, head

    @classmethod
    def from_config(cls, config: RunConfig) -> ModelShape:
        import torch

        from sora import SoraConfig, SoraForCausalLM

        overrides = {"vocab_size": config.data.tokenizer.vocab_size, **config.train.model_overrides}
        model_config = SoraConfig.from_preset(config.train.model, **overrides)
        with torch.device("meta"):
            model = SoraForCausalLM(model_config)
        largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
        total = sum(p.numel() for p in model.parameters())
        blocks = [sum(p.numel() for p in block.parameters()) for block in model.model.layers]
        embed = model.model.embed_tokens.weight.numel()
        final_norm = sum(p.numel() for p in model.model.norm.parameters())
        return cls(
            total_params=total,
            largest_module_params=largest,
            layers=model_config.num_hidden_layers,
            hidden=model_config.hidden_size,
            kv_dim=model_config.num_key_value_heads * model_config.head_dim,
            ffn=model_config.intermediate_size,
            vocab=model_config.vocab_size,
            layer_params=(embed, *blocks, final_norm, embed),  # the head has the embedding's shape
        )


@dataclass
class StrategyPlan:
    strategy: str
    gpus: int
    stages: int
    params: float
    grads: float
    optimizer: float
    activations: float
    min_gpus: int | None = None
    bubble: float | None = None
    cpu_per_node: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optimizer + self.activations + OVERHEAD_BYTES

    def fits(self, gpu_memory: float) -> bool:
        return self.total <= gpu_memory


def model_state_bytes(strategy: str, n: int, largest: int, d: int, half: int = 2) -> tuple[float, float, float]:
    """(params, grads, optimizer) bytes per GPU for `n` parameters sharded over `d` ranks."""
    if strategy in ("zero1", "pipeline"):
        return half * n, half * n + 4 * n / d, 12 * n / d
    if strategy == "zero2":
        return half * n, (half + 4) * n / d, 12 * n / d
    if strategy == "zero3":
        return half * n / d + 4 * largest, 4 * n / d, 12 * n / d
    if strategy == "offload":
        return 4 * largest, 0.0, 0.0
    raise ValueError(f"unknown strategy {strategy!r}")


def activation_bytes(shape: ModelShape, micro_batch: int, seq_len: int, half: int = 2) -> tuple[float, float, float]:
    """(per transformer block, per checkpointed block, logits + loss) bytes autograd keeps for one
    micro batch.

    Per block and token: the residual input and norm output of attention and MLP (4h), q/k/v
    (h + 2 kv), the attention output (h), gate, up, SiLU(gate) and their product (4 ffn). SDPA
    keeps no score matrix. A checkpointed block keeps only its input (h). The logits are kept in
    bf16 and in fp32 for the cross entropy.
    """
    tokens = micro_batch * seq_len
    block = tokens * (6 * shape.hidden + 2 * shape.kv_dim + 4 * shape.ffn) * half
    checkpointed = tokens * shape.hidden * half
    logits = tokens * shape.vocab * (half + 4) + tokens * shape.hidden * half
    return block, checkpointed, logits


def block_activation_bytes(
    shape: ModelShape, blocks: Iterable[int], every: int, micro_batch: int, seq_len: int, half: int = 2
) -> tuple[float, float]:
    """(kept from forward to backward, recomputation) bytes of one micro batch through `blocks`
    (block indices), checkpointing the blocks whose index is a multiple of `every` (0: none), as
    `sora.modeling_sora.set_activation_checkpointing` does: the backward recomputes one checkpointed
    block at a time, holding its full activations until it is done."""
    block, checkpointed, _ = activation_bytes(shape, micro_batch, seq_len, half)
    blocks = list(blocks)
    recomputed = sum(1 for i in blocks if every and i % every == 0)
    kept = (len(blocks) - recomputed) * block + recomputed * checkpointed
    return kept, block if recomputed else 0.0


def balanced_partition(weights: list[int], parts: int) -> list[list[int]]:
    """Contiguous split of the indices of `weights` into `parts` groups minimizing the heaviest
    group (DeepSpeed's `partition_method="parameters"`)."""

    def split(limit: int) -> list[list[int]] | None:
        groups: list[list[int]] = [[]]
        for i, weight in enumerate(weights):
            if groups[-1] and sum(weights[k] for k in groups[-1]) + weight > limit:
                groups.append([])
            groups[-1].append(i)
        return groups if len(groups) <= parts else None

    low, high = max(weights), sum(weights)
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if split(mid) else (mid + 1, high)
    groups = split(low) or [list(range(len(weights)))]
    while len(groups) < parts:  # fewer groups than stages: split the heaviest multi-layer group
        i = max((k for k in range(len(groups)) if len(groups[k]) > 1), key=lambda k: len(groups[k]))
        groups[i : i + 1] = [groups[i][:1], groups[i][1:]]
    return groups


def _pipeline(shape: ModelShape, stages: int, d: int, micro: int, seq: int, grad_accum: int, half: int, every: int):
    groups = balanced_partition(list(shape.layer_params), stages)
    logits_act = activation_bytes(shape, micro, seq, half)[2]
    worst = None
    for i, group in enumerate(groups):
        n = sum(shape.layer_params[k] for k in group)
        # layer_params index k is block k - 1 (index 0 is the embedding).
        blocks = [k - 1 for k in group if 1 <= k <= shape.layers]
        kept, recompute = block_activation_bytes(shape, blocks, every, micro, seq, half)
        in_flight = min(stages - i, grad_accum)
        act = in_flight * kept + recompute + (logits_act if i == stages - 1 else 0)
        states = model_state_bytes("pipeline", n, 0, d, half)
        candidate = (sum(states) + act, states, act)
        worst = candidate if worst is None or candidate[0] > worst[0] else worst
    return worst


def plan_strategy(
    shape: ModelShape,
    config: RunConfig,
    strategy: str,
    gpus: int,
    stages: int = 1,
    gpus_per_node: int = 8,
    checkpointing: int | None = None,
) -> StrategyPlan:
    """One strategy's per-GPU memory; `checkpointing` overrides `train.activation_checkpointing`."""
    train = config.train
    every = train.activation_checkpointing if checkpointing is None else checkpointing
    half = 4 if train.precision == "fp32" else 2
    seq = config.data.seq_len
    d = max(1, gpus // stages)
    grad_accum = max(1, train.global_batch // (train.micro_batch * d))
    if strategy == "pipeline":
        _, states, act = _pipeline(shape, stages, d, train.micro_batch, seq, grad_accum, half, every)
        result = StrategyPlan(strategy, gpus, stages, *states, act)
        result.bubble = (stages - 1) / (grad_accum + stages - 1)
        return result
    states = model_state_bytes(strategy, shape.total_params, shape.largest_module_params, d, half)
    kept, recompute = block_activation_bytes(shape, range(shape.layers), every, train.micro_batch, seq, half)
    logits_act = activation_bytes(shape, train.micro_batch, seq, half)[2]
    result = StrategyPlan(strategy, gpus, 1, *states, kept + recompute + logits_act)
    if strategy == "offload":
        nodes = math.ceil(gpus / gpus_per_node)
        result.cpu_per_node = 18 * shape.total_params / nodes * 1.5
    return result


def _pipeline_stages(config: RunConfig, shape: ModelShape, gpus: int) -> int:
    if config.train.strategy == "pipeline":
        return config.train.pipeline_stages
    divisors = [p for p in range(2, min(gpus, shape.layers) + 1) if gpus % p == 0]
    return divisors[0] if divisors else 2


def _min_gpus(shape: ModelShape, config: RunConfig, strategy: str, stages: int, gpu_memory: float, per_node: int):
    # Model states shrink with more ranks, activations do not: search the smallest world size.
    for d in range(1, 4097):
        gpus = d * stages
        if plan_strategy(shape, config, strategy, gpus, stages, per_node).fits(gpu_memory):
            return gpus
    return None


def make_plan(config: RunConfig, gpu_memory_gib: float = 80.0, gpus_per_node: int = 8) -> dict:
    """Every strategy at the configured number of workers, the smallest world size where each fits,
    and a recommendation. Raises `UserError` when the configured strategy cannot fit."""
    shape = ModelShape.from_config(config)
    gpu_memory = gpu_memory_gib * GIB
    # Elastic [min, max]: planned at the fewest workers, where ZeRO shards over the fewest GPUs.
    gpus = config.train.min_workers
    stages = _pipeline_stages(config, shape, gpus)
    plans = []
    for strategy in STRATEGIES:
        p = stages if strategy == "pipeline" else 1
        plan = plan_strategy(shape, config, strategy, max(gpus, p), p, gpus_per_node)
        plan.min_gpus = _min_gpus(shape, config, strategy, p, gpu_memory, gpus_per_node)
        if strategy == "pipeline" and gpus < p:
            plan.notes.append(f"needs at least {p} GPUs")
        plans.append(plan)
    by_name = {plan.strategy: plan for plan in plans}
    usable = [name for name in PREFERENCE if by_name[name].fits(gpu_memory) and by_name[name].gpus <= max(gpus, 1)]
    configured = "offload" if config.train.offload else config.train.strategy
    result = {
        "model": config.train.model,
        "params": shape.total_params,
        "largest_module_params": shape.largest_module_params,
        "gpus": gpus,
        "gpu_memory_gib": gpu_memory_gib,
        "pipeline_stages": stages,
        "plans": plans,
        "configured": configured,
        "activation_checkpointing": config.train.activation_checkpointing,
        "recommendation": usable[0] if usable else None,
        "workers": _worker_range(config.train),
    }
    if configured not in usable:
        need = by_name[configured]
        other = f"; {', '.join(usable)} fit{'s' if len(usable) == 1 else ''}" if usable else ""
        at_least = f"; it fits from {need.min_gpus} GPUs" if need.min_gpus else "; it fits at no number of GPUs"
        recomputing = plan_strategy(shape, config, need.strategy, need.gpus, need.stages, gpus_per_node, 1)
        if config.train.activation_checkpointing != 1 and recomputing.fits(gpu_memory):
            at_least += f"; with train.activation_checkpointing: every_layer it needs {recomputing.total / GIB:.1f} GiB"
        raise UserError(
            f"plan does not fit: {configured} needs {need.total / GIB:.1f} GiB per GPU on {gpus} GPUs but a GPU has "
            f"{gpu_memory_gib:g} GiB{at_least}{other}"
        )
    return result


def _worker_range(train) -> list[dict] | None:
    """Elastic runs: the batch split at every worker count of the range (None for a fixed count)."""
    if not train.elastic:
        return None
    splits = [train.split(w) for w in train.worker_counts]
    return [{"workers": s.workers, "micro_batch": s.micro_batch, "grad_accum": s.grad_accum} for s in splits]


def checkpointing_text(every: int) -> str:
    """The plan's line on `train.activation_checkpointing`."""
    if every == 0:
        return "off (every block keeps its activations; train.activation_checkpointing: every_layer or n lowers them)"
    if every == 1:
        return "every layer (each block keeps only its input; the backward recomputes one block at a time)"
    blocks = f"blocks 0, {every}, {2 * every}, ..."
    return f"one block in {every} ({blocks} keep only their input; the backward recomputes one at a time)"


def format_plan(result: dict) -> str:
    def gib(value: float | None) -> str:
        return "-" if value is None else f"{value / GIB:.2f}"

    lines = [
        f"model {result['model']}: {result['params']:,} parameters, largest module "
        f"{result['largest_module_params']:,}; {result['gpus']} GPUs of {result['gpu_memory_gib']:g} GiB "
        f"(per-GPU GiB; total includes {OVERHEAD_BYTES / GIB:g} GiB for CUDA context and buffers)",
        f"{'strategy':<20}{'params':>9}{'grads':>9}{'optim':>9}{'activ':>9}{'total':>9}{'fits':>6}"
        f"{'min GPUs':>10}{'bubble':>8}{'CPU/node':>10}",
    ]
    for plan in result["plans"]:
        name = f"pipeline(p={plan.stages})+zero1" if plan.strategy == "pipeline" else plan.strategy
        name = "zero3+offload" if plan.strategy == "offload" else name
        fits = "yes" if plan.fits(result["gpu_memory_gib"] * GIB) else "no"
        bubble = "-" if plan.bubble is None else f"{plan.bubble:.1%}"
        lines.append(
            f"{name:<20}{gib(plan.params):>9}{gib(plan.grads):>9}{gib(plan.optimizer):>9}{gib(plan.activations):>9}"
            f"{gib(plan.total):>9}{fits:>6}{plan.min_gpus or '-':>10}{bubble:>8}{gib(plan.cpu_per_node):>10}"
            + (f"  ({'; '.join(plan.notes)})" if plan.notes else "")
        )
    lines.append(f"activation checkpointing: {checkpointing_text(result['activation_checkpointing'])}")
    lines.append(f"configured: {result['configured']}; recommended: {result['recommendation']}")
    if result.get("workers"):
        counts = result["workers"]
        split = ", ".join(f"{c['workers']}: {c['micro_batch']} x {c['grad_accum']}" for c in counts)
        lines.append(
            f"elastic workers {counts[0]['workers']}-{counts[-1]['workers']}: planned at {counts[0]['workers']} "
            f"(the fewest); micro-batch x accumulation per worker count: {split}"
        )
    return "\n".join(lines)
