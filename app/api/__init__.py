"""The HTTP service: `app.py` builds the FastAPI app; `routes/` has one router per resource
(CONTRACT section 3); `transport/` is what every request passes through (hot path, body limit,
metrics, micro-batching, raw-body parsing); `schemas.py` documents the bodies, `deps.py` holds
the shared dependencies and `error_mapping.py` turns engine exceptions into statuses."""
