"""The generic training job (Ray Train + DeepSpeed): launch, worker, trainer, engine, checkpoints,
loader, metrics, export. It runs any `objective.Objective`; pretraining and fine-tuning are the
two objectives (pipeline/pretrain, pipeline/finetune)."""
