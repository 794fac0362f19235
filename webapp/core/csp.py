"""The Content-Security-Policy header of every response, from settings.

`SECURE_CSP` has the shape Django 6's own CSP middleware reads (directive -> list of sources), so
moving to it is a change of one MIDDLEWARE line. `SECURE_CSP_OVERRIDES` gives a page its own policy
by URL name (none needs one: the API docs' Swagger UI and ReDoc are this site's static files, and Swagger
UI's start script is a script of this site too, /api/docs/?script=).
"""

from django.conf import settings

HEADER = "Content-Security-Policy"


def csp_header(policy: dict[str, list[str]]) -> str:
    return "; ".join(" ".join([directive, *sources]) for directive, sources in policy.items())


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response
        self.policy = csp_header(settings.SECURE_CSP)
        self.overrides = {
            name: csp_header(policy) for name, policy in getattr(settings, "SECURE_CSP_OVERRIDES", {}).items()
        }

    def __call__(self, request):
        response = self.get_response(request)
        if HEADER not in response:
            match = getattr(request, "resolver_match", None)
            response[HEADER] = self.overrides.get(match.url_name if match else None, self.policy)
        return response
