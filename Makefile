# The two commands of the README: `make lab` and `make test`. Both set everything up first.
.PHONY: setup lab test

setup:
	bash scripts/setup.sh

lab: setup
	.venv/bin/jupyter lab notebooks/01_quickstart.ipynb

test:
	bash scripts/setup.sh --test
	.venv/bin/ruff check mixvllm_nb tests benchmarks scripts conftest.py
	.venv/bin/python -m pytest
