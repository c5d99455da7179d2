"""Fine-tune stage: classify-suite classifiers or generative-suite causal LMs on the pretrain stage's training loop."""
