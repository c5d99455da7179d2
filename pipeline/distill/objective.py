"""Distillation objective: pretraining's next-token data and model (`LanguageModeling`) with a frozen
teacher whose softened logits the student also learns from (the loss: `loss.py`).

The teacher is the teacher run's HF export, copied once per node (`export_download.py`) and loaded
when the worker binds, before any collective (a slow download then keeps the other ranks in Ray
Train's barrier, which has no timeout), and so before the student is built, never under the
student's ZeRO-3 construction (`HfDeepSpeedConfig` / `zero.Init` would partition it). Its weights
go straight from the files onto the worker's device (`device_map`): no rank builds it in host
memory first (at 7B, 14 GB per rank, 8 ranks per node). Every rank holds a whole plain copy on its
own device, in the training precision, with no gradients, in eval mode, outside DeepSpeed (no
optimizer state, no checkpoint; the export is its checkpoint). The baseline run (`kl_weight` 0)
loads no teacher at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sora import SoraConfig, SoraForCausalLM

from ..pretrain.objective import LanguageModeling
from ..records import ExportInfo
from ..storage import ObjectStore
from ..train.export_download import download_export
from .loss import distillation_loss


@dataclass
class Distillation(LanguageModeling):
    """Next-token prediction on the teacher's dataset, plus KL to the teacher when `kl_weight` > 0."""

    teacher_export: str | None = None  # the teacher's export key (runs/<teacher>/hf); lineage only at kl_weight 0
    temperature: float = 2.0
    kl_weight: float = 0.0
    teacher_identity: dict[str, Any] | None = None  # its sora_export.json's identity (settings.py), for the lineage
    precision: str = "auto"  # train.precision: the teacher loads in the precision the student will train in

    def __post_init__(self) -> None:
        self.teacher_dir: Path | None = None  # set on the worker (bind)
        self.teacher: SoraForCausalLM | None = None  # loaded on the worker (bind)

    @property
    def uses_teacher(self) -> bool:
        return self.kl_weight > 0

    def bind(self, store: ObjectStore, node_dir: Path) -> None:
        if self.uses_teacher:
            self.teacher_dir = download_export(store, self.teacher_export, node_dir, "teacher")
            self.teacher = load_teacher(self.teacher_dir, worker_device(), self.precision)

    def build_model(self, model_config: SoraConfig, ds_config: dict[str, Any]) -> tuple[torch.nn.Module, Any]:
        if self.teacher is not None:
            # The precision the ranks agreed on (resolve_bf16): a mixed cluster may have chosen fp32
            # where this rank guessed bf16. A cast on the device, of a model already there.
            dtype = torch.bfloat16 if ds_config["bf16"]["enabled"] else torch.float32
            self.teacher.to(dtype)
        return super().build_model(model_config, ds_config)

    def loss(self, module: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        inputs, labels = batch
        student = module(input_ids=inputs, use_cache=False).logits
        teacher = None
        if self.teacher is not None:
            with torch.no_grad():
                teacher = self.teacher(input_ids=inputs, use_cache=False).logits
        return distillation_loss(student, teacher, labels, self.temperature, self.kl_weight)

    # eval_sums stays LanguageModeling's: the validation loss is the plain next-token cross-entropy,
    # comparable between the distilled student, its baseline and the teacher.

    def export_info(self, info: ExportInfo) -> ExportInfo:
        """The causal LM's lineage plus how it was distilled (teacher export and identity, T, alpha)."""
        info = super().export_info(info)
        distill = {
            "teacher_export": self.teacher_export,
            "teacher": self.teacher_identity,
            "temperature": self.temperature,
            "kl_weight": self.kl_weight,
        }
        return info.model_copy(update={"distill": distill})


def worker_device() -> torch.device:
    """The trainer's device: NCCL exactly when the workers train on GPUs (Ray Train set the device
    and initialized the process group before the trainer binds its objective)."""
    import torch.distributed as dist

    on_gpu = dist.is_initialized() and dist.get_backend() == "nccl"
    return torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")


def teacher_dtype(precision: str, device: torch.device) -> torch.dtype:
    """`train.precision` on this rank's device, as `resolve_bf16` decides it but without its collective
    (bind runs before any): bf16 where asked, or for auto where the device supports it."""
    if precision != "auto":
        return torch.bfloat16 if precision == "bf16" else torch.float32
    supported = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.bfloat16 if supported else torch.float32


def load_teacher(folder: Path, device: torch.device, precision: str) -> SoraForCausalLM:
    """The frozen teacher, its weights read from `folder` straight onto `device` (device_map: no
    whole copy in host memory first), in eval mode, without gradients or a KV cache."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():  # from_pretrained would partition the teacher across the ranks
        raise RuntimeError("a ZeRO-3 HfDeepSpeedConfig is alive: the teacher must be loaded before the student")
    dtype = teacher_dtype(precision, device)
    teacher = SoraForCausalLM.from_pretrained(folder, dtype=dtype, device_map={"": device})
    teacher.config.use_cache = False
    return teacher.requires_grad_(False).eval()
