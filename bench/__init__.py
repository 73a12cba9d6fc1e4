"""The benchmark: ``python -m bench.run`` drives the real server and a bare app with wrk."""
