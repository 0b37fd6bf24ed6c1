# Two commands on a fresh machine: `make demo` and `make test`. Everything else follows.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
CHROMIUM := /usr/bin/chromium

.PHONY: install demo test lint chromium clean wheelhouse

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Headless Chromium for the report's rendering test and --png (Debian package).
chromium:
	@test -x $(CHROMIUM) || { \
	  echo "installing Debian's chromium (needed by the report tests)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "warning: could not install chromium; report rendering tests will fail"; }

# The main job on the embedded default: a search over both tiny backbones on synthetic hands.
# Its generated data and tiny pretrained CLIPs are cached in the clone (.cache/, ignored).
demo: $(STAMP)
	rm -rf runs/demo
	HANDREID_CACHE=$${HANDREID_CACHE:-$(CURDIR)/.cache/handreid} \
	  $(VENV)/bin/handreid-search --space spaces/demo.yml --name demo

# Two pytest-xdist workers on the 2 cores CI has; tests sharing a module's Ray instance stay
# in one worker (tests/conftest.py). Plain `pytest` still runs everything in one process.
test: $(STAMP) chromium
	$(PY) -m pytest -q -n 2 --dist loadgroup

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Wheels of the project's dependencies at this venv's versions, in a folder on shared
# storage: cluster.local.yaml's nodes install from it, without the index (README, "Many GPUs").
#   make wheelhouse WHEELS=/mnt/shared/handreid-wheels
wheelhouse: $(STAMP)
	@test -n "$(WHEELS)" || { echo "usage: make wheelhouse WHEELS=/mnt/shared/handreid-wheels"; exit 2; }
	mkdir -p $(WHEELS)
	$(PY) -m pip list --format=freeze --exclude-editable > $(WHEELS)/pins.txt
	$(PY) -m pip wheel -q -w $(WHEELS) -c $(WHEELS)/pins.txt . pip setuptools wheel
	rm -f $(WHEELS)/handreid_search-*.whl

clean:
	rm -rf runs .pytest_cache
