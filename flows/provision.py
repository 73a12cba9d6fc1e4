"""``provision-user`` and ``resend-invite``: a ledger user and, with ``POCKETBASE_URL``, its
PocketBase record; and a fresh one-time password for a user who lost theirs.

Run from the Prefect UI (deployments ``provision-user``, ``resend-invite``). The password is a
one-time password made inside the run: never a parameter, a result, an artifact or a log line;
it reaches the user only in the invite mail. Re-running is safe: ``core.provisioning`` keeps
what exists and creates what is missing, or leaves nothing half-done. The invite goes out only
from the run that set the password, i.e. created the record holding it (the PocketBase record,
or the ledger user when there is no PocketBase); a re-run that creates nothing mails nothing, and
``resend-invite`` is how a user gets a new password.

Each run with an invite checks first that the SMTP server answers (connect and EHLO, a few
seconds), so a run with the mail server down creates nothing and names the server. Each run
publishes its result as a table artifact (key ``provision-user`` or ``resend-invite``) and one
log line; a failed run mails the admin, as every flow's does.
"""

from typing import Annotated

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE
from pydantic import Field, SecretStr

from adapters.pocketbase import open_identity_store
from core.errors import ConfigurationError, NotFound
from core.identifiers import EMAIL_PATTERN, ID_LENGTH_MAX, ID_PATTERN
from core.passwords import one_time_password
from core.provisioning import Provisioner, ProvisionOutcome, ProvisionRequest
from flows.common import ADMIN_NOTICE_HOOKS, flow_settings, opened_ledger
from flows.mail import check_smtp, send_mail

MAIL_RETRIES = 3
MAIL_RETRY_DELAYS_SECONDS = [5, 30, 120]
INVITE_SUBJECT = "Your CloudFreedom account"
EMAIL_LENGTH_MAX = 320


@task(name="provision", cache_policy=NONE, persist_result=False)
def provision_step(request: ProvisionRequest, password: SecretStr) -> ProvisionOutcome:
    """Ledger user and identity record, each created only if missing (see core.provisioning)."""
    settings = flow_settings()
    identities = open_identity_store(settings)
    try:
        with opened_ledger(settings) as ledger:
            provisioner = Provisioner(ledger, identities)
            secret = password.get_secret_value()
            return provisioner.provision(request, secret, repeat_is_done=True)
    finally:
        if identities is not None:
            identities.close()


@task(name="set-one-time-password", cache_policy=NONE, persist_result=False)
def set_one_time_password(email: str, password: SecretStr) -> dict[str, str]:
    """Set ``password`` on the PocketBase record of the ledger user holding ``email``."""
    settings = flow_settings()
    identities = open_identity_store(settings)
    if identities is None:
        raise ConfigurationError(
            "POCKETBASE_URL is not set: resend-invite sets the password in PocketBase"
        )
    try:
        with opened_ledger(settings) as ledger:
            user = ledger.user_by_email(email)
        if user is None:
            raise NotFound(f"no user with email {email!r}", field="email")
        record = identities.find_by_email(email)
        if record is None:
            raise NotFound(
                f"user {user.id} has no PocketBase record: run provision-user with the same"
                " email, user id, plan and tenant to create it",
                field="email",
            )
        identities.set_password(record.record_id, password.get_secret_value())
    finally:
        identities.close()
    return {"user_id": user.id, "product_id": user.product_id, "tenant_id": user.tenant_id}


def invite_text(email: str, user_id: str, password: SecretStr, app_url: str | None) -> str:
    where = f"Sign in at {app_url} with" if app_url else "Sign in with"
    return (
        "Your CloudFreedom account is ready.\n\n"
        f"Email: {email}\nUser id: {user_id}\n"
        f"One-time password: {password.get_secret_value()}\n\n"
        f"{where} your email and this password, then choose a new password.\n"
    )


@task(
    name="mail-invite",
    retries=MAIL_RETRIES,
    retry_delay_seconds=MAIL_RETRY_DELAYS_SECONDS,
    cache_policy=NONE,
    persist_result=False,
)
def mail_invite(email: str, user_id: str, password: SecretStr) -> None:
    """Mail the one-time password and where to sign in (``APP_URL``)."""
    settings = flow_settings()
    body = invite_text(email, user_id, password, settings.app_url)
    send_mail(settings, email, INVITE_SUBJECT, body)


def publish(key: str, what: str, result: dict[str, object]) -> None:
    """The run's result where an operator looks: a table artifact and one log line."""
    create_table_artifact(table=[result], key=key, description=what)
    get_run_logger().info(
        "%s: user_id=%s email=%s tenant_id=%s product_id=%s invite_sent=%s",
        what,
        result["user_id"],
        result["email"],
        result["tenant_id"],
        result["product_id"],
        result["invited"],
    )


# Prefect takes a parameter's description from the flow's docstring (``Args:``), and its
# constraints (pattern, lengths) from these annotations: the UI shows both and refuses a value
# that breaks one when the run is created.
Email = Annotated[str, Field(min_length=3, max_length=EMAIL_LENGTH_MAX, pattern=EMAIL_PATTERN)]
FlowId = Annotated[str, Field(min_length=1, max_length=ID_LENGTH_MAX, pattern=ID_PATTERN)]


@flow(name="provision-user", persist_result=False, **ADMIN_NOTICE_HOOKS)
def provision_user(
    email: Email,
    product_id: FlowId,
    tenant_id: FlowId = "default",
    user_id: FlowId | None = None,
    send_invite: bool = True,
    create_tenant: bool = False,
) -> dict[str, object]:
    """Provision one user on a plan and mail them a one-time password.

    Args:
        email: The user's email: their sign-in name and where the invite goes (unique,
            compared case-insensitively).
        product_id: The plan, a product id such as `starter`; an unknown one is refused.
        tenant_id: The tenant. It must exist unless create_tenant is set; `default` is
            created on first use.
        user_id: The ledger id; left empty, one is made (`usr_…`) and shown in the result.
        send_invite: Mail the user a one-time password (needs SMTP_HOST; the server is
            checked before anything is created).
        create_tenant: Create tenant_id when it does not exist; off, a mistyped tenant is
            refused.
    """
    logger = get_run_logger()
    settings = flow_settings()
    if send_invite:
        check_smtp(settings)  # before anything is created
    password = SecretStr(one_time_password())
    request = ProvisionRequest(email, product_id, tenant_id, user_id, create_tenant)
    outcome = provision_step(request, password)
    password_set = outcome.identity_created or (
        outcome.user_created and not settings.pocketbase_url
    )
    invited = send_invite and password_set
    if invited:
        try:
            mail_invite(email, outcome.user.id, password)
        except Exception:
            logger.error(
                "user %s is provisioned but the invite was not sent: run resend-invite",
                outcome.user.id,
            )
            raise
    elif password_set:
        logger.info("user %s created without an invite: run resend-invite", outcome.user.id)
    else:
        logger.info("user %s was already provisioned; nothing created", outcome.user.id)
    result: dict[str, object] = {
        "user_id": outcome.user.id,
        "email": outcome.user.email,
        "product_id": outcome.user.product_id,
        "tenant_id": outcome.user.tenant_id,
        "user_created": outcome.user_created,
        "identity_created": outcome.identity_created,
        "invited": invited,
    }
    publish("provision-user", "provisioned", result)
    return result


@flow(name="resend-invite", persist_result=False, **ADMIN_NOTICE_HOOKS)
def resend_invite(email: Email) -> dict[str, object]:
    """Give a provisioned user a fresh one-time password (set in PocketBase) and mail it; the
    password they had stops working.

    Args:
        email: The email the user was provisioned with (compared case-insensitively).
    """
    check_smtp(flow_settings())  # before the old password is replaced
    password = SecretStr(one_time_password())
    user = set_one_time_password(email, password)
    mail_invite(email, user["user_id"], password)
    result: dict[str, object] = {**user, "email": email, "invited": True}
    publish("resend-invite", "invite resent", result)
    return result
