# Two commands do all the set-up: `make demo` (the whole pipeline on a synthetic podcast) and `make test`.
.PHONY: demo test lint setup

setup:
	@scripts/bootstrap.sh

demo: setup
	.venv/bin/voicepipe demo

test: setup
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -q -ra -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder

lint: setup
	.venv/bin/ruff check .
