"""``bigseg serve``: the job service (HTTP API, web page, one runner process per job, jobs kept in a database).

One uvicorn process serves the API and the page and runs the dispatcher thread; every job runs in its own
runner process (``python -m bigseg.service.runner JOB_ID``), which survives server restarts and is adopted by
the next server. Install with ``pip install 'bigseg[service]'``.
"""
