"""Activation checkpointing (`train.activation_checkpointing`): the same losses with and without it,
under every strategy, and less activation memory, measured.

Losses: a plain single-process model and optimizer, then real DeepSpeed engines (`Engine`, as the
trainer builds them) on two gloo ranks, ZeRO-3 (recomputation gathers the partitioned parameters
again) and a 2-stage pipeline. Memory: the peak resident memory of one forward and backward in a
fresh process (Linux's high-water mark, reset just before the step), and the bytes autograd keeps
from the forward to the backward.
"""

import ctypes
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from pipeline.config.run import RunConfig
from pipeline.ops.plan import ModelShape, activation_bytes, block_activation_bytes
from pipeline.train.ds_config import deepspeed_config
from sora import SoraConfig, SoraForCausalLM, causal_lm_loss
from sora.modeling_sora import set_activation_checkpointing
from sora.pipeline_view import materialize, pipeline_layer_specs, run_sequential

MODES = (0, 1, 2)  # off, every block, one block in 2
# The memory test's model and micro batch: activations dominate (8 blocks, 4 x 256 tokens).
MEMORY_MODEL = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=8, vocab_size=512)
MEMORY_BATCH = dict(micro=4, seq=256)
WORLD = 2
STEPS = 3


def _token_batches(seed: int, count: int, micro: int = 2, seq: int = 32, vocab: int = 256):
    """`count` micro batches of (inputs, already-aligned targets)."""
    generator = torch.Generator().manual_seed(seed)
    tokens = [torch.randint(0, vocab, (micro, seq + 1), generator=generator) for _ in range(count)]
    return [(t[:, :-1], t[:, 1:]) for t in tokens]


def test_config_reads_off_every_layer_or_n():
    def value(raw, section="train"):
        return getattr(RunConfig.model_validate({section: {"activation_checkpointing": raw}}), section)

    # YAML reads a bare `off` as false, `on` as true.
    for raw, expected in (("off", 0), (False, 0), (0, 0), ("every_layer", 1), (True, 1), (1, 1), (3, 3)):
        assert value(raw).activation_checkpointing == expected, raw
    assert RunConfig.model_validate({}).train.activation_checkpointing == 0
    # Fine-tuning shares the loop settings, and its runs' TrainConfig carries the value on.
    finetune = value("every_layer", "finetune")
    assert finetune.train_config(RunConfig().train, "scratch", "d", 1).activation_checkpointing == 1
    for bad in ("sometimes", -1, 1.5, None):
        with pytest.raises(ValueError, match="activation_checkpointing must be off, every_layer or a number n >= 1"):
            value(bad)
    # DeepSpeed's own interval stays off: Sora checkpoints its blocks itself.
    pipe = RunConfig.model_validate({"train": {"strategy": "pipeline", "pipeline_stages": 2}}).train
    assert deepspeed_config(pipe, bf16=False)["pipeline"]["activation_checkpoint_interval"] == 0


@pytest.fixture
def one_thread():
    """A tiny model gains nothing from intra-op threads, and on a busy 2-core machine their
    spin-waits make its steps 100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_flat_model_same_losses_and_weights_with_checkpointing(one_thread):
    config = SoraConfig.from_preset("tiny", vocab_size=256, norm="adn")  # ADN: the norm with running state
    results = {}
    for every in MODES:
        torch.manual_seed(0)
        model = SoraForCausalLM(config).train()
        assert set_activation_checkpointing(model, every) == [0, 4, 2][every]  # of the 4 blocks
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        losses = []
        for inputs, targets in _token_batches(0, 4):
            loss = causal_lm_loss(model(input_ids=inputs, use_cache=False).logits, targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        results[every] = (torch.tensor(losses), [p.detach().clone() for p in model.parameters()])
    reference_losses, reference_weights = results[0]
    for every in (1, 2):
        losses, weights = results[every]
        torch.testing.assert_close(losses, reference_losses, rtol=0, atol=1e-6)
        for ours, reference in zip(weights, reference_weights, strict=True):
            torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


def _rss(key: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(key))


def _measure(every: int, model: torch.nn.Module, step) -> dict[str, int]:
    """Peak resident bytes above the start of one forward + backward, and the bytes of the distinct
    activation storages (not the weights) autograd saved for the backward."""
    set_activation_checkpointing(model, every)
    model.zero_grad(set_to_none=True)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    ctypes.CDLL(None).malloc_trim(0)
    start = _rss("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets the process's peak resident memory (VmHWM) to its current size
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = step()
    loss.backward()
    return {"peak": _rss("VmHWM") - start, "saved": sum(saved.values())}


def _memory_child(_rank: int, out: str) -> None:
    torch.set_num_threads(1)  # a forked child must not use the parent's thread pool
    # Every tensor above 64 KiB in its own mapping, returned to the system when freed: resident
    # memory then follows the live tensors (glibc would otherwise raise this threshold as it goes).
    M_MMAP_THRESHOLD = -3
    ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 64 * 1024)
    config = SoraConfig.from_preset("tiny", **MEMORY_MODEL)
    inputs, targets = _token_batches(0, 1, **MEMORY_BATCH, vocab=config.vocab_size)[0]
    torch.manual_seed(0)
    flat = SoraForCausalLM(config).train()
    layers = materialize(pipeline_layer_specs(config))  # the pipeline's layers, as one stage
    stage = torch.nn.ModuleList(getattr(layer, "module", layer) for layer in layers).train()

    def flat_step():
        return causal_lm_loss(flat(input_ids=inputs, use_cache=False).logits, targets)

    def stage_step():
        return causal_lm_loss(run_sequential(layers, inputs), targets)

    _measure(0, flat, flat_step)  # warm-up: first-call allocations are not activations
    result = {}
    for name, model, step in (("flat", flat, flat_step), ("pipeline", stage, stage_step)):
        result[name] = {every: _measure(every, model, step) for every in MODES}
    with open(out, "w") as f:
        json.dump(result, f)


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's resettable VmHWM")
def test_checkpointing_lowers_measured_peak_activation_memory(tmp_path):
    out = tmp_path / "memory.json"
    mp.start_processes(_memory_child, args=(str(out),), nprocs=1, start_method="fork")
    result = json.loads(out.read_text())
    # What `sora plan` says autograd keeps for this model in fp32 (4-byte activations).
    config = SoraConfig.from_preset("tiny", **MEMORY_MODEL)
    kv_dim = config.num_key_value_heads * config.head_dim
    layers, hidden, ffn, vocab = (
        config.num_hidden_layers,
        config.hidden_size,
        config.intermediate_size,
        config.vocab_size,
    )
    shape = ModelShape(0, 0, layers, hidden, kv_dim, ffn, vocab, layer_params=())
    tokens = (MEMORY_BATCH["micro"], MEMORY_BATCH["seq"])
    plan = {
        every: block_activation_bytes(shape, range(layers), every, *tokens, half=4)[0]
        + activation_bytes(shape, *tokens, half=4)[2]
        for every in MODES
    }
    for layout, modes in result.items():
        off, every, half = (modes[str(m)] for m in MODES)
        mib = {name: f"{m['peak'] / 2**20:.1f} / {m['saved'] / 2**20:.1f}" for name, m in modes.items()}
        print(
            f"{layout}: peak / saved MiB: off {mib['0']}, every layer {mib['1']}, one block in 2 {mib['2']}; plan "
            + " / ".join(f"{plan[mode] / 2**20:.1f}" for mode in MODES)
        )
        # 8 blocks of 256 x 1024 tokens: each keeps ~25 MiB of activations, a checkpointed one its
        # 1 MiB input; the logits (~12 MiB, kept either way) and one recomputed block remain.
        assert every["saved"] < 0.15 * off["saved"], (layout, modes)
        assert every["saved"] < half["saved"] < 0.6 * off["saved"], (layout, modes)
        assert every["peak"] < 0.5 * off["peak"], (layout, modes)
        assert every["peak"] < half["peak"] < 0.8 * off["peak"], (layout, modes)
        for mode in MODES:
            assert modes[str(mode)]["saved"] == pytest.approx(plan[mode], rel=0.15), (layout, mode, plan)


def _rank(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)  # a forked child must not use the parent's thread pool
    import deepspeed
    import torch.distributed as dist

    from pipeline.pretrain.objective import LanguageModeling
    from pipeline.train.engine import Engine

    # What Ray Train sets on each worker.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank))
    os.environ.update(WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD))
    deepspeed.init_distributed(dist_backend="gloo")
    objective = LanguageModeling()
    model_config = SoraConfig.from_preset("tiny", vocab_size=256)
    saved = [0]  # bytes autograd was asked to keep during one step

    def pack(tensor):
        saved[0] += tensor.nbytes
        return tensor

    results = {}
    for strategy, extra in (("zero3", {}), ("pipeline", {"pipeline_stages": 2})):
        for every in MODES:
            train = {"strategy": strategy, "workers": WORLD, "global_batch": 4, "micro_batch": 2, "warmup_steps": 1}
            train = RunConfig.model_validate({"train": {**train, **extra, "activation_checkpointing": every}}).train
            ds_config = deepspeed_config(train, bf16=False)
            if strategy == "zero3":
                # The shipped threshold (100k elements) keeps every parameter of this tiny model
                # (49k at most) whole on every rank; with 0 none is, so recomputation must gather.
                ds_config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
            engine = Engine(train, model_config, ds_config, torch.device("cpu"), objective)
            run = results[f"{strategy}/{every}"] = {"losses": [], "grad_norms": []}
            for step in range(STEPS):
                # Data parallel: each rank its own micro batches; pipeline: both stages read the same.
                batches = _token_batches(100 * step + (rank if strategy == "zero3" else 0), train.grad_accum)
                saved[0] = 0
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                    run["losses"].append(engine.train_step(batches))
                run["grad_norms"].append(engine.grad_norm)
            run["saved"] = saved[0]
            if strategy == "zero3":  # parameters held only as this rank's partition between steps
                params = list(engine.engine.module.parameters())
                run["partitioned"] = sum(not p.ds_persist and p.ds_tensor.numel() < p.ds_numel for p in params)
                run["parameters"] = len(params)
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(results, f)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def engine_runs(tmp_path_factory):
    """Both ranks' losses, gradient norms and saved bytes per step, for each strategy and mode."""
    out = tmp_path_factory.mktemp("activation-checkpointing")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(_rank, args=(port, str(out)), nprocs=WORLD, start_method="fork")
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(WORLD)]


@pytest.mark.distributed
@pytest.mark.parametrize("strategy", ["zero3", "pipeline"])
def test_deepspeed_engines_same_losses_with_checkpointing(engine_runs, strategy):
    for rank, runs in enumerate(engine_runs):
        off = runs[f"{strategy}/0"]
        for every in (1, 2):
            run = runs[f"{strategy}/{every}"]
            print(f"rank {rank} {strategy} every {every}: losses {run['losses']} (off {off['losses']})")
            assert run["losses"] == pytest.approx(off["losses"], rel=0, abs=1e-6), (rank, every)
            assert run["grad_norms"] == pytest.approx(off["grad_norms"], rel=1e-6), (rank, every)
        # ... and the engine really recomputed: autograd kept fewer bytes on every rank (stage).
        saved = [runs[f"{strategy}/{every}"]["saved"] for every in MODES]
        assert saved[1] < saved[2] < saved[0], (rank, saved)
        if strategy == "zero3":  # ... of partitioned parameters, gathered again to recompute
            for every in MODES:
                run = runs[f"{strategy}/{every}"]
                assert run["partitioned"] == run["parameters"] > 0, (rank, every, run)
