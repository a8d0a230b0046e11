# Two set-up commands: `make demo` (the main job) and `make test` (the suite). Each does all set-up.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,lmeval,demo]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

# the paper's HP-MCQ dev split is measured too when it lies beside the checkout (it is not shipped)
HP_DEV := $(wildcard ../shared/data/hp-mcq/dev.json)
DEMO_ARGS ?=

demo: $(STAMP)
	$(BIN)/elmerase demo --output runs/demo --overwrite $(if $(HP_DEV),--mcq hp-dev=$(HP_DEV)) $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/elmerase bench --config gemma-3-270m

clean:
	rm -rf $(VENV) runs
