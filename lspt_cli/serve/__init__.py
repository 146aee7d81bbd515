"""`lspt serve`: many tasks on one frozen backbone over HTTP, with cross-task dynamic batching (docs/serve.md)."""
