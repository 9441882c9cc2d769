# Set-up and the two commands of the README: `make repro` runs the pipeline, `make test` runs every test.
# Both create .venv from the pinned requirements when it is missing; when it is up to date they start at once.
PYTHON ?= python3
VENV   := .venv
BIN    := $(abspath $(VENV))/bin
STAMP  := $(VENV)/.installed
export PATH := $(BIN):$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: venv repro test pytest nbtest check-export check-clean bench clean-venv

$(STAMP): requirements.txt settings.ini setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

venv: $(STAMP)

# The documentation site in _docs/ (settings.ini's doc_path), built offline without Quarto: docs/build.py.
.PHONY: docs outputs readme
docs: venv
	python docs/build.py

# README.md is written from nbs/index.ipynb (the docs site's front page); tests/test_readme.py checks they agree.
readme:
	python3 docs/readme.py

# Store the outputs of the chapters that run in under 60 s in nbs/ (then nbdev_clean): docs/outputs.py.
outputs: venv
	python docs/outputs.py --limit 60

repro: venv
	tfcovr params params.yaml
	dvc repro

test: venv check-export check-clean pytest nbtest

pytest: venv
	pytest -q tests

nbtest: venv
	nbdev_test --path nbs --n_workers 2

# tfcovr/ must be exactly what the notebooks export.
check-export: venv
	@tmp=$$(mktemp -d) && cp -r settings.ini setup.py nbs tfcovr $$tmp/ && \
	 (cd $$tmp && nbdev_export) && \
	 if diff -r -x __pycache__ tfcovr $$tmp/tfcovr; then rm -rf $$tmp; echo "check-export: tfcovr/ matches nbs/"; \
	 else rm -rf $$tmp; echo "check-export: tfcovr/ differs from what nbs/ export; run nbdev_export and commit"; exit 1; fi

# Notebooks must be committed clean (nbdev_clean changes nothing).
check-clean: venv
	@tmp=$$(mktemp -d) && cp -r settings.ini nbs $$tmp/ && \
	 (cd $$tmp && nbdev_clean && nbdev_clean --fname nbs/stages) && \
	 if diff -r -x .ipynb_checkpoints nbs $$tmp/nbs; then rm -rf $$tmp; echo "check-clean: notebooks are clean"; \
	 else rm -rf $$tmp; echo "check-clean: notebooks are not clean; run nbdev_clean and commit"; exit 1; fi

clean-venv:
	rm -rf $(VENV)
