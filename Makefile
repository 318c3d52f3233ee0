# The two commands that matter: `make demo` (whole pipeline on the bundled data) and `make test`.
# Each runs scripts/setup.sh first, which installs what is missing and skips what is current.
PY := .venv/bin/python
export GX_ANALYTICS_ENABLED := false
export PYSPARK_PYTHON := $(CURDIR)/.venv/bin/python

.PHONY: setup demo test cluster bench accuracy airflow-setup clean

setup:
	bash scripts/setup.sh

demo: setup
	$(PY) -m jobs.cli demo

test: setup airflow-setup
	bash scripts/run_tests.sh

# The cluster proof alone (tests/cluster/test_cluster_proof.py): local-cluster Spark, the lake on a
# moto S3 server, a Postgres metastore and the Thrift server, each started and stopped by the test;
# ends with one summary line.
cluster: setup
	@rm -f .services/cluster-proof-summary.txt
	@bash scripts/run_tests.sh --services-only
	@$(PY) -m pytest tests/cluster/test_cluster_proof.py -q -p no:cacheprovider; rc=$$?; \
	  if [ $$rc -eq 0 ] && [ -f .services/cluster-proof-summary.txt ]; then cat .services/cluster-proof-summary.txt; \
	  else echo "cluster proof: FAILED (pytest exit $$rc)"; fi; exit $$rc

airflow-setup:
	bash scripts/setup_airflow.sh

bench: setup
	$(PY) -m bench.feature_build --quick
	$(PY) -m bench.model_speed --quick
	$(PY) -m bench.scoring --quick

accuracy: setup
	$(PY) -m bench.accuracy --lake lake --external

clean:
	rm -rf lake spark-warehouse metastore_db derby.log .pytest_cache .spark-conf/*/
