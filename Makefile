# The one entry point for humans.  `make demo` and `make test` install what they need.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed

.PHONY: install demo test test-fast bench lint clean

$(STAMP): setup.py requirements-dev.txt tests/package.json tests/package-lock.json $(wildcard csrc/*.c csrc/*.h csrc/launcher/*.c layer/*) scripts/bootstrap.sh
	bash scripts/bootstrap.sh
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements-dev.txt
	$(VPY) -m pip install -q --no-build-isolation -e .
	cd tests && npm ci --no-audit --no-fund --silent
	PYTHONDONTWRITEBYTECODE= $(VPY) -m compileall -q python >/dev/null
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VPY) -m tether.demo

test: $(STAMP)
	$(VPY) -m pytest -q

test-fast: $(STAMP)
	$(VPY) -m pytest -q -m "not e2e"

bench: $(STAMP)
	$(VPY) -m tether.bench

lint: $(STAMP)
	$(VENV)/bin/ruff check python tests layer setup.py

clean:
	rm -rf $(VENV) build python/tether/*.so python/*.egg-info

# The agent image for Kubernetes targets (docs/kubernetes.md). Its tag follows the package
# version, which is the image tether uses unless agent.image says otherwise.
TETHER_VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' python/tether/__init__.py)
AGENT_IMAGE    ?= ghcr.io/tether-dev/tether-agent:$(TETHER_VERSION)
CONTAINER_ENGINE ?= $(shell command -v docker 2>/dev/null || command -v podman 2>/dev/null)

.PHONY: agent-image agent-image-push
agent-image:
	@if [ -z "$(CONTAINER_ENGINE)" ] || ! $(CONTAINER_ENGINE) info >/dev/null 2>&1; then \
	  echo "make agent-image: no working docker or podman here; build on a machine with one:"; \
	  echo "  docker build -t $(AGENT_IMAGE) ."; \
	  echo "(set CONTAINER_ENGINE=/path/to/engine to pick one)"; exit 1; fi
	$(CONTAINER_ENGINE) build -t $(AGENT_IMAGE) .

agent-image-push: agent-image
	$(CONTAINER_ENGINE) push $(AGENT_IMAGE)
