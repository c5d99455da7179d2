"""The one place where parallelism is applied: wrap a Sora model in a DeepSpeed engine.

`zero1/2/3`: the flat model of the run's objective (`objective.py`: `SoraForCausalLM` for
pretraining, `SoraForSequenceClassification` for fine-tuning), data parallel with ZeRO sharding.
`pipeline` (causal LM only): a
`PipelineModule` built from `sora.pipeline_view` (tied embeddings via `TiedLayerSpec`), trained
with `train_batch`, data parallel across pipeline replicas with ZeRO-0/1. Both expose the same
small interface to the training loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec

from sora import SoraConfig, SoraForCausalLM, causal_lm_loss
from sora.modeling_sora import set_activation_checkpointing
from sora.pipeline_view import pipeline_key_to_flat, pipeline_layer_specs

from ..config.train import TrainConfig

if TYPE_CHECKING:
    from .export import ExportPlan


def _compile_muon_kernels_lazily() -> None:
    """Skip TorchInductor's import at every DeepSpeed engine build (worker start and restart).

    `deepspeed.initialize` checks the optimizer against ZeRO's supported list, and that check
    imports DeepSpeed's Muon optimizer, whose kernels are decorated with `torch.compile` when the
    module loads: the decoration imports TorchInductor, about 1 CPU-second (1.5-2.5 s of a worker
    restart on a busy node) though Muon is never used here. The kernels are compiled on their
    first call instead, which is when `torch.compile` compiles anyway.
    """
    import functools

    from deepspeed.runtime import compiler

    def compile_on_first_call():
        def decorate(function):
            compiled = []

            @functools.wraps(function)
            def call(*args, **kwargs):
                if not compiled:
                    compiled.append(torch.compile(function))
                return compiled[0](*args, **kwargs)

            return call

        return decorate

    if hasattr(torch, "compile"):
        compiler.compile = compile_on_first_call


_compile_muon_kernels_lazily()


def lr_lambda(train: TrainConfig):
    """Linear warmup to `lr`, then cosine decay to `min_lr` at `max_steps` (as a factor of lr)."""

    def factor(step: int) -> float:
        if step < train.warmup_steps:
            return (step + 1) / train.warmup_steps
        progress = min(1.0, (step - train.warmup_steps) / max(1, train.max_steps - train.warmup_steps))
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return (train.min_lr + (train.lr - train.min_lr) * cosine) / train.lr

    return factor


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if param.requires_grad:
            # Under ZeRO-3 construction a parameter is an empty placeholder; `ds_shape` is its real shape.
            shape = getattr(param, "ds_shape", param.shape)
            (decay if len(shape) >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # No empty groups: ZeRO drops them, and the LR scheduler (built on the groups given here) would
    # then disagree with the optimizer on their number (LoRA trains matrices only).
    return [group for group in groups if group["params"]]


def _optimizer(model: torch.nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; with CPU offload DeepSpeed's own CPU Adam (it refuses a torch optimizer there)."""
    groups = _param_groups(model, train.weight_decay)
    if train.offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=train.lr, betas=(0.9, 0.95), eps=1e-8, adamw_mode=True)
    return torch.optim.AdamW(groups, lr=train.lr, betas=(0.9, 0.95), eps=1e-8)


def build_flat_model(model_config: SoraConfig, ds_config: dict[str, Any]) -> tuple[torch.nn.Module, Any]:
    """The flat model; under ZeRO-3 partitioned while it is built (`deepspeed.zero.Init` through
    transformers' `HfDeepSpeedConfig`), so a rank never holds more than its share of a model
    that does not fit one device. Returns the model and the `HfDeepSpeedConfig`, which must stay
    alive as long as the model (transformers finds the ZeRO-3 setting through it)."""
    context = None
    if ds_config["zero_optimization"]["stage"] == 3:
        from transformers import AutoModelForCausalLM
        from transformers.integrations import HfDeepSpeedConfig

        context = HfDeepSpeedConfig(ds_config)
        model = AutoModelForCausalLM.from_config(model_config)
    else:
        model = SoraForCausalLM(model_config)
    model.config.use_cache = False
    return model, context


class Engine:
    """A DeepSpeed engine plus how to run a step, evaluate and export for one strategy."""

    def __init__(
        self,
        train: TrainConfig,
        model_config: SoraConfig,
        ds_config: dict[str, Any],
        device: torch.device,
        objective: Any,
    ) -> None:
        self.train, self.model_config, self.device, self.objective = train, model_config, device, objective
        self.pipeline = train.strategy == "pipeline"
        torch.manual_seed(train.seed)  # identical initialization on every rank
        if self.pipeline:
            specs = [
                TiedLayerSpec(s.tie_key, s.cls, *s.args, forward_fn=s.forward_fn, tied_weight_attr=s.tied_weight_attr)
                if s.tie_key
                else LayerSpec(s.cls, *s.args)
                for s in pipeline_layer_specs(model_config)
            ]
            model = PipelineModule(
                layers=specs,
                num_stages=train.pipeline_stages,
                loss_fn=causal_lm_loss,
                partition_method="parameters",
                # DeepSpeed's per-layer seeding passes numpy ints to random.seed (TypeError on
                # Python 3.11); torch is seeded above instead.
                seed_layers=False,
            )
        else:
            model, self._construction_context = objective.build_model(model_config, ds_config)
        # The same blocks in either layout: a pipeline stage's blocks keep their model-wide index.
        set_activation_checkpointing(model, train.activation_checkpointing)
        optimizer = _optimizer(model, train)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(train))
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config, dist_init_required=False
        )
        self.dtype = torch.bfloat16 if ds_config["bf16"]["enabled"] else torch.float32

    def local_parameter_count(self) -> int:
        """Parameter elements stored on this rank (its ZeRO-3 partition when partitioned)."""
        return sum(
            p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in self.engine.module.parameters()
        )

    # -- training ----------------------------------------------------------------------------
    def train_step(self, micro_batches: list[tuple[torch.Tensor, ...]]) -> float:
        """One optimizer step over this rank's micro-batches; returns the loss averaged over all ranks."""
        if self.pipeline:
            loss = self.engine.train_batch(data_iter=iter(self._to_device(micro_batches)))
            return float(loss)
        total = torch.zeros((), device=self.device)
        for batch in self._to_device(micro_batches):
            loss = self.objective.loss(self.engine, batch)
            self.engine.backward(loss)
            self.engine.step()
            total += loss.detach()
        total /= len(micro_batches)
        _all_reduce_mean(total)
        return float(total)

    @torch.no_grad()
    def evaluate(self, batches: list[tuple[torch.Tensor, ...]]) -> dict[str, float]:
        """Validation loss per target over every rank's batches (and accuracy where the objective
        counts correct predictions)."""
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        if self.pipeline:
            for batch in self._to_device(batches):
                loss = self.engine.eval_batch(iter([batch]), num_micro_batches=1)
                tokens = (batch[1] != -100).sum()
                sums[:2] += torch.stack([loss.double().reshape(()).to(self.device) * tokens, tokens.double()])
        else:
            self.engine.eval()
            for batch in self._to_device(batches):
                sums += self.objective.eval_sums(self.engine, batch).to(self.device)
            self.engine.train()
        dist.all_reduce(sums)
        result = {"loss": float(sums[0] / sums[1])}
        if self.objective.name != "causal_lm":
            result["accuracy"] = float(sums[2] / sums[1])
        return result

    def _to_device(self, batches):
        return [tuple(t.to(self.device) for t in batch) for batch in batches]

    @property
    def lr(self) -> float:
        return self.engine.get_lr()[0]

    @property
    def grad_norm(self) -> float | None:
        norm = self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)

    # -- checkpoints ---------------------------------------------------------------------------
    def save(self, directory: str, tag: str) -> None:
        self.engine.save_checkpoint(directory, tag=tag, save_latest=False)

    def load(self, directory: str, tag: str, warm_start: bool = False) -> None:
        """Resume everything; or, for a warm start (`warm_start.py`), weights and optimizer moments
        under this run's own hyperparameters, schedule and step counters."""
        fresh = [
            {k: v for k, v in g.items() if k not in ("params", "step")} for g in self.engine.optimizer.param_groups
        ]
        path, _ = self.engine.load_checkpoint(
            directory, tag=tag, load_optimizer_states=True, load_lr_scheduler_states=not warm_start
        )
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {tag} from {directory}")
        if warm_start:
            # The loaded param groups carry the parent's last LR and its weight decay/betas; the
            # moments (and Adam's per-parameter step, which their bias correction needs) stay.
            for group, own in zip(self.engine.optimizer.param_groups, fresh, strict=True):
                group.update(own)
            self.engine.global_steps = self.engine.global_samples = self.engine.skipped_steps = 0

    def universal_parameters(self) -> set[str] | None:
        """The parameters whose files this rank reads when it loads a universal checkpoint (None:
        all of them; see train/universal.py `loaded_by`). Under ZeRO-1/2, DeepSpeed reads only
        those overlapping this rank's optimizer partition: the ones it linked to a high-precision
        fragment (`_hp_mapping`) while building the optimizer. ZeRO-3 reads every parameter's."""
        if self.engine.zero_optimization_stage() not in (1, 2):
            return None
        names = getattr(self.engine.optimizer, "param_names", None)
        if not names:
            return None
        return {name for param, name in names.items() if getattr(param, "_hp_mapping", None) is not None}

    # -- export --------------------------------------------------------------------------------
    def export_weights(self, plan: ExportPlan, write: Callable[[str, torch.Tensor], None] | None) -> None:
        """Every rank: hand the exported tensors to `write` (global rank 0's `HFExport.write`; None
        elsewhere) one at a time, in the plan's order. No rank ever holds more than its own weights
        plus one tensor of the export.

        ZeRO: each tensor's parameters are gathered (all ranks, one tensor at a time under ZeRO-3)
        and rank 0 writes the objective's value of them (`Objective.export_sources`: the parameter,
        or e.g. a LoRA-merged weight). Pipeline: the data-parallel-0 rank of each stage sends its
        stage's tensors to rank 0 one at a time over a CPU (gloo) group, in the plan's order."""
        if self.pipeline:
            self._export_pipeline(plan, write)
            return
        sources = self.objective.export_sources(self.engine.module)
        missing = [name for name in plan.names if name not in sources]
        if missing:
            raise RuntimeError(f"export: the trained model has no parameters for {missing[:3]}")
        for name in plan.names:
            source = sources[name]
            with deepspeed.zero.GatheredParameters(source.params, modifier_rank=None):
                if write is not None:
                    write(name, source.value())

    def _export_pipeline(self, plan: ExportPlan, write: Callable[[str, torch.Tensor], None] | None) -> None:
        module, rank = self.engine.module, dist.get_rank()
        local: dict[str, torch.Tensor] = {}
        if self.engine.grid.data_parallel_id == 0:
            for offset, layer in enumerate(module.forward_funcs):
                if isinstance(layer, torch.nn.Module):  # a tied head is a function of the embedding
                    index = module._local_start + offset
                    for key, tensor in layer.state_dict(keep_vars=True).items():
                        local[pipeline_key_to_flat(f"{index}.{key}", self.model_config)] = tensor
        # Tensors cross in host memory (a gloo group beside NCCL): rank 0's device never holds
        # another stage's tensor, and each sender copies one tensor at a time off its device.
        group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        held: list[dict[str, tuple[tuple[int, ...], torch.dtype]] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(held, {name: (tuple(t.shape), t.dtype) for name, t in local.items()}, group=group)
        owner: dict[str, tuple[int, torch.dtype]] = {}
        for source, tensors in enumerate(held):
            for name, (shape, dtype) in tensors.items():
                expected = plan.entries[name].shape if name in plan.entries else shape
                if shape != expected:
                    raise RuntimeError(f"export: {name} has shape {shape} on rank {source}, {expected} in the model")
                owner.setdefault(name, (source, dtype))
        missing = [name for name in plan.names if name not in owner]
        if missing:  # every rank sees the same maps: all raise, none waits in a transfer
            raise RuntimeError(f"export: no pipeline stage holds {missing[:3]}")
        # Each tensor crosses in its training dtype (bf16: half the bytes of the fp32 export);
        # `write` casts it to the export's dtype on rank 0.
        for name in plan.names:
            entry, (source, dtype) = plan.entries[name], owner[name]
            if rank == source:
                tensor = local[name].detach().to("cpu").contiguous()
                if rank == 0:
                    write(name, tensor)
                else:
                    dist.send(tensor, dst=0, group=group)
            elif rank == 0:
                tensor = torch.empty(entry.shape, dtype=dtype)
                dist.recv(tensor, src=source, group=group)
                write(name, tensor)
        if group is not None:
            dist.destroy_process_group(group)


def _all_reduce_mean(tensor: torch.Tensor) -> None:
    # SUM then divide: gloo has no ReduceOp.AVG
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    tensor /= dist.get_world_size()
