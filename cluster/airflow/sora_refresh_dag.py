"""Airflow DAG: the nightly refresh -> warm-started pretrain chain of cluster/kuberay/cronjob-refresh.yaml.

Same schedule and commands; Airflow only orders and retries them. The workers need the `sora`
package, RAY_API_SERVER_ADDRESS (the cluster's Jobs API) and RAY_AUTH_TOKEN (from an Airflow
connection or secret backend). `sora submit --follow` exits non-zero when the job fails, which
fails the task.
"""

from datetime import datetime

from airflow import DAG
from airflow.operators.bash import BashOperator

SCHEDULE = "0 3 * * *"

with DAG(
    dag_id="sora_refresh",
    schedule=SCHEDULE,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["sora"],
) as dag:
    refresh = BashOperator(
        task_id="refresh",
        bash_command="sora submit cluster-refresh.yaml --stage refresh --follow",
    )
    pretrain = BashOperator(
        task_id="warm_start_pretrain",
        bash_command="sora submit cluster-refresh.yaml --stage pretrain --follow "
        "--set train.run=sora-1b-r{{ ds_nodash }}",
    )
    refresh >> pretrain
