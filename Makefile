# make demo  - set up .venv if needed, then on the bundled sample data: train the sentiment head
#              on the log's rated comments, fine-tune briefly, evaluate against the baselines,
#              print explained recommendations and write out/demo/report.html
# make test  - set up .venv if needed, then run the test suite
# make bench - set up .venv if needed, then run the speed benchmarks (bench/, 40-60 min on 2 cores);
#              tables go to the terminal, JSON to bench/results/ (summary.json: headline figures)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
# TensorFlow build: cpu (default: tensorflow-cpu, no GPU needed), gpu (tensorflow[and-cuda]) or
# none (keep the TensorFlow 2.21 already importable in the venv, e.g. one made with
# `python3.11 -m venv --system-site-packages .venv` over a GPU install). To switch: make clean-venv.
TF ?= cpu
VENV := .venv
BIN := $(VENV)/bin
SAMPLE := data/sample
CKPT := checkpoints/tiny-bert-zh

.PHONY: install demo test bench clean-venv

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-nodeps.txt requirements-$(TF).txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt -r requirements-$(TF).txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -r requirements-nodeps.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	touch $@

DATA := --items $(SAMPLE)/items.jsonl --behaviors $(SAMPLE)/behaviors.jsonl
DEMO_OUT := out/demo

demo: install
	rm -rf $(DEMO_OUT)  # the demo's own output from an earlier run
	$(BIN)/bert-rec train-sentiment --model $(CKPT) --behaviors $(SAMPLE)/behaviors.jsonl \
		--out $(DEMO_OUT)/sentiment --train-layers -1 --epochs 8 --learning-rate 2e-4 --max-len 64
	$(BIN)/bert-rec train --model $(DEMO_OUT)/sentiment $(DATA) --out $(DEMO_OUT)/model
	$(BIN)/bert-rec evaluate --model $(DEMO_OUT)/model $(DATA) --dislikes $(SAMPLE)/dislikes.jsonl \
		--plot $(DEMO_OUT)/evaluation.png
	$(BIN)/bert-rec recommend --model $(DEMO_OUT)/model $(DATA) --user u0001 u0002 u0003 -k 5
	$(BIN)/bert-rec report --model $(DEMO_OUT)/model $(DATA) --dislikes $(SAMPLE)/dislikes.jsonl \
		--out $(DEMO_OUT)/report.html

test: install
	$(BIN)/python -m pytest -q tests

BENCHMARKS := encoder e2e retrieval scaling training distributed int8_matmul

bench: install
	set -e; for b in $(BENCHMARKS); do \
		echo "== bench/$$b.py"; TF_CPP_MIN_LOG_LEVEL=2 $(BIN)/python bench/$$b.py; done

clean-venv:
	rm -rf $(VENV)
