"""Pretrain stage: Ray Train + DeepSpeed on a published dataset manifest."""
