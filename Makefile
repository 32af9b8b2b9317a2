# pasarela: `make demo` runs the main job (the 2015 rehearsal on the embedded SQLite
# default), `make test` runs the checks and the tests.
# Both bootstrap .venv with the machine's python3 and pip on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo live-demo test lint typecheck unit browser bench bench-sim bench-log bench-replicas fuzz clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pasarela run scenarios/library/pisee-2015.toml --out out --report out/report.html

live-demo: $(STAMP)
	$(BIN)/pasarela demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The HTML report's browser test drives Debian's chromium (CI runs as root on Debian).
browser:
	command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

# The JavaScript connector example's one dependency (jose), as its lock file pins it.
JS := examples/connectors/javascript
$(JS)/node_modules/.installed: $(JS)/package-lock.json
	npm ci --prefix $(JS) --no-audit --no-fund --loglevel=error
	touch $@

unit: $(STAMP) browser $(JS)/node_modules/.installed
	$(BIN)/pytest

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python bench/relay.py

bench-sim: $(STAMP)
	$(BIN)/python bench/sim_scale.py

# bench-log needs PostgreSQL (postgres@127.0.0.1:5432/test), bench-replicas Redis
# (127.0.0.1:6379) as well; other servers: --pg-url, --redis-url (bench/README.md).
bench-log: $(STAMP)
	$(BIN)/python bench/log_append.py

bench-replicas: $(STAMP)
	$(BIN)/python bench/replicas.py

# Long fuzzing of the HTTP app (5000 examples per property, several minutes); not in `test`.
fuzz: $(STAMP)
	PASARELA_FUZZ_PROFILE=fuzz $(BIN)/pytest -q tests/gateway/test_security_fuzz.py tests/gateway/test_http_fuzz.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis out
