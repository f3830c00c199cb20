# The two commands of the README: `make lab` and `make test`. Both set everything up first.
# `make bench` runs every benchmark against its baseline (the `bench` extra) and regenerates the README's table.
.PHONY: setup lab test bench

setup:
	bash scripts/setup.sh

lab: setup
	.venv/bin/jupyter lab notebooks/01_quickstart.ipynb

test:
	bash scripts/setup.sh --test
	.venv/bin/ruff check mixvllm_nb tests benchmarks scripts conftest.py
	.venv/bin/python -m pytest

# --test: quickstart_memory.py also runs the light engine and the tests' Jupyter helper.
bench:
	bash scripts/setup.sh --test
	.venv/bin/python -m pip install --quiet -e '.[bench]'
	.venv/bin/python benchmarks/load_ext.py
	.venv/bin/python benchmarks/startup.py
	.venv/bin/python benchmarks/serving.py
	.venv/bin/python benchmarks/proxy.py synthetic
	.venv/bin/python benchmarks/proxy.py synthetic --burst
	.venv/bin/python benchmarks/proxy.py vllm
	.venv/bin/python benchmarks/structured_output.py
	.venv/bin/python benchmarks/adapters.py
	.venv/bin/python benchmarks/routes.py
	.venv/bin/python benchmarks/quickstart_memory.py
	.venv/bin/python benchmarks/gpu_detection.py
	.venv/bin/python benchmarks/cluster.py
	.venv/bin/python benchmarks/readme_table.py
