# The two commands of the README:
#   make demo   sets up .venv and runs the embedded default experiment (CPU, offline, < 2 min)
#   make test   sets up .venv and runs the whole test suite
PY := .venv/bin/python
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# pip's own notices that are not about this project: a machine's pip config naming absent
# find-links folders ("Location ... is ignored"), and setuptools' "Editable installation" note
# that every editable install prints. Real errors and warnings still show (and fail the build).
QUIET_PIP := PYTHONWARNINGS="ignore:Editable installation"
PIP_FILTER := { grep -v -E "Location .* is ignored" || true; }
# torch/torchvision pinned to the builds this project is tested with (pip takes them from the local wheel cache when present)
TORCH := torch==2.14.1 torchvision==0.29.1

.venv/.installed: pyproject.toml Makefile examples/stimopt_example_plugin/pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(QUIET_PIP) $(PY) -m pip install -q --upgrade pip 2>&1 | $(PIP_FILTER)
	$(QUIET_PIP) $(PY) -m pip install -q $(TORCH) 2>&1 | $(PIP_FILTER)
	$(QUIET_PIP) $(PY) -m pip install -q -e '.[test,vislens]' -e examples/stimopt_example_plugin 2>&1 | $(PIP_FILTER)
	touch $@

setup: .venv/.installed

demo: .venv/.installed
	.venv/bin/stimopt

test: .venv/.installed
	$(PY) -m pytest -q -p no:cacheprovider --durations=15 --timeout=900

.PHONY: setup demo test
