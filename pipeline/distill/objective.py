"""Distillation objective: pretraining's next-token data and model (`LanguageModeling`) with a frozen
teacher whose softened logits the student also learns from (the loss: `loss.py`).

The teacher is the teacher run's HF export, copied once per node (`export_download.py`) when the
worker binds, before any collective (a slow download then keeps the other ranks in Ray Train's
barrier, which has no timeout). It is loaded before the student is built, so never under the
student's ZeRO-3 construction (`HfDeepSpeedConfig` / `zero.Init` would partition it): every rank
holds a whole plain copy on its own device, in the training precision, with no gradients, in eval
mode, outside DeepSpeed (no optimizer state, no checkpoint; the export is its checkpoint). The
baseline run (`kl_weight` 0) loads no teacher at all.
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

    def __post_init__(self) -> None:
        self.teacher_dir: Path | None = None  # set on the worker (bind)
        self.teacher: SoraForCausalLM | None = None  # built on the worker (build_model)

    @property
    def uses_teacher(self) -> bool:
        return self.kl_weight > 0

    def bind(self, store: ObjectStore, node_dir: Path) -> None:
        if self.uses_teacher:
            self.teacher_dir = download_export(store, self.teacher_export, node_dir, "teacher")

    def build_model(self, model_config: SoraConfig, ds_config: dict[str, Any]) -> tuple[torch.nn.Module, Any]:
        if self.uses_teacher:
            self.teacher = self._load_teacher(ds_config)  # first: the student's ZeRO-3 context is not alive yet
        return super().build_model(model_config, ds_config)

    def _load_teacher(self, ds_config: dict[str, Any]) -> SoraForCausalLM:
        import torch.distributed as dist
        from transformers.integrations import is_deepspeed_zero3_enabled

        if is_deepspeed_zero3_enabled():  # from_pretrained would partition the teacher across the ranks
            raise RuntimeError("a ZeRO-3 HfDeepSpeedConfig is alive: the teacher must be loaded before the student")
        dtype = torch.bfloat16 if ds_config["bf16"]["enabled"] else torch.float32
        # The trainer's device: NCCL exactly when the workers train on GPUs (Ray Train set the device).
        on_gpu = dist.is_initialized() and dist.get_backend() == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
        teacher = SoraForCausalLM.from_pretrained(self.teacher_dir, dtype=dtype)
        teacher.config.use_cache = False
        return teacher.requires_grad_(False).eval().to(device)

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
        """The causal LM's lineage plus how it was distilled (teacher export, T, alpha)."""
        info = super().export_info(info)
        distill = {"teacher_export": self.teacher_export, "temperature": self.temperature, "kl_weight": self.kl_weight}
        return info.model_copy(update={"distill": distill})
