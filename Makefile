# `make lab`: JupyterLab on the notebooks with everything installed.
PYTHON ?= python

.PHONY: lab
lab:
	$(PYTHON) -m pip install -e ".[lab]"
	$(PYTHON) -m jupyter lab notebooks/
