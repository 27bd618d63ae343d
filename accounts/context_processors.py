"""Template context: the signed-in user's role and capabilities."""

from accounts.roles import ALL_CAPABILITIES, user_can, user_role


def role(request) -> dict:
    """The signed-in user's role and capabilities, for the navigation."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"role": None, "can": {}}
    return {"role": user_role(user), "can": {c: user_can(user, c) for c in ALL_CAPABILITIES}}
