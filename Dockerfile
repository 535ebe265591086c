# The tether agent image: `make agent-image` (see docs/kubernetes.md).
#
# Small on purpose: the agent needs Python, msgpack, h2 (h2c stream routing), the cffi
# helper (tether._native) and libnftables for incoming traffic; not the kubernetes client, click or a compiler.
ARG PYTHON=3.11

FROM python:${PYTHON}-slim-bookworm AS build
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY setup.py ./
COPY layer ./layer
COPY csrc ./csrc
COPY python ./python
RUN pip install -q --no-cache-dir "cffi>=1.15" "setuptools>=65" wheel \
 && pip wheel -q --no-deps --no-build-isolation -w /wheels . \
 && pip wheel -q -w /wheels "msgpack>=1.0" "cffi>=1.15" "h2>=4.1"

FROM python:${PYTHON}-slim-bookworm
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends libnftables1 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
# --no-deps: the orchestrator's dependencies (kubernetes, click, ...) stay out of the image.
RUN pip install -q --no-cache-dir --no-deps /wheels/*.whl && rm -rf /wheels
ENTRYPOINT ["tether-agent"]
