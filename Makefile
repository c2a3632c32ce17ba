# Developer shortcuts for the parts that need tools beyond the test suite (Docker, kind).
# The test command is scripts/test.sh (bootstrap + lint + types + pytest), not this file.

VERSION ?= $(shell sed -n 's/^appVersion: *"\(.*\)"/\1/p' charts/livetranslate/Chart.yaml)
REGISTRY ?=
PREFIX := $(if $(REGISTRY),$(REGISTRY)/,)
IMAGES := operator audio translate gateway
KIND_CLUSTER ?= livetranslate-e2e
PYTHON ?= .venv/bin/python
export PYTHONSAFEPATH := 1

.PHONY: help images chart-lint e2e-kind

help:
	@echo "make images      build the four images (livetranslate-<name>:$(VERSION)); REGISTRY=host/path to prefix"
	@echo "make chart-lint  lint and render the Helm chart with Helm's library (no helm binary needed)"
	@echo "make e2e-kind    kind cluster + images + helm install + speech through the gateway (tests/e2e)"

images:
	for name in $(IMAGES); do \
		docker build -f docker/$$name.Dockerfile -t $(PREFIX)livetranslate-$$name:$(VERSION) . || exit 1; \
	done

chart-lint:
	$(PYTHON) -P -m pytest -p no:cacheprovider tests/chart/test_chart.py -q

# Builds the images, creates (or reuses) the kind cluster $(KIND_CLUSTER), installs the chart and
# streams speech through a pipeline; LT_E2E_KEEP_CLUSTER=1 keeps the cluster afterwards.
e2e-kind:
	LT_E2E_KIND=1 LT_E2E_CLUSTER=$(KIND_CLUSTER) $(PYTHON) -P -m pytest -p no:cacheprovider \
		tests/e2e/test_kind_helm.py -m e2e -v
