"""maas logic: plain Python over fsspec URIs. Nothing here imports Prefect; flows/ wraps it."""
