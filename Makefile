# Two commands set up a fresh machine (as root): `make serve` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: serve test venv js browser zoo lint clean bench fuzz soak compose-test

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[convert,dev]'
	touch $(STAMP)

venv: $(STAMP)

# js: the /ui bundle and onnxruntime-web's wasm are built into server/ui/vendor/ by npm install.
# Models live in MODEL_REPOSITORY if given, else in the user repository ($XDG_DATA_HOME or ~/.local/share,
# /modelbridge/repository), seeded with the bundled examples on first start; never inside this checkout.
serve: $(STAMP) js
	@echo "models live in $(or $(MODEL_REPOSITORY),$${XDG_DATA_HOME:-$$HOME/.local/share}/modelbridge/repository) (make serve MODEL_REPOSITORY=DIR to serve another)"
	$(VENV)/bin/modelbridge serve --allow-unauthenticated-admin $(if $(MODEL_REPOSITORY),--model-repository $(MODEL_REPOSITORY))   # binds 127.0.0.1 only

# System packages the tests drive: Debian's Chromium (no browser downloads), libb64 for perf_analyzer,
# docker-compose to validate the compose file, nginx for the compose load balancer's config.
browser:
	@command -v chromium >/dev/null && dpkg -s libb64-0d docker-compose nginx-light >/dev/null 2>&1 || \
	  (apt-get -o DPkg::Lock::Timeout=300 update -qq && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq chromium libb64-0d docker-compose nginx-light >/dev/null)

js:
	@if [ -f clients/js/package.json ]; then cd clients/js && npm install --no-audit --no-fund --loglevel=error; fi

test: $(STAMP) browser js
	$(VENV)/bin/pytest -q tests
	@if [ -f clients/js/package.json ]; then cd clients/js && npm run --if-present test; fi

# Speed lives here, not in tests: MLServer vs modelbridge on the same pinned core (see BENCHMARKS.md).
bench: $(STAMP)
	bash bench/run.sh

# Longer runs of what the suite runs briefly (tests/security): hypothesis, raw gRPC bytes, schemathesis.
fuzz: $(STAMP)
	FUZZ_EXAMPLES=3000 $(VENV)/bin/pytest -q -p no:cacheprovider --timeout 0 tests/security/test_fuzz_decoding.py tests/security/test_http2_frames.py
	FUZZ_EXAMPLES=150 $(VENV)/bin/pytest -q -p no:cacheprovider --timeout 0 tests/security/test_grpc_wire.py tests/security/test_schemathesis.py

# 60 s at concurrency 64, REST and gRPC mixed, with uploads and unloads: errors, RSS growth.
soak: $(STAMP)
	$(PY) scripts/soak.py --duration 60 --concurrency 64

# The deployment for real (tests/deploy/test_compose_e2e.py): builds the image from a clean clone, runs
# `compose up --scale server=3`, kills a replica under load. Needs a Docker engine: DOCKER_HOST, else the
# one ../shared/deploy/standin-images.sh starts; fails (instead of skipping) when none answers.
STANDIN_SOCK := /tmp/dockerd/docker.sock
compose-test: $(STAMP)
	$(if $(DOCKER_HOST),,$(if $(wildcard $(STANDIN_SOCK)),DOCKER_HOST=unix://$(STANDIN_SOCK))) COMPOSE_TEST_REQUIRED=1 \
	  $(VENV)/bin/pytest -q -s -p no:cacheprovider tests/deploy/test_compose_e2e.py

zoo: $(STAMP)
	$(PY) examples/build_zoo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check server converters tests

clean:
	rm -rf $(VENV) clients/js/node_modules
