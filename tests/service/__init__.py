"""The service through Flask's client and real gunicorn, redis-server and RQ workers (root)."""
