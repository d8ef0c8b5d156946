"""The web dashboard: live spend, budgets and traffic, and the policy editor (docs/dashboard.md)."""

from gateway.dashboard.mount import mount_dashboard

__all__ = ["mount_dashboard"]
