# adlearn — every target sets itself up (a virtualenv in .venv) on a fresh machine.
#   make demo   synthetic data → PaDiM (and the mean-image baseline) → metrics table + heat maps
#   make test   unit tests, every notebook in the fast profile, the offline book build
#   make book   the published book: every notebook executed in the book profile, then built

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.adlearn-installed
XDIST  ?= 2
EXEC   := book_executed
NB_TIMEOUT ?= 1800# seconds per cell: the book profile trains for minutes; `make test` uses 300

# No network in tests and CI; one thread per notebook kernel (two share the 2 cores).
OFFLINE_ENV := HF_HUB_OFFLINE=1 ADLEARN_OFFLINE=1 TQDM_DISABLE=1 PYTHONHASHSEED=0 OMP_NUM_THREADS=1

.PHONY: demo test unit notebooks book-build book-checks book clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch>=2.2" "torchvision>=0.17"
	$(BIN)/python -m pip install --quiet -e ".[test,book]"
	touch $@

demo: $(STAMP)
	$(BIN)/adlearn demo

test: unit
	$(MAKE) notebooks PROFILE=fast NB_TIMEOUT=300
	$(MAKE) book-build
	$(MAKE) book-checks

# What needs the executed notebooks and the built HTML: every number in a chapter's prose is
# printed by one of its cells; the pages typeset equations with the bundled (offline) MathJax.
book-checks: $(STAMP)
	test -d _build/html || { echo "run 'make notebooks book-build' first"; exit 1; }
	ADLEARN_EXECUTED_BOOK=$(EXEC) ADLEARN_BUILT_BOOK=_build/html $(OFFLINE_ENV) $(BIN)/python -m pytest \
		-q -p no:cacheprovider tests/test_book.py -k "every_prose_number or built_pages"

unit: $(STAMP)
	$(OFFLINE_ENV) $(BIN)/python -m pytest -q -n $(XDIST) tests/

# Notebooks run on a copy (same depth as book/, so relative paths hold) and keep their outputs
# for the HTML build; the committed notebooks stay output-free.
notebooks: $(STAMP)
	rm -rf $(EXEC) && cp -r book $(EXEC)
	$(OFFLINE_ENV) ADLEARN_PROFILE=$(PROFILE) $(BIN)/python -m pytest -q -n $(XDIST) -p no:cacheprovider \
		--nbmake --nbmake-timeout=$(NB_TIMEOUT) --overwrite $(EXEC)

book-build: $(STAMP)
	test -d $(EXEC) || { echo "run 'make notebooks' first"; exit 1; }
	$(OFFLINE_ENV) $(BIN)/jupyter-book build $(EXEC) -W --keep-going

book:
	$(MAKE) notebooks PROFILE=book
	$(MAKE) book-build
	$(MAKE) book-checks

clean:
	rm -rf $(EXEC) _build outputs
