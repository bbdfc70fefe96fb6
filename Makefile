# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo

.PHONY: setup system-deps vendor lint format test test-fp32 demo docs-screenshots bench clean

# The venv is reused when it exists (torch is a ~5.5 GB install); the stamp re-runs pip
# only when pyproject.toml changes.
$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

# pyradiomics (the radiomics baseline) is an sdist whose build needs numpy, versioneer and
# scikit-build already installed, so it is built without build isolation after them. 3.0.1: the
# 3.1.0 sdist reports version 3.0.1a1 in its metadata, which pip rejects.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev]'
	$(BIN)/python -m pip install versioneer scikit-build
	$(BIN)/python -m pip install --no-build-isolation pyradiomics==3.0.1
	touch $@

setup: $(VENV)/.installed

# The workstation's API page (/docs) serves Swagger UI from its own files, never from a CDN: the
# npm package, pinned by version and the registry's SHA-512, unpacked into static/vendor/
# (git-ignored). Without npm the rest works and /docs says how to get it.
SWAGGER_UI := 5.35.0
SWAGGER_UI_SHA512 := U06rpMtW9V3XPGOBeamTUSr0Z09jMX4IJuANpE/EZbAhw0G8CgwrzU4YmXkn/h0wCDNsXdGarTNNHC3sU8yVUQ==
VENDOR := src/ccrcc_grade/serve/static/vendor
vendor: $(VENDOR)/swagger-ui/swagger-ui-bundle.js $(VENDOR)/ohif/index.html

$(VENDOR)/swagger-ui/swagger-ui-bundle.js:
	@command -v npm >/dev/null || { echo "needs npm (apt-get install npm) for the API page's Swagger UI"; exit 1; }
	rm -rf $(VENDOR)/.tmp && mkdir -p $(VENDOR)/.tmp
	cd $(VENDOR)/.tmp && npm pack --silent swagger-ui-dist@$(SWAGGER_UI) >/dev/null
	@test "$$(openssl dgst -sha512 -binary $(VENDOR)/.tmp/swagger-ui-dist-$(SWAGGER_UI).tgz | base64 -w0)" = "$(SWAGGER_UI_SHA512)" \
	  || { echo "swagger-ui-dist-$(SWAGGER_UI).tgz: SHA-512 differs from the pinned one"; rm -rf $(VENDOR)/.tmp; exit 1; }
	tar -xzf $(VENDOR)/.tmp/swagger-ui-dist-$(SWAGGER_UI).tgz -C $(VENDOR)/.tmp package/swagger-ui-bundle.js package/swagger-ui.css package/LICENSE
	mkdir -p $(VENDOR)/swagger-ui && mv $(VENDOR)/.tmp/package/* $(VENDOR)/swagger-ui/ && rm -rf $(VENDOR)/.tmp

# The OHIF Viewer that `serve --ohif` serves (the PACS-native results seen in the viewer research
# hospitals use): npm's @ohif/app ships the built viewer in dist/ (~50 MB packed, ~200 MB
# unpacked), pinned by version and the registry's SHA-512; only dist/ and the licence are kept.
OHIF := 3.13.2
OHIF_SHA512 := WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA==
$(VENDOR)/ohif/index.html:
	@command -v npm >/dev/null || { echo "needs npm (apt-get install npm) for the OHIF viewer"; exit 1; }
	rm -rf $(VENDOR)/.ohif && mkdir -p $(VENDOR)/.ohif
	cd $(VENDOR)/.ohif && npm pack --silent @ohif/app@$(OHIF) >/dev/null
	@test "$$(openssl dgst -sha512 -binary $(VENDOR)/.ohif/ohif-app-$(OHIF).tgz | base64 -w0)" = "$(OHIF_SHA512)" \
	  || { echo "ohif-app-$(OHIF).tgz: SHA-512 differs from the pinned one"; rm -rf $(VENDOR)/.ohif; exit 1; }
	tar -xzf $(VENDOR)/.ohif/ohif-app-$(OHIF).tgz -C $(VENDOR)/.ohif package/dist package/LICENSE
	rm -rf $(VENDOR)/ohif && mv $(VENDOR)/.ohif/package/dist $(VENDOR)/ohif && mv $(VENDOR)/.ohif/package/LICENSE $(VENDOR)/ohif/LICENSE
	echo $(OHIF) > $(VENDOR)/ohif/VERSION && rm -rf $(VENDOR)/.ohif

# What the tests start for real: Orthanc with its DICOMweb plugin (the PACS) and Chromium (the
# browser tests, driven by Playwright with executable_path=/usr/bin/chromium), npm (the API page's
# Swagger UI), dicom3tools' dciodvfy and pixelmed's DicomSRValidator (the validators of the DICOM we write).
system-deps:
	@missing=""; \
	command -v Orthanc >/dev/null || missing="$$missing orthanc"; \
	[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing="$$missing orthanc-dicomweb"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	command -v dciodvfy >/dev/null || missing="$$missing dicom3tools"; \
	command -v DicomSRValidator >/dev/null || missing="$$missing pixelmed-apps"; \
	if [ -n "$$missing" ]; then \
	  echo "make: system packages are missing; installing them with apt-get (needs root):$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "needs: apt-get install$$missing (as root)"; exit 1; fi; fi

# ruff: lint (pyflakes, pycodestyle, import order, bugbear, pyupgrade) and the formatter's check;
# `make format` rewrites the files. Configured in pyproject.toml.
lint: setup
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

format: setup
	$(BIN)/ruff check --fix src tests
	$(BIN)/ruff format src tests

# Two pytest-xdist workers (TEST_WORKERS=1 for one process): much of a test is single-threaded
# Python, a browser, a PACS or a subprocess starting, so two at a time use both cores (13:49 -> 8:56
# on the 2-core AMD host). --dist loadscope keeps each module on one worker, so a module's
# fixtures are built once; modules sharing an expensive session fixture go together
# (SHARED_FIXTURE_MODULES in tests/conftest.py); tests/conftest.py gives each worker one thread.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -v --durations=15 $(if $(filter-out 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadscope)

test: setup system-deps vendor lint
	$(PYTEST)

# The numeric path of CPUs without bf16 (AMD EPYC / AVX2-only hosts), forced on any x86 CPU:
# PyTorch's kernels and oneDNN limited to AVX2, so bf16 autocast and the bf16 inference runner
# are off exactly as they are there.
test-fp32: setup system-deps vendor
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 $(PYTEST)

# The demo: a realistic-difficulty phantom of 60 patients boxed by two readers, the quick preset
# at 48 px (the 256-px phantom's tumours span ~20-40 px, so nothing is lost) and a 6:2:2 split, so
# the test set holds 4 high-grade patients and every comparison has its DeLong test.
demo: setup
	@$(MAKE) -s vendor || echo "(no npm here: the workstation's /docs page will say how to add Swagger UI)"
	@if [ ! -f $(DEMO_DIR)/cohort/clinical.csv ]; then \
	  $(BIN)/ccrcc-grade synth $(DEMO_DIR)/cohort --patients 60 --high-fraction 0.35 --matrix 256 --seed 0 --workers 2 \
	  --readers 2; fi
	$(BIN)/ccrcc-grade study $(DEMO_DIR)/cohort --out $(DEMO_DIR)/study --preset quick --ratios 6:2:2 \
	  --size 48 --image-size 48 --second-reader $(DEMO_DIR)/cohort/reader2_boxes.csv
	@if [ ! -f $(DEMO_DIR)/dicom/boxes.csv ]; then \
	  $(BIN)/ccrcc-grade synth $(DEMO_DIR)/dicom --layout dicom --patients 4 --high-fraction 0.5 --matrix 256 --seed 1; fi
	@mkdir -p $(DEMO_DIR)/dicom-zips && for p in $(DEMO_DIR)/dicom/*/; do n=$$(basename $$p); \
	  [ -f $(DEMO_DIR)/dicom-zips/$$n.zip ] || (cd $(DEMO_DIR)/dicom && $(CURDIR)/$(BIN)/python -m zipfile -c ../dicom-zips/$$n.zip $$n); done
	@echo "workstation: $(BIN)/ccrcc-grade serve --models $(DEMO_DIR)/study/runs/resnet34-parenchymal, then open"
	@echo "http://127.0.0.1:8000/ and drop a patient folder of $(DEMO_DIR)/dicom/ (or a zip of $(DEMO_DIR)/dicom-zips/) on the page"

# the README's workstation screenshots, from the demo's own model (after `make demo`)
docs-screenshots: setup system-deps
	@test -d $(DEMO_DIR)/study/runs/resnet34-parenchymal || { echo "run make demo first"; exit 1; }
	CCRCC_UPDATE_DOCS=1 CCRCC_DOCS_MODELS=$(abspath $(DEMO_DIR))/study/runs/resnet34-parenchymal \
	  $(BIN)/python -m pytest tests/serve/test_page.py -k radiologists_session -q

bench: setup
	$(BIN)/ccrcc-grade bench --what all

clean:
	rm -rf $(DEMO_DIR) .pytest_cache build *.egg-info src/*.egg-info
