"""Workers: the Celery app, thin tasks, and the engine backends they drive."""
