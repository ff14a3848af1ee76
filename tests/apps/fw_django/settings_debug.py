"""The same project with DEBUG = True: Django's "console" log handler is then active."""

from fw_django.settings import *  # noqa: F403

DEBUG = True
