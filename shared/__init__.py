"""What the API and the workers share, below both: settings, logs, metrics, the queue's
names and the storage ledger. It imports only `jail`; never `api` or `worker`, nor Flask."""
