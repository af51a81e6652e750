"""The Celery worker: takes job ids from the queue and runs them through saft_core."""
