"""Authentication of API requests: the caller from this request's headers, every time, and the
project's request budget."""

from __future__ import annotations

from functools import wraps

from flask import request

from ...services.rate_limits import ProjectRateLimit, hit_together
from ...services.state import get_state
from ...services.tenancy import (
    AUTH_HEADER,
    CONNECTOR_HEADER,
    OutboundSenders,
    Tenant,
    authenticate,
    authenticate_with_senders,
)


def current_tenant() -> Tenant:
    """The authenticated caller of this request, resolved from this request's own headers.

    Never cached: an app context (and its ``g``) can outlive a request — pytest-flask pushes one
    per test, some hosts one for the whole process — and a cached tenant would answer the next
    request, whatever its headers, as the first caller.
    """
    return authenticate(
        get_state().store,
        request.headers.get(AUTH_HEADER),
        request.headers.get(CONNECTOR_HEADER),
    )


class Caller:
    """This request's caller, authenticated from the headers when first asked, and its request
    budget, counted once.

    Made for one request and passed to its view, never kept: a view that reads more before it
    writes (the outbound route's senders) asks for the caller with that read, in one round trip,
    and counts the budget with its own limit, in one more.
    """

    def __init__(self) -> None:
        self._tenant: Tenant | None = None
        self._refusal: Exception | None = None
        self.budget_counted = False

    def tenant(self) -> Tenant:
        """The caller (401, 400, 404 or 403 when the headers do not name one)."""
        if self._tenant is None:
            self._resolve(current_tenant)
        return self._tenant

    def tenant_with_senders(self, user_number: str) -> tuple[Tenant, OutboundSenders | None]:
        """The caller and, read with it, the senders a message to ``user_number`` chooses from
        (None when the caller was authenticated already: read them then)."""
        if self._tenant is not None:
            return self._tenant, None
        senders: OutboundSenders | None = None

        def both() -> Tenant:
            nonlocal senders
            tenant, senders = authenticate_with_senders(
                get_state().store,
                request.headers.get(AUTH_HEADER),
                request.headers.get(CONNECTOR_HEADER),
                user_number,
            )
            return tenant

        self._resolve(both)
        return self._tenant, senders

    def _resolve(self, authenticate_now) -> None:
        if self._refusal is not None:  # refused once: the same answer, without asking again
            raise self._refusal
        try:
            self._tenant = authenticate_now()
        except Exception as exc:
            self._refusal = exc
            raise

    def count_budget(self, *also: ProjectRateLimit) -> None:
        """Count the request against the project's ``POLYSMS_READ_RATE_LIMIT``, then each of
        ``also``, together (429 with ``Retry-After`` from the first one over its limit)."""
        if self.budget_counted:
            raise RuntimeError("the request budget is counted once per request")
        self.budget_counted = True
        # Counted after authentication, on the project: nobody else can spend its budget.
        hit_together(self.tenant().project_id, (get_state().read_limiter, *also))

    def settle(self) -> None:
        """Authenticate and count the budget if the view has not: their answers (401...,
        429) come before anything the view found wrong."""
        self.tenant()
        if not self.budget_counted:
            self.count_budget()


def authenticated(view=None, *, caller: bool = False):
    """Authenticate before the view from the request's headers alone (401, 400, 404 or 403, in
    that order), count the request against the project's ``POLYSMS_READ_RATE_LIMIT`` (429 with
    ``Retry-After`` when over it), and pass the Tenant.

    With ``caller=True`` the view gets the request's :class:`Caller` instead and authenticates and
    counts through it, reading or counting more in the same round trips; whatever the view does,
    the answers come in the same order: a view that fails (its body is refused, say) or returns
    before asking is authenticated and counted first, and their error wins."""

    def decorate(view):
        if caller:

            @wraps(view)
            def wrapper(*args, **kwargs):
                this = Caller()
                try:
                    response = view(*args, caller=this, **kwargs)
                except BaseException:
                    this.settle()
                    raise
                this.settle()
                return response

        else:

            @wraps(view)
            def wrapper(*args, **kwargs):
                this = Caller()
                this.settle()
                return view(*args, tenant=this.tenant(), **kwargs)

        wrapper._apidoc = getattr(view, "_apidoc", {})  # keep flask-smorest's docs on the wrapper
        return wrapper

    return decorate(view) if view is not None else decorate


AUTH_PARAMETERS = [
    {"in": "header", "name": AUTH_HEADER, "required": True, "schema": {"type": "string"}},
    {"in": "header", "name": CONNECTOR_HEADER, "required": True, "schema": {"type": "string"}},
]
