"""Evaluation stage: lm-evaluation-harness integration."""
