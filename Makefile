PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test clean

install: $(STAMP)

# pip's output goes to $(INSTALL_LOG); a failing step prints the log's tail and stops.
INSTALL_LOG ?= $(VENV)-install.log
logged = { $(1) >> $(INSTALL_LOG) 2>&1; } || { echo "failed: $(1)"; tail -n 40 $(INSTALL_LOG); exit 1; }

$(STAMP): setup.cfg pyproject.toml constraints.txt
	@echo "setting up $(VENV) (pip's output: $(INSTALL_LOG))"
	@: > $(INSTALL_LOG)
	@$(call logged,$(PYTHON) -m venv $(VENV))
	@$(call logged,$(BIN)/pip install -c constraints.txt torch torchvision)
	@$(call logged,$(BIN)/pip install -c constraints.txt -e '.[dev]')
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cvstream run experiments/demo.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
