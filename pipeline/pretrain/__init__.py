"""Pretrain stage: next-token prediction on a dataset version (the objective and its driver)."""
