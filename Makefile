# make demo  - set up .venv if needed, then on the bundled sample data: fine-tune briefly,
#              evaluate against the baselines, and print explained recommendations
# make test  - set up .venv if needed, then run the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
SAMPLE := data/sample
CKPT := checkpoints/tiny-bert-zh

.PHONY: install demo test clean-venv

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-nodeps.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -r requirements-nodeps.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	touch $@

DATA := --items $(SAMPLE)/items.jsonl --behaviors $(SAMPLE)/behaviors.jsonl
DEMO_OUT := out/demo

demo: install
	rm -rf $(DEMO_OUT)  # the demo's own output from an earlier run
	$(BIN)/bert-rec train --model $(CKPT) $(DATA) --out $(DEMO_OUT)/model
	$(BIN)/bert-rec evaluate --model $(DEMO_OUT)/model $(DATA) --plot $(DEMO_OUT)/evaluation.png
	$(BIN)/bert-rec recommend --model $(DEMO_OUT)/model $(DATA) --user u0001 u0002 u0003 -k 5

test: install
	$(BIN)/python -m pytest -q tests

clean-venv:
	rm -rf $(VENV)
