"""Administration under ``/api/admin/`` (X-Admin-Key): resets, users, plans, tenants."""

import falcon

from api.http import read_model, refuse_nul_in_path, respond, validate
from api.render import money_json, user_json
from core.accounts import Product, Tenant
from core.budget import UserStatus
from core.errors import Invalid, NotFound
from core.ledger import Ledger
from core.money import Money
from core.provisioning import Provisioner, ProvisionRequest
from wire.schemas import (
    CreditRequest,
    ProductRequest,
    ProvisionUserRequest,
    ResetBudgetsRequest,
    TenantRequest,
    UserByEmailQuery,
    UserPatchRequest,
)


class _AdminResource:
    def __init__(self, ledger: Ledger, body_bytes_max: int) -> None:
        self._ledger = ledger
        self._body_bytes_max = body_bytes_max


class ResetBudgetsResource(_AdminResource):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_model(req, ResetBudgetsRequest, self._body_bytes_max)
        result = self._ledger.reset_budgets(body.period, body.force)
        message = (
            f"Period {result.label} was already applied; nothing changed"
            if result.already_done
            else f"Budgets reset for {result.users_reset} users"
        )
        respond(
            resp,
            {
                "message": message,
                "users_reset": result.users_reset,
                "period": result.label,
                "already_done": result.already_done,
            },
        )


class ProvisionUserResource:
    """Ledger user and, with an identity store, its PocketBase record: both or neither."""

    def __init__(self, provisioner: Provisioner, body_bytes_max: int) -> None:
        self._provisioner = provisioner
        self._body_bytes_max = body_bytes_max

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_model(req, ProvisionUserRequest, self._body_bytes_max)
        request = ProvisionRequest(
            body.email, body.product_id, body.tenant_id, body.user_id, body.create_tenant
        )
        outcome = self._provisioner.provision(request, body.password, repeat_is_done=False)
        respond(
            resp,
            {"message": "User provisioned successfully", "user": user_json(outcome.user)},
            falcon.HTTP_201,
        )


def _product_json(product: Product) -> dict:
    return {
        "id": product.id,
        "name": product.name,
        "monthly_budget": money_json(product.monthly_budget),
    }


class ProductsResource(_AdminResource):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        respond(resp, {"products": [_product_json(p) for p in self._ledger.list_products()]})

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_model(req, ProductRequest, self._body_bytes_max)
        product = Product(body.id, body.name, Money(body.monthly_budget))
        created = self._ledger.put_product(product)
        respond(resp, _product_json(product), falcon.HTTP_201 if created else falcon.HTTP_200)


class TenantsResource(_AdminResource):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_model(req, TenantRequest, self._body_bytes_max)
        cap = None if body.monthly_budget is None else Money(body.monthly_budget)
        created = self._ledger.put_tenant(Tenant(body.id, body.name, cap))
        answer = {
            "id": body.id,
            "name": body.name,
            "monthly_budget": None if cap is None else money_json(cap),
        }
        respond(resp, answer, falcon.HTTP_201 if created else falcon.HTTP_200)


class UsersResource(_AdminResource):
    """``GET /api/admin/users?email=``: the user holding an email, e.g. to find the id a
    provisioning run generated."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        query = validate(UserByEmailQuery, req.params)
        user = self._ledger.user_by_email(query.email)
        if user is None:
            raise NotFound("no user with this email", field="email")
        respond(resp, user_json(user))


@falcon.before(refuse_nul_in_path)
class UserResource(_AdminResource):
    def on_get(self, req: falcon.Request, resp: falcon.Response, user_id: str) -> None:
        respond(resp, user_json(self._ledger.user(user_id)))

    def on_patch(self, req: falcon.Request, resp: falcon.Response, user_id: str) -> None:
        body = read_model(req, UserPatchRequest, self._body_bytes_max)
        if body.status is None and body.product_id is None:
            raise Invalid("give status or product_id", field="status")
        status = None if body.status is None else UserStatus(body.status)
        respond(resp, user_json(self._ledger.update_user(user_id, status, body.product_id)))


@falcon.before(refuse_nul_in_path)
class CreditsResource(_AdminResource):
    def on_post(self, req: falcon.Request, resp: falcon.Response, user_id: str) -> None:
        body = read_model(req, CreditRequest, self._body_bytes_max)
        created, user, grant_id = self._ledger.grant_credit(
            user_id, Money(body.amount), body.reason, body.grant_id
        )
        respond(
            resp,
            {
                "result": "created" if created else "exists",
                "grant_id": grant_id,
                "user": user_json(user),
            },
            falcon.HTTP_201 if created else falcon.HTTP_200,
        )
