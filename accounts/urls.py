"""Page URLs for people: dashboard, sign in and out, one's password and API tokens, the
people admin page."""

from django.contrib.auth import views as auth_views
from django.urls import path

from accounts import views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path(
        "login/",
        auth_views.LoginView.as_view(redirect_authenticated_user=True),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("account/password/", views.password_change, name="password-change"),
    path("account/tokens/", views.tokens, name="tokens"),
    path("account/tokens/<int:pk>/revoke/", views.token_revoke_page, name="token-revoke"),
    path("people/", views.people, name="people"),
    path("people/<int:pk>/", views.person_change, name="person-change"),
    path("people/<int:pk>/password/", views.person_password, name="person-password"),
]
