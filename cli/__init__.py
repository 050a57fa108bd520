"""``swarm-manager``: the command line, a client of the HTTP API (never of Redis, Docker or the workers).

``serve``, ``worker``, ``beat``, ``flower`` and ``check`` (``cli/servers.py``) start the
server-side processes as ``make run``, the Dockerfiles and compose do; everything else talks to
the API at ``--api`` (default ``$SWARM_MANAGER_URL`` or http://127.0.0.1:3000).
"""
