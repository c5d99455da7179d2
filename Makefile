# One command to set up and run the main job, one to set up and run the tests.
# Each creates .venv and installs the locked environment (requirements.lock): torch first, by the
# locked version (CPU build where there is no GPU), then every other package at its locked version,
# then the project itself without dependency resolution.
PYTHON ?= python3
VENV ?= .venv
LOCK := requirements.lock
# The one place torch's version is chosen; `make lock` writes it into the lock as well.
TORCH_VERSION ?= 2.13.0
# The lock tool (uv's pip-compatible resolver), pinned so `make lock` is reproducible too.
UV_VERSION ?= 0.13.9
PIP_VERSION ?= 26.3
# Lowest Python the project supports: the universal lock covers it and every newer one.
LOCK_PYTHON ?= 3.10
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
UV := $(VENV)/bin/uv

.PHONY: setup run test lint bench lock clean

$(VENV)/.installed: pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet "pip==$(PIP_VERSION)"
	# torch before everything else: a bare `torch` requirement would pull a multi-GB CUDA build onto
	# machines without a GPU. The index comes from the machine's pip configuration; set
	# TORCH_INDEX_URL to PyTorch's CPU wheel index where pip would otherwise pick a CUDA build.
	$(PIP) install "torch==$(TORCH_VERSION)" $${TORCH_INDEX_URL:+--extra-index-url "$$TORCH_INDEX_URL"}
	$(PY) -c "import sys, torch; gpu = torch.cuda.is_available(); cuda = torch.version.cuda; \
		sys.stderr.write('' if gpu or not cuda else 'note: no GPU, but torch is a CUDA build; set TORCH_INDEX_URL for the CPU build\n')"
	$(PIP) install -r $(LOCK)
	$(PIP) install --no-deps -e .
	$(PIP) check
	touch $@

setup: $(VENV)/.installed

run: setup
	$(VENV)/bin/sora run configs/default.yaml

test: setup
	$(VENV)/bin/pytest -q

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# Refresh the lock deliberately (new releases never enter an install by themselves). A universal
# resolution: one file with environment markers for every platform and Python >= LOCK_PYTHON.
# torch's GPU runtime (nvidia-*, cuda-*, triton) is left out: it comes with the torch build that
# the install step picks for the machine, and a CPU machine must not download it.
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet "uv==$(UV_VERSION)"
	echo "torch==$(TORCH_VERSION)" > $(VENV)/torch-pin.txt
	$(UV) pip compile pyproject.toml --extra dev --universal --python-version $(LOCK_PYTHON) \
		--constraint $(VENV)/torch-pin.txt --quiet -o $(VENV)/lock-full.txt
	$(UV) pip compile pyproject.toml --extra dev --universal --python-version $(LOCK_PYTHON) \
		--constraint $(VENV)/torch-pin.txt --custom-compile-command "make lock" -o $(LOCK) \
		$$(sed -n 's/^\(nvidia-[^= ]*\|cuda-[^= ]*\|triton\)==.*/--no-emit-package \1/p' $(VENV)/lock-full.txt)

clean:
	rm -rf $(VENV) .sora
