# Two commands matter: `make demo` (run the quickstart) and `make test` (pass the tests).
# Both do all set-up on a fresh machine and are fast when it is already done.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STUDY  := $(VENV)/bin/study
# torch first and alone: the pinned CPU wheel is on local disk; an unpinned torch pulls CUDA.
TORCH  ?= torch==2.13.0

.PHONY: setup demo test zoo groundtruth bench browser clean-cache lock

$(PY):
	python3 -m venv $(VENV)

$(VENV)/.torch-installed: | $(PY)
	$(PY) -m pip install -q --no-deps $(TORCH)
	touch $@

# Everything else exactly as locked (requirements.lock, transitive packages included), then the
# project itself without resolving anything; `pip check` fails on a lock that is not self-consistent.
# tests/test_environment.py fails when what is installed differs from the lock.
$(VENV)/.project-installed: pyproject.toml requirements.lock $(VENV)/.torch-installed
	$(PY) -m pip install -q --no-deps -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $@

setup: $(VENV)/.project-installed

# The report test opens the report in a real headless browser (Debian's chromium).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { echo "installing chromium for the report test"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	    echo "warning: could not install chromium; the browser test will be skipped"; }

demo: setup
	$(STUDY) run studies/quickstart.study

# One pytest worker per core (CI has 2): tests pin torch to one thread each, so two workers use
# both cores; --dist loadfile keeps a file's module fixtures (tiny models) in one worker.
TEST_WORKERS ?= auto
test: setup browser
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

zoo: setup
	$(PY) -m mechstudy.stdlib.zoo.build all

# Recompile the ground-truth models (stdlib/zoo/models/{induction-handwired,tracr-*}). tracr needs
# JAX, so it gets its own venv (the locked set, then the `groundtruth` extra); .venv never has it.
GT_VENV ?= .venv-groundtruth
groundtruth:
	test -x $(GT_VENV)/bin/python || python3 -m venv $(GT_VENV)
	$(GT_VENV)/bin/python -m pip install -q --no-deps $(TORCH)
	$(GT_VENV)/bin/python -m pip install -q --no-deps -r requirements.lock
	$(GT_VENV)/bin/python -m pip install -q --no-deps --no-build-isolation -e .
	$(GT_VENV)/bin/python -m pip install -q tracr-pypi
	$(GT_VENV)/bin/python -m mechstudy.stdlib.groundtruth.build all

# Re-resolve pyproject.toml's ranges in a throwaway venv and rewrite requirements.lock. Deliberate:
# review the diff, run `make test`, commit both files together.
lock:
	./tools/lock.sh

bench: setup
	$(PY) benchmarks/run.py

clean-cache:
	rm -rf cache/objects cache/locks cache/tmp out
