"""Helpers shared by the flow tests: seeding a ledger in the file the flows open."""

from collections.abc import Iterator
from contextlib import contextmanager

from core.ledger import Ledger
from core.money import Money, money_from_input
from core.service import open_ledger
from core.settings import Settings
from core.store.base import Product

PASSWORD = "correct horse battery"


def usd(amount: str | int) -> Money:
    return money_from_input(str(amount))


@contextmanager
def seeding(settings: Settings) -> Iterator[Ledger]:
    """A ledger on the flows' database, closed after seeding (the flow opens its own)."""
    store, ledger = open_ledger(settings)
    try:
        yield ledger
    finally:
        store.close()


def seed_users(ledger: Ledger, spend: dict[str, str], budget: str = "10") -> None:
    """A plan of ``budget`` dollars and one user per entry of ``spend`` who has spent that much."""
    ledger.put_product(Product("basic", "Basic", usd(budget)))
    for user_id, amount in spend.items():
        ledger.provision_user(f"{user_id}@example.com", PASSWORD, "basic", "t1", user_id)
        if usd(amount) > 0:
            ledger.log_usage(user_id, "gpt-4o", f"{user_id}-r1", 10, 20, usd(amount), None)
