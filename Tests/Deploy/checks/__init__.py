"""The sections of check_deploy.py, one module each, and the report they share."""
