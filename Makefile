# The two commands of the README: `make demo` (main job) and `make test`.
.PHONY: setup demo test test-slow bench clean

setup:
	@bash scripts/bootstrap.sh

demo: setup
	@bash scripts/demo.sh

test: setup
	@bash scripts/test.sh

test-slow: setup
	@bash scripts/test.sh -m slow

bench: setup
	.venv/bin/python benchmarks/bench_assign.py
	.venv/bin/python benchmarks/bench_model.py

clean:
	rm -rf runs data/proxy160 data/proxy160_backbone data/smoke mlruns.db mlartifacts reports_out
