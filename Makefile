# One command each: `make demo` runs a real PBT experiment on this machine,
# `make test` runs the tests (redis-server and moto_server are started if absent).
PY ?= python
TEST_PROCS ?= 4  # pytest-xdist processes for make test (most tests wait on real processes, not the CPU); 0: serial

.PHONY: install install-demo install-integrations demo test test-integrations lint bench study

install-demo:  # what the demo needs, nothing more: torch (CPU), the package, scikit-learn, a redis-server, matplotlib (its report.png)
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[torch,examples,local,plot]'

install:
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[torch,examples,local,plot,metrics,tensorboard,pb2,dashboard,rl,test]'

install-integrations: install  # after torch, so none of them can bring another torch
	$(PY) -m pip install -e '.[torch,examples,local,plot,metrics,tensorboard,pb2,dashboard,test,lightning,hf,mlflow,wandb]'

demo: install-demo
	pbt local workers/digits.toml --workers 2

test: install  # on a fresh machine too: installs first (a no-op once done), then everything but the integrations
	$(PY) -m pytest -q -m "not integration" -n $(TEST_PROCS) --dist loadgroup

test-integrations: install-integrations  # Lightning, Transformers, MLflow, W&B: the real libraries (CI's second stage)
	$(PY) -m pytest -q -m integration

lint:
	ruff check pbt_mq workers tests

bench:
	pbt bench --sizes-mb 50,500

study:  # the README's Results: PBT vs its ablations, random search and fixed values (~30 min on 2 cores)
	pbt study -o docs/study
