# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test bench lint clean venv viewer

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[postgres,embedded]'
	touch $@

$(TEST_STAMP): $(STAMP)
	$(PIP) install -q -e '.[postgres,embedded,test]'
	touch $@

venv: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/fhirimg run

# The OHIF Viewer at /viewer (from the npm registry; needs npm).
viewer: $(STAMP)
	$(VENV)/bin/fhirimg viewer install

test: $(TEST_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# Against a running server (`make run` in another terminal, or BASE=https://remote/fhir).
BASE ?= http://127.0.0.1:8080/fhir
bench: $(STAMP)
	$(VENV)/bin/fhirimg bench crud --base $(BASE)

lint: $(TEST_STAMP)
	$(PIP) install -q ruff && $(VENV)/bin/ruff check fhirimg tests

clean:
	rm -rf $(VENV) var build *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
