"""Signing in, by token (POST /api/v1/auth/token) or on the sign-in page (/accounts/login/).

Both are throttled per username and per client address (SIGN_IN_RATE_PER_USERNAME,
SIGN_IN_RATE_PER_ADDRESS; the address is REMOTE_ADDR unless NUM_PROXIES trusts a proxy's
X-Forwarded-For), so passwords cannot be guessed at speed. Every attempt counts when it is made,
so parallel guesses count too; one that signs in is then given back, so people who type their
password right are never slowed down.
"""

from __future__ import annotations

import hashlib
import math
import unicodedata
from collections.abc import Mapping

from django.contrib.auth.views import LoginView
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.throttling import SimpleRateThrottle


class SignInThrottle(SimpleRateThrottle):
    """Attempts to sign in, counted per `ident` in the shared cache."""

    def ident(self, request) -> str | None:
        raise NotImplementedError

    def get_cache_key(self, request, view):
        ident = self.ident(request)
        return None if ident is None else self.cache_format % {"scope": self.scope, "ident": ident}

    def forgive(self) -> None:
        """Give back the attempt `allow_request` counted: it signed in."""
        if getattr(self, "key", None) is None or not hasattr(self, "now"):
            return
        history = self.cache.get(self.key, [])
        if self.now in history:
            history.remove(self.now)
            self.cache.set(self.key, history, self.duration)


class UsernameSignInThrottle(SignInThrottle):
    scope = "sign_in_username"

    def ident(self, request):
        data = request.data if hasattr(request, "data") else request.POST  # the API's request, or a page's
        username = data.get("username") if isinstance(data, Mapping) else None
        if username is None or isinstance(username, list | dict):
            return None
        # as the sign-in forms read it (stripped, NFKC), and one count for every spelling of its case
        name = unicodedata.normalize("NFKC", str(username).strip()).casefold()
        return hashlib.sha256(name.encode()).hexdigest() if name else None


class AddressSignInThrottle(SignInThrottle):
    scope = "sign_in_address"

    def ident(self, request):
        return self.get_ident(request)


SIGN_IN_THROTTLES = (UsernameSignInThrottle, AddressSignInThrottle)


class TokenSignInView(ObtainAuthToken):
    """Username + password -> token; 429 RATE_LIMITED (with Retry-After) past the sign-in rates."""

    throttle_classes = SIGN_IN_THROTTLES

    def get_throttles(self):
        self.sign_in_throttles = super().get_throttles()
        return self.sign_in_throttles

    def post(self, request, *args, **kwargs):
        response = super().post(request, *args, **kwargs)  # wrong credentials raise: the attempt counts
        for throttle in self.sign_in_throttles:
            throttle.forgive()
        return response


class SignInView(LoginView):
    """The sign-in page; a throttled attempt is answered 429 with a plain message, its password unchecked."""

    template_name = "login.html"

    def post(self, request, *args, **kwargs):
        self.sign_in_throttles = [throttle() for throttle in SIGN_IN_THROTTLES]
        waits = [throttle.wait() for throttle in self.sign_in_throttles if not throttle.allow_request(request, self)]
        if not waits:
            return super().post(request, *args, **kwargs)
        retry_after = math.ceil(max((wait for wait in waits if wait is not None), default=60))
        form = self.get_form_class()(request, initial={"username": request.POST.get("username", "")})
        context = self.get_context_data(form=form, throttled=True, retry_after=retry_after)
        response = self.render_to_response(context, status=429)
        response["Retry-After"] = str(retry_after)
        return response

    def form_valid(self, form):
        for throttle in self.sign_in_throttles:
            throttle.forgive()
        return super().form_valid(form)
