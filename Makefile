# The two commands of the README: `make book` and `make test`. Both create .venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PRESET ?= demo
# ../shared/data is the local mirror of the public data files (see data_manifests/).
export MAGA_DATA_DIR ?= $(abspath ../shared/data)
export MAGA_REFERENCE_DIR ?= $(abspath ../shared/reference)

.PHONY: install book test clean-book

install: $(VENV)/.installed

# torch and torchvision are installed first as the matched PyPI pair (their compiled operators load).
# --isolated ignores PIP_FIND_LINKS, whose CPU-only torch wheel has no torchvision to pair with.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --isolated --cert /etc/ssl/certs/ca-certificates.crt -q torch==2.13.0 torchvision==0.28.0 || \
	  $(BIN)/pip install --isolated -q torch==2.13.0 torchvision==0.28.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/python -m ipykernel install --prefix $(abspath $(VENV)) --name python3 > /dev/null
	touch $@

book: install
	$(BIN)/python -m maga_core.book --preset $(PRESET)

test: install
	$(BIN)/python -m pytest -q

clean-book:
	rm -rf book/_build book/chapters
