# The README's commands. `make install` once, then `make demo` and `make test`.
PY ?= python3

.PHONY: install demo test lint bench-speed bench-accuracy

install:
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[dev]"

demo:
	streamer bench pkg:tsdata/fpp3/vic_elec.csv --series Demand,Temperature --warmup 2000 --start 2000 --end 3000 \
	  --plot benchmarks/out/demo.png --json benchmarks/out/demo.json

test:
	$(PY) -m pytest -q

lint:
	$(PY) -m ruff check models streamer tests benchmarks
	$(PY) -m mypy models streamer benchmarks

bench-speed:
	$(PY) benchmarks/speed.py --json benchmarks/out/speed.json

bench-accuracy:
	./benchmarks/accuracy.sh
