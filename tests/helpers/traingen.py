"""Run configs for pretrain tests."""

from pipeline.config.run import RunConfig


def train_config(data: RunConfig, run: str, /, **train) -> RunConfig:
    """Tiny model, 2 CPU workers, small batches: a run takes seconds of compute."""
    values = {
        "run": run,
        "model": "tiny",
        "model_overrides": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
        },
        "global_batch": 8,
        "micro_batch": 2,
        "lr": 3e-3,
        "min_lr": 3e-4,
        "warmup_steps": 2,
        "max_steps": 12,
        "eval_interval": 6,
        "eval_batches": 2,
        "checkpoint_interval": 4,
        "keep_last": 2,
        "log_interval": 2,
        "workers": 2,
        **train,
    }
    raw = data.model_dump(mode="json")
    raw["train"] = values
    return RunConfig.model_validate(raw)


def expected_ids(manifest, seed: int, start: int, count: int, window: int = 8) -> list[int]:
    """The sample ids a run on `manifest` alone reads at positions start .. start+count-1."""
    from pipeline.train.sample_sequence import SampleSequence

    return SampleSequence([(manifest, 1.0)], seed, window).ids(start, count).tolist()
