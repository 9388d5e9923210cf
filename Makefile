# The two commands of the README. Each one does its own set-up on a fresh machine.
.PHONY: lab test docs

lab:  ## set up, then open JupyterLab on the quickstart notebook
	bash scripts/lab.sh

test:  ## set up, then lint, run every test and build the docs
	bash scripts/test.sh

docs:  ## serve the documentation site locally
	bash scripts/setup.sh docs
	.venv/bin/mkdocs serve
