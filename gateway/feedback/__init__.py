"""Feedback on answers: `POST /v1/feedback` (endpoint.py) and what it does (service.py)."""
