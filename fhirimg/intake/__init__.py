"""The request intake: whole requests are read by the worker's event loop, never by a
thread waiting on a slow client (see worker.py)."""
