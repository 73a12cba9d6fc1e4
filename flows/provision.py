"""``provision-user``: a ledger user and, with ``POCKETBASE_URL``, its PocketBase record.

Run from the Prefect UI (deployment ``provision-user``). The password is a one-time password
made inside the run: never a parameter, a result or a log line; it reaches the user only in
the invite mail. Re-running is safe: ``core.provisioning`` keeps what exists and creates what
is missing, or leaves nothing half-done. The invite goes out only from the run that set the
password, i.e. created the record holding it (the PocketBase record, or the ledger user when
there is no PocketBase); a re-run that creates nothing mails nothing.
"""

from typing import Annotated

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from pydantic import Field, SecretStr

from adapters.pocketbase import open_identity_store
from core.identifiers import EMAIL_PATTERN, ID_LENGTH_MAX, ID_PATTERN
from core.passwords import one_time_password
from core.provisioning import Provisioner, ProvisionOutcome, ProvisionRequest
from core.service import open_ledger
from core.settings import Settings
from flows.mail import mail_credentials, send_mail

MAIL_RETRIES = 3
MAIL_RETRY_DELAYS_SECONDS = [5, 30, 120]
INVITE_SUBJECT = "Your CloudFreedom account"


@task(name="provision", cache_policy=NONE, persist_result=False)
def provision_step(request: ProvisionRequest, password: SecretStr) -> ProvisionOutcome:
    """Ledger user and identity record, each created only if missing (see core.provisioning)."""
    settings = Settings()
    identities = open_identity_store(settings)
    store, ledger = open_ledger(settings)
    try:
        provisioner = Provisioner(ledger, identities)
        return provisioner.provision(request, password.get_secret_value(), repeat_is_done=True)
    finally:
        store.close()
        if identities is not None:
            identities.close()


@task(
    name="mail-invite",
    retries=MAIL_RETRIES,
    retry_delay_seconds=MAIL_RETRY_DELAYS_SECONDS,
    cache_policy=NONE,
    persist_result=False,
)
def mail_invite(email: str, user_id: str, password: SecretStr) -> None:
    """Mail the one-time password; the user signs in with their email and changes it."""
    body = (
        f"Your CloudFreedom account is ready.\n\n"
        f"Email: {email}\nUser id: {user_id}\n"
        f"One-time password: {password.get_secret_value()}\n\n"
        "Sign in with it and choose a new password.\n"
    )
    send_mail(Settings(), email, INVITE_SUBJECT, body)


FlowId = Annotated[str, Field(min_length=1, max_length=ID_LENGTH_MAX, pattern=ID_PATTERN)]


@flow(name="provision-user", persist_result=False)
def provision_user(
    email: Annotated[str, Field(min_length=3, max_length=320, pattern=EMAIL_PATTERN)],
    product_id: FlowId,
    tenant_id: FlowId = "default",
    user_id: FlowId | None = None,
    send_invite: bool = True,
) -> dict[str, object]:
    """Provision one user on a plan; mail them a one-time password when ``send_invite``."""
    logger = get_run_logger()
    settings = Settings()
    if send_invite:
        mail_credentials(settings)  # no SMTP_HOST: refuse before creating anything
    password = SecretStr(one_time_password())
    request = ProvisionRequest(email, product_id, tenant_id, user_id)
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
                "user %s is provisioned but the invite was not sent: reset their password",
                outcome.user.id,
            )
            raise
    elif password_set:
        logger.info(
            "user %s created without an invite: they set a password by a reset", outcome.user.id
        )
    else:
        logger.info("user %s was already provisioned; nothing created", outcome.user.id)
    return {
        "user_id": outcome.user.id,
        "email": outcome.user.email,
        "product_id": outcome.user.product_id,
        "tenant_id": outcome.user.tenant_id,
        "user_created": outcome.user_created,
        "identity_created": outcome.identity_created,
        "invited": invited,
    }
