"""Test data builders."""

import itertools

from django.contrib.auth.models import User

from accounts.services import user_create

_seq = itertools.count(1)
PASSWORD = "correct-horse-battery"


def user_make(*, role: str | None, username: str | None = None) -> User:
    username = username or f"{role or 'outsider'}{next(_seq)}"
    if role is None:
        return User.objects.create_user(username=username, password=PASSWORD)
    return user_create(username=username, role=role, password=PASSWORD)
