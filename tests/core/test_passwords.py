"""Passwords are stored as salted scrypt hashes that verify the password and nothing else."""

from core.passwords import hash_password, verify_password

PASSWORD = "correct horse battery"


def test_hash_is_not_the_password_and_verifies():
    stored = hash_password(PASSWORD)
    assert PASSWORD not in stored
    assert stored.startswith("scrypt$16384$8$1$")
    assert len(stored.split("$")) == 6
    assert verify_password(PASSWORD, stored)


def test_wrong_password_does_not_verify():
    stored = hash_password(PASSWORD)
    assert not verify_password("correct horse battery!", stored)
    assert not verify_password("Correct horse battery", stored)


def test_two_hashes_of_one_password_differ_and_both_verify():
    first, second = hash_password(PASSWORD), hash_password(PASSWORD)
    assert first != second
    assert first.split("$")[4] != second.split("$")[4]
    assert verify_password(PASSWORD, first) and verify_password(PASSWORD, second)


def test_non_ascii_password_round_trips():
    stored = hash_password("pässwörd-日本語")
    assert verify_password("pässwörd-日本語", stored)
    assert not verify_password("passwort-日本語", stored)
