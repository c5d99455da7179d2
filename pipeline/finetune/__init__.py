"""Fine-tune stage: classify-suite fine-tuning on the pretrain stage's training loop."""
