"""The names both sides of the task queue agree on, apart from Celery itself.

Kept out of shared/queue.py (which builds the Celery app) so that what only needs a name (the
store's metrics count the queue's length by it) does not import Celery and kombu.
"""

from __future__ import annotations

SPAWN_TASK = "swarm_manager.spawn"
KILL_TASK = "swarm_manager.kill"
RECONCILE_TASK = "swarm_manager.reconcile"
REFILL_TASK = "swarm_manager.refill_pool"
#: The one Celery queue; in Redis it is the list ``<INSTANCE>:swarm-manager`` (global_keyprefix).
QUEUE_NAME = "swarm-manager"
