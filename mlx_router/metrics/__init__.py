"""What the server reports about itself: Prometheus metrics, the status page's history and the
per-request record that the layers annotate (resolved model, error sent inside a stream).

Kept apart from ``api`` so that the manager can annotate the current request without importing
the HTTP layer.
"""

__all__: list[str] = []
