# The two commands that matter: `make demo` (whole pipeline on the bundled data) and `make test`.
# Each runs scripts/setup.sh first, which installs what is missing and skips what is current.
PY := .venv/bin/python
export GX_ANALYTICS_ENABLED := false
export PYSPARK_PYTHON := $(CURDIR)/.venv/bin/python

.PHONY: setup demo test bench accuracy airflow-setup clean

setup:
	bash scripts/setup.sh

demo: setup
	$(PY) -m jobs.cli demo

test: setup airflow-setup
	bash scripts/run_tests.sh

airflow-setup:
	bash scripts/setup_airflow.sh

bench: setup
	$(PY) -m bench.feature_build --quick
	$(PY) -m bench.model_speed --quick
	$(PY) -m bench.scoring --quick

accuracy: setup
	$(PY) -m bench.accuracy --lake lake --external

clean:
	rm -rf lake spark-warehouse metastore_db derby.log .pytest_cache
