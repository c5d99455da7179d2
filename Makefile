# One command to set up and run the main job, one to set up and run the tests.
# Each creates .venv, installs torch first (CPU build where there is no GPU), then the project.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: setup run test lint bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch before the project: a bare `torch` requirement would otherwise pull a multi-GB CUDA
	# build onto machines without a GPU.
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(PIP) install "torch==$(TORCH_VERSION)"; \
	elif curl -sf --max-time 5 -o /dev/null https://download.pytorch.org/whl/cpu/torch/; then \
		$(PIP) install "torch==$(TORCH_VERSION)" --index-url https://download.pytorch.org/whl/cpu \
			--extra-index-url https://pypi.org/simple; \
	else \
		$(PIP) install "torch==$(TORCH_VERSION)"; \
	fi
	$(PIP) install -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

run: setup
	$(VENV)/bin/sora run configs/default.yaml

test: setup
	$(VENV)/bin/pytest -q

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .sora
