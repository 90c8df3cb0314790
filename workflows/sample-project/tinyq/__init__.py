from .queue import enqueue
