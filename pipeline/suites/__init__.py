"""Downstream suites built offline from a dataset version's held-out documents (heldout perplexity,
cloze, classify, and the generative code_body, docstring, continuation), stored next to the version
as lm-eval tasks. The fine-tune stage trains on the classify (and generative) suites and the
evaluation stage scores every checkpoint on them, so they sit below both."""
