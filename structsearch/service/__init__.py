"""The service around the search: its own tables, migrations, job queue and workers.

Pieces (one module per concept):

* :mod:`settings` -- configuration from the environment (``STRUCTSEARCH_*``);
* :mod:`database`, :mod:`models`, :mod:`repository` -- the service's own ``ss_`` tables;
* :mod:`migrations` -- ``structsearch db upgrade``: our tables, procrastinate's and Optuna's;
* :mod:`admission` -- checking a study spec from an untrusted client before anything is stored;
* :mod:`searches` -- submitting and cancelling searches (what ``POST /api/v1/searches`` does);
* :mod:`studies` -- reading Optuna studies for the API, cached per study;
* :mod:`queue`, :mod:`jobs`, :mod:`worker` -- one procrastinate job per trial, run by workers.

Nothing here connects to a database at import time; the API factory and the CLI build what they
need from a :class:`~structsearch.service.settings.ServiceSettings`.
"""
