# The two commands of the README: `make book` and `make test`. Both create .venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PRESET ?= demo
# ../shared/data is the local mirror of the public data files (see data_manifests/).
export MAGA_DATA_DIR ?= $(abspath ../shared/data)
export MAGA_REFERENCE_DIR ?= $(abspath ../shared/reference)
WHEEL_VENV ?= /tmp/maga-wheel-check
TORCH := torch==2.13.0 torchvision==0.28.0
# $(call install_torch,PIP): the matched PyPI pair; --isolated ignores PIP_FIND_LINKS, whose CPU-only torch
# wheel has no torchvision to pair with.
install_torch = $(1) install --isolated --cert /etc/ssl/certs/ca-certificates.crt -q $(TORCH) || \
  $(1) install --isolated -q $(TORCH)

.PHONY: install book test results wheel-check clean-book

install: $(VENV)/.installed

# torch and torchvision are installed first as the matched PyPI pair (their compiled operators load).
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(call install_torch,$(BIN)/pip)
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/python -m ipykernel install --prefix $(abspath $(VENV)) --name python3 > /dev/null
	touch $@

book: install
	$(BIN)/python -m maga.book.build --preset $(PRESET)

# Every record under results/ that this machine can make, with a progress bar (maga.results_index.MAKERS;
# MAX_MINUTES=3 skips the long ones). `maga results` then lists which are still stale.
results: install
	$(BIN)/python -m maga.cli results make $(if $(MAX_MINUTES),--max-minutes $(MAX_MINUTES))

test: install
	$(BIN)/python -m pytest -q

# The package outside a checkout: build the wheel, install it (not editable) into a clean venv under /tmp,
# then run `maga doctor` and `maga info` on a real slide from there, the data and reference folders found
# through a user config file instead of the variables above (tools/wheel_check.sh). pip's cache makes
# reruns fast. CI runs it after `make test`.
wheel-check:
	rm -rf $(WHEEL_VENV) build
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(call install_torch,$(WHEEL_VENV)/bin/pip)
	$(WHEEL_VENV)/bin/pip wheel -q --no-deps -w $(WHEEL_VENV)/dist .
	rm -rf build
	$(WHEEL_VENV)/bin/pip install -q $(WHEEL_VENV)/dist/maga_core-*.whl
	printf 'data_dir: %s\nreference_dir: %s\n' '$(MAGA_DATA_DIR)' '$(MAGA_REFERENCE_DIR)' > $(WHEEL_VENV)/config.yaml
	env -u MAGA_DATA_DIR -u MAGA_REFERENCE_DIR -u MAGA_RUNS_DIR MAGA_CONFIG=$(WHEEL_VENV)/config.yaml \
	  bash tools/wheel_check.sh $(WHEEL_VENV)

clean-book:
	rm -rf book/_build book/chapters
