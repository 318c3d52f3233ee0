"""The infnet Airflow DAGs (run under .venv-airflow; see airflow_dags/common.py)."""
