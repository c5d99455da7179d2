"""Weight-only quantization of a run's HF export (`sora quantize`): torchao through transformers'
`TorchAoConfig`, each method saved as a loadable HF checkpoint of its own run `<run>-<method>`, with
its size and generation speed before and after (`record.py`) and its suite scores from `sora evaluate`.

    methods.py      method name -> torchao config; what the device can do; which layers
    benchmark.py    weight bytes on disk, greedy-generation tokens/s, logit difference
    task.py         the Ray task: fetch, quantize, save, reload, measure, upload
    launch.py       the driver: checks before work, one task on a worker (a GPU when there is one)
    checkpoints.py  the quantized checkpoints `sora evaluate` scores
    report.py       `quantize_markdown`: the table of the report
"""
