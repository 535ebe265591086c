# The one entry point for humans.  `make demo` and `make test` install what they need.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed

.PHONY: install demo test test-fast bench lint clean

$(STAMP): setup.py $(wildcard csrc/*.c csrc/*.h layer/*) scripts/bootstrap.sh
	bash scripts/bootstrap.sh
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements-dev.txt
	$(VPY) -m pip install -q --no-build-isolation -e .
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
