"""Sora pipeline: the stages (data, pretrain, evaluate), the storage layer, configs and the CLI."""
