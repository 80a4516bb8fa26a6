# One command each: `make demo` runs a real PBT experiment on this machine,
# `make test` runs the tests (redis-server and moto_server are started if absent).
PY ?= python

.PHONY: install demo test lint bench study

install:
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[torch,examples,local,plot,metrics,pb2,rl,test]'

demo: install
	pbt local workers/digits.toml --workers 2

test: install  # on a fresh machine too: installs first (a no-op once done), then runs everything
	$(PY) -m pytest -q

lint:
	ruff check pbt_mq workers tests

bench:
	pbt bench --sizes-mb 50,500

study:  # the README's Results: PBT vs its ablations, random search and fixed values (~30 min on 2 cores)
	pbt study -o docs/study
